//! Rust core of the Huntress check for the Datadog Agent. The Python module
//! `datadog_checks.huntress._core` is registered here; the work lives in the
//! modules below, one concern each.

pub mod agents;
pub mod checkpoint;
pub mod collector;
pub mod config;
pub mod error;
pub mod http;
pub mod huntress;
pub mod incidents;
pub mod intake;
pub mod orgs;
pub mod ratelimit;
pub mod report;
pub mod rest;
pub mod scan;
pub mod row;
pub mod siem;
pub mod tags;
pub mod transform;

#[cfg(feature = "python")]
mod python;

#[cfg(feature = "python")]
#[pyo3::pymodule]
fn _core(module: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
    python::register(module)
}
