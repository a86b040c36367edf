//! The line no panic crosses: the Python entry points run the core through
//! `catch`, and a panic becomes an `internal` error in the run's report
//! instead of a `PanicException` (a `BaseException`, which the Agent's check
//! machinery does not handle) reaching the Agent. Inside a run, each SIEM
//! query and each REST feed is caught on its own too, so that one failing
//! part leaves the rest of the run's report intact.
//!
//! `inject_panic` is the test hook: it arms a one-shot panic at one entry
//! point. Only Python code calling `_core._inject_panic` can arm it; no
//! configuration option or environment variable does, so it cannot fire by
//! accident in an Agent.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, Ordering};

/// An entry point where a test may ask for a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanicPoint {
    New = 1,
    Run = 2,
    /// Inside the collection of one SIEM query.
    Query = 3,
    /// Inside one REST feed (incidents, escalations, signals, agents).
    Feed = 4,
}

impl PanicPoint {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "new" => Some(PanicPoint::New),
            "run" => Some(PanicPoint::Run),
            "query" => Some(PanicPoint::Query),
            "feed" => Some(PanicPoint::Feed),
            _ => None,
        }
    }
}

static ARMED: AtomicU8 = AtomicU8::new(0);

/// Arms a panic at the next pass through `point`.
pub fn inject_panic(point: PanicPoint) {
    ARMED.store(point as u8, Ordering::SeqCst);
}

/// Panics when a test armed `point`, once.
pub fn panic_if_injected(point: PanicPoint) {
    if ARMED.compare_exchange(point as u8, 0, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
        panic!("panic injected at {point:?} by a test");
    }
}

/// Runs `work`; a panic in it comes back as its message. The state `work`
/// touched may be half-updated: everything it shares is behind poison-tolerant
/// locks or rebuilt at the start of each run.
pub fn catch<T>(work: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(work)).map_err(|payload| panic_message(payload.as_ref()))
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        text.to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_message() {
        assert_eq!(catch(|| 7), Ok(7));
        assert_eq!(catch(|| -> u8 { panic!("boom {}", 1) }), Err("boom 1".to_string()));
        let empty: Vec<u8> = Vec::new();
        assert!(catch(|| empty.first().copied().expect("a value")).unwrap_err().contains("a value"));
    }

    #[test]
    fn an_injected_panic_fires_once_at_its_point() {
        inject_panic(PanicPoint::New);
        panic_if_injected(PanicPoint::Run);
        assert!(catch(|| panic_if_injected(PanicPoint::New)).is_err());
        assert!(catch(|| panic_if_injected(PanicPoint::New)).is_ok());
    }
}
