//! The Datadog side: how a Huntress record becomes a log (`transform`), how logs
//! reach the logs intake (`intake`), and what a run hands back to the Python
//! check (`report`: metrics, service checks, events and Agent log lines).

pub mod intake;
pub mod report;
pub mod transform;
