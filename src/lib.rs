//! Rust core of the Huntress check for the Datadog Agent. The Python module
//! `datadog_checks.huntress._core` is registered here; the work lives in the
//! modules below, one concern each:
//!
//! - `feeds`: one module per Huntress feed (SIEM queries, organizations,
//!   agents, incident reports) and the REST paging they share;
//! - `datadog`: what goes to Datadog (log transform, logs intake, the report of
//!   metrics, service checks, events and log lines handed to Python);
//! - the Huntress API client, its rate budget, the page scanner, checkpoints,
//!   configuration and errors at the top level.

pub mod base;
pub mod collector;
pub mod config;
pub mod datadog;
pub mod feeds;
pub mod huntress;
pub mod json;

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
