//! Rust core of the Huntress check for the Datadog Agent, registered as the
//! Python module `datadog_checks.huntress._core` (`python`). The parts, from
//! the bottom up; each imports only parts below it:
//!
//! - `base`: errors, the panic boundary, redaction, tags, HTTP, cache access;
//! - `json`: reading JSON without building a tree (scanner, SIEM row);
//! - `huntress`: the Huntress REST client and its rate budget;
//! - `datadog`: what goes to Datadog (log transform, processing rules,
//!   compression, the logs intake, the report handed to Python);
//! - `feeds`: the SIEM feed and the REST feeds, and what they share;
//! - `config`: reads an instance into the settings of every part;
//! - `collector`: one instance's run, in order, on the shared rate budget.

// Without the binding nothing calls the collector: the unit tests still reach every part.
#![cfg_attr(not(feature = "python"), allow(dead_code))]

mod base;
mod collector;
mod config;
mod datadog;
mod feeds;
mod huntress;
mod json;

// What `examples/pipeline_cost.rs` measures without the network.
pub use datadog::compression::{Encoding, FALLBACK_GZIP_LEVEL};
pub use datadog::transform::{event_id, log_of_row, now_ms, Enrichment, LogTemplate, Prepared, StalePolicy};
pub use feeds::siem::parse_page;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod test_support;

#[cfg(feature = "python")]
mod python;

#[cfg(feature = "python")]
#[pyo3::pymodule]
fn _core(module: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
    python::register(module)
}
