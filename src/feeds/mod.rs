//! The Huntress feeds, one module each, and the REST paging they share.
//!
//! - `siem`: Managed SIEM logs (`POST /v1/siem/query`), forwarded as logs;
//! - `orgs`: the account and its organizations, which enrich every feed;
//! - `agents`: agent inventory gauges;
//! - `incidents`: SOC incident reports, forwarded as logs and events.

pub mod agents;
pub mod incidents;
pub mod orgs;
pub mod rest;
pub mod siem;
