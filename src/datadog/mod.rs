//! The Datadog side: how a Huntress record becomes a log (`transform`), how logs
//! reach the logs intake (`intake`), and what a run hands back to the Python
//! check (`report`: metrics, service checks, events and Agent log lines).
//! `processing` applies the Agent's log processing rules; `compression`
//! encodes intake bodies as the Agent's logs settings ask.

pub mod compression;
pub mod intake;
pub mod processing;
pub mod report;
pub mod transform;
