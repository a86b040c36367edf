//! What one run hands back to the Python check: metrics, service checks,
//! events and Agent log lines. Secrets are scrubbed from every message.

use crate::base::redact::Redactor;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Gauge,
    Count,
}

impl MetricKind {
    pub fn name(self) -> &'static str {
        match self {
            MetricKind::Gauge => "gauge",
            MetricKind::Count => "count",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub kind: MetricKind,
    pub name: String,
    pub value: f64,
    pub tags: Vec<String>,
}

/// Agent service-check statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok = 0,
    Warning = 1,
    Critical = 2,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceCheck {
    pub name: String,
    pub status: Status,
    pub tags: Vec<String>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub timestamp: i64,
    pub title: String,
    pub text: String,
    pub alert_type: String,
    pub aggregation_key: String,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warning,
    Error,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Error => "error",
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct Report {
    pub metrics: Vec<Metric>,
    pub service_checks: Vec<ServiceCheck>,
    pub events: Vec<Event>,
    pub logs: Vec<(Level, String)>,
    /// Set when nothing could be collected: the check raises it after emitting the rest.
    pub fatal: Option<String>,
}

impl Report {
    pub fn gauge(&mut self, name: &str, value: f64, tags: &[String]) {
        self.metrics.push(Metric { kind: MetricKind::Gauge, name: name.into(), value, tags: tags.to_vec() });
    }

    pub fn count(&mut self, name: &str, value: f64, tags: &[String]) {
        self.metrics.push(Metric { kind: MetricKind::Count, name: name.into(), value, tags: tags.to_vec() });
    }

    pub fn log(&mut self, level: Level, message: impl Into<String>) {
        self.logs.push((level, message.into()));
    }

    pub fn service_check(&mut self, name: &str, status: Status, tags: &[String], message: Option<String>) {
        // The Agent shows no message on OK.
        let message = if status == Status::Ok { None } else { message };
        self.service_checks.push(ServiceCheck { name: name.into(), status, tags: tags.to_vec(), message });
    }

    /// Scrubs secrets (see `redact`) from every text the report carries: log
    /// lines, messages, event texts, and the tags of metrics, checks and events.
    pub fn redact(&mut self, redactor: &Redactor) {
        let scrub = |text: &mut String| redactor.scrub_in_place(text);
        for (_, line) in &mut self.logs {
            scrub(line);
        }
        for metric in &mut self.metrics {
            metric.tags.iter_mut().for_each(scrub);
        }
        for check in &mut self.service_checks {
            check.tags.iter_mut().for_each(scrub);
            if let Some(message) = &mut check.message {
                scrub(message);
            }
        }
        for event in &mut self.events {
            scrub(&mut event.text);
            scrub(&mut event.title);
            event.tags.iter_mut().for_each(scrub);
        }
        if let Some(fatal) = &mut self.fatal {
            scrub(fatal);
        }
    }
}

pub fn with_tag(tags: &[String], tag: String) -> Vec<String> {
    let mut all = tags.to_vec();
    all.push(tag);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_service_checks_carry_no_message() {
        let mut report = Report::default();
        report.service_check("x", Status::Ok, &[], Some("fine".into()));
        report.service_check("x", Status::Critical, &[], Some("broken".into()));
        assert_eq!(report.service_checks[0].message, None);
        assert_eq!(report.service_checks[1].message.as_deref(), Some("broken"));
    }

    #[test]
    fn secrets_are_scrubbed_everywhere() {
        let mut report = Report::default();
        report.log(Level::Error, "key SECRETKEY leaked");
        report.service_check("x", Status::Critical, &[], Some("auth SECRETKEY".into()));
        report.fatal = Some("SECRETKEY".into());
        report.count("m", 1.0, &["org:SECRETKEY".into()]);
        report.log(Level::Error, "upstream said: Authorization: Basic b3RoZXI6Y3JlZHM=");
        report.redact(&Redactor::new(&["SECRETKEY"]));
        let text = format!("{report:?}");
        assert!(!text.contains("SECRETKEY") && !text.contains("b3RoZXI6Y3JlZHM"), "{text}");
    }
}
