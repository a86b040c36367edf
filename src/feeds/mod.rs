//! The Huntress feeds, one module each, and the REST paging they share.
//!
//! - `siem`: Managed SIEM logs (`POST /v1/siem/query`), forwarded as logs;
//! - `orgs`: the account and its organizations, which enrich every feed;
//! - `agents`: agent inventory gauges;
//! - `incidents`: SOC incident reports, forwarded as logs and events;
//! - `escalations`: SOC requests for action, forwarded as logs and events;
//! - `signals`: the detections the SOC investigated, forwarded as logs;
//!
//! and what they share: `rest` (paging, budget rule), `context` (what a feed
//! that forwards logs is given for a run, and the steps on it they share),
//! `versioned` (one log and event per version of an item that changes:
//! incidents, escalations) and `scope` (which organizations an instance
//! forwards, for every feed).

pub mod agents;
pub mod forwarding;
pub mod escalations;
pub mod incidents;
pub mod orgs;
pub mod paging;
pub mod scope;
pub mod siem;
pub mod signals;
pub mod versioned;
