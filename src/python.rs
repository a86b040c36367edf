//! The pyo3 binding: `Collector` for the Python check, typed exceptions made
//! from `HuntressError`, and the persistent cache reached through callbacks.

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::base::boundary;
use crate::base::cache::Cache;
use crate::base::error::HuntressError;
use crate::base::http::ProxyConfig;
use crate::collector::{report_internal_error, Collector};
use crate::feeds::siem::SERVICE_CHECK as SIEM_SERVICE_CHECK;
use crate::config::AgentContext;
use crate::datadog::report::{Report, Status};

create_exception!(_core, HuntressCoreError, PyException, "Base class of the core's errors.");
create_exception!(_core, ConfigError, HuntressCoreError, "The instance configuration is invalid; the message names the key.");
create_exception!(_core, ApiError, HuntressCoreError, "The Huntress API failed.");
create_exception!(_core, IntakeError, HuntressCoreError, "The Datadog Logs intake failed.");
create_exception!(_core, CacheError, HuntressCoreError, "The persistent cache failed.");
create_exception!(_core, DeadlineError, HuntressCoreError, "The run deadline was reached.");
create_exception!(_core, InternalError, HuntressCoreError, "A bug in the core (a caught panic).");

impl From<HuntressError> for PyErr {
    fn from(error: HuntressError) -> PyErr {
        let message = error.to_string();
        match error {
            HuntressError::Config { .. } => ConfigError::new_err(message),
            HuntressError::Api { .. } => ApiError::new_err(message),
            HuntressError::Intake { .. } => IntakeError::new_err(message),
            HuntressError::Cache(_) => CacheError::new_err(message),
            HuntressError::Deadline(_) => DeadlineError::new_err(message),
            HuntressError::Internal(_) => InternalError::new_err(message),
        }
    }
}

/// The Agent's persistent cache, reached through the check's bound methods.
struct PyCache {
    read: Py<PyAny>,
    write: Py<PyAny>,
}

impl Cache for PyCache {
    fn read(&mut self, key: &str) -> Result<String, String> {
        Python::attach(|py| {
            let value = self.read.call1(py, (key,)).map_err(|e| e.to_string())?;
            if value.is_none(py) {
                return Ok(String::new());
            }
            value.extract::<String>(py).map_err(|e| e.to_string())
        })
    }

    fn write(&mut self, key: &str, value: &str) -> Result<(), String> {
        Python::attach(|py| self.write.call1(py, (key, value)).map(|_| ()).map_err(|e| e.to_string()))
    }
}

#[pyclass(name = "Collector", module = "datadog_checks.huntress._core")]
pub struct PyCollector {
    inner: std::result::Result<Collector, Broken>,
}

/// A collector whose construction panicked: every run reports the panic.
struct Broken {
    message: String,
    tags: Vec<String>,
}

impl Broken {
    fn report(&self) -> Report {
        let message = format!("internal error in the check, it could not start: {}", self.message);
        let mut report = Report::default();
        report.service_check(SIEM_SERVICE_CHECK, Status::Critical, &self.tags, Some(message.clone()));
        report_internal_error(&self.tags, message, &mut report);
        report
    }
}

/// The instance's own `tags`, read without the configuration parser.
fn raw_tags(instance: &serde_json::Value) -> Vec<String> {
    let tags = instance.get("tags").and_then(|t| t.as_array());
    tags.map(|tags| tags.iter().filter_map(|t| t.as_str().map(String::from)).collect()).unwrap_or_default()
}

#[pymethods]
impl PyCollector {
    /// `instance_json`: the instance as JSON. `agent`: `api_key`, `site`,
    /// `min_collection_interval` and `proxy` as the Agent knows them, and
    /// `logs_config`, the Agent's logs settings as JSON.
    #[new]
    fn new(instance_json: &str, agent: &Bound<'_, PyDict>) -> PyResult<Self> {
        let instance: serde_json::Value = serde_json::from_str(instance_json)
            .map_err(|e| ConfigError::new_err(format!("configuration error in `instances`: not valid JSON ({e})")))?;
        let context = agent_context(agent)?;
        let inner = match boundary::catch(|| Collector::new(&instance, &context)) {
            Ok(collector) => Ok(collector?),
            Err(message) => Err(Broken { message, tags: raw_tags(&instance) }),
        };
        Ok(PyCollector { inner })
    }

    #[getter]
    fn cache_id(&self) -> String {
        match &self.inner {
            Ok(inner) => boundary::catch(|| inner.cache_id().to_string()).unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Runs every query once, with the GIL released for all network work. A
    /// panic in the core ends the run with an `internal` error (see `boundary`).
    fn run(&mut self, py: Python<'_>, read_cache: Py<PyAny>, write_cache: Py<PyAny>) -> PyResult<Py<PyDict>> {
        let mut cache = PyCache { read: read_cache, write: write_cache };
        let report = match &mut self.inner {
            Ok(inner) => py.detach(move || match boundary::catch(|| inner.run(&mut cache)) {
                Ok(report) => report,
                Err(message) => inner.internal_error_report(&message),
            }),
            Err(broken) => broken.report(),
        };
        report_to_python(py, &report)
    }
}

/// Arms a one-shot panic at `point` (`"new"` or `"run"`) for the tests of the
/// panic boundary. Not part of the check's interface.
#[pyfunction]
#[pyo3(name = "_inject_panic")]
fn inject_panic(point: &str) -> PyResult<()> {
    let point = boundary::PanicPoint::parse(point).ok_or_else(|| PyValueError::new_err(format!("unknown panic point {point:?}")))?;
    boundary::inject_panic(point);
    Ok(())
}

fn agent_context(agent: &Bound<'_, PyDict>) -> PyResult<AgentContext> {
    let text = |key: &str| -> PyResult<String> {
        Ok(match agent.get_item(key)? {
            Some(value) if !value.is_none() => value.str()?.to_string(),
            _ => String::new(),
        })
    };
    let interval = text("min_collection_interval")?.parse::<f64>().unwrap_or(0.0);
    let proxy = match agent.get_item("proxy")? {
        Some(value) if value.is_instance_of::<PyDict>() => Some(proxy_config(value.cast::<PyDict>()?)?),
        _ => None,
    };
    let logs_config = match text("logs_config")?.as_str() {
        "" => serde_json::Value::Null,
        json => serde_json::from_str(json).map_err(|e| ConfigError::new_err(format!("configuration error in `logs_config`: not valid JSON ({e})")))?,
    };
    Ok(AgentContext { api_key: text("api_key")?, site: text("site")?, min_collection_interval: interval, proxy, logs_config })
}

fn proxy_config(proxy: &Bound<'_, PyDict>) -> PyResult<ProxyConfig> {
    let url = |key: &str| -> PyResult<Option<String>> {
        Ok(proxy.get_item(key)?.filter(|v| !v.is_none()).map(|v| v.to_string()).filter(|s| !s.trim().is_empty()))
    };
    let no_proxy = match proxy.get_item("no_proxy")? {
        Some(value) if value.is_instance_of::<PyList>() => value.extract::<Vec<String>>()?,
        Some(value) if !value.is_none() => value.to_string().split([',', ' ']).filter(|s| !s.is_empty()).map(String::from).collect(),
        _ => Vec::new(),
    };
    Ok(ProxyConfig { http: url("http")?, https: url("https")?, no_proxy })
}

fn report_to_python(py: Python<'_>, report: &Report) -> PyResult<Py<PyDict>> {
    let out = PyDict::new(py);
    let metrics = PyList::empty(py);
    for m in &report.metrics {
        metrics.append((m.kind.name(), &m.name, m.value, &m.tags))?;
    }
    let checks = PyList::empty(py);
    for c in &report.service_checks {
        checks.append((&c.name, c.status as u8, &c.tags, &c.message))?;
    }
    let events = PyList::empty(py);
    for e in &report.events {
        let event = PyDict::new(py);
        event.set_item("timestamp", e.timestamp)?;
        event.set_item("event_type", "huntress")?;
        event.set_item("source_type_name", "huntress")?;
        event.set_item("msg_title", &e.title)?;
        event.set_item("msg_text", &e.text)?;
        event.set_item("alert_type", &e.alert_type)?;
        event.set_item("aggregation_key", &e.aggregation_key)?;
        event.set_item("tags", &e.tags)?;
        events.append(event)?;
    }
    let logs = PyList::empty(py);
    for (level, message) in &report.logs {
        logs.append((level.name(), message))?;
    }
    out.set_item("metrics", metrics)?;
    out.set_item("service_checks", checks)?;
    out.set_item("events", events)?;
    out.set_item("logs", logs)?;
    out.set_item("fatal", &report.fatal)?;
    Ok(out.unbind())
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = module.py();
    module.add_class::<PyCollector>()?;
    module.add_function(wrap_pyfunction!(inject_panic, module)?)?;
    module.add("HuntressCoreError", py.get_type::<HuntressCoreError>())?;
    module.add("ConfigError", py.get_type::<ConfigError>())?;
    module.add("ApiError", py.get_type::<ApiError>())?;
    module.add("IntakeError", py.get_type::<IntakeError>())?;
    module.add("CacheError", py.get_type::<CacheError>())?;
    module.add("DeadlineError", py.get_type::<DeadlineError>())?;
    module.add("InternalError", py.get_type::<InternalError>())?;
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
