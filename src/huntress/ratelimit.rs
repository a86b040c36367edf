//! Client-side pacing for Huntress's limit of 60 requests per minute per key,
//! enforced on a sliding window. Every Huntress call of every instance that uses
//! the same key in this Agent process draws from one shared `RateBudget`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const DEFAULT_LIMIT: u32 = 60;
/// The highest per-minute limit taken from a response header. Huntress documents
/// 60; a larger value is clamped here, so no header can make the check send a
/// flood of requests (the limiter's memory does not depend on it either).
pub const MAX_LIMIT: u32 = 1000;
pub const WINDOW: Duration = Duration::from_secs(60);
/// Slack for clock skew and network latency between our send and the server's count.
const MARGIN: Duration = Duration::from_millis(250);

/// Requests sent at one instant: ours one by one, those of other clients of the
/// key (revealed by the server's `remaining` header) as one entry however many.
#[derive(Debug, Clone, Copy)]
struct Sent {
    at: Instant,
    count: u32,
}

#[derive(Debug)]
struct WindowState {
    limit: u32,
    window: Duration,
    /// Requests still inside the window, oldest first.
    sent: VecDeque<Sent>,
    /// The sum of their counts.
    used: u32,
}

impl WindowState {
    fn prune(&mut self, now: Instant) {
        while let Some(&first) = self.sent.front() {
            if now.duration_since(first.at) >= self.window + MARGIN {
                self.sent.pop_front();
                self.used = self.used.saturating_sub(first.count);
            } else {
                break;
            }
        }
    }

    fn record(&mut self, at: Instant, count: u32) {
        if count > 0 {
            self.sent.push_back(Sent { at, count });
            self.used = self.used.saturating_add(count);
        }
    }

    /// How long until a slot frees up; zero when one is free now.
    fn wait_for_slot(&mut self, now: Instant) -> Duration {
        self.prune(now);
        if self.used < self.limit {
            return Duration::ZERO;
        }
        // A slot frees when this many of the oldest requests have left the window.
        let mut must_leave = self.used - self.limit + 1;
        for sent in &self.sent {
            if sent.count >= must_leave {
                return (sent.at + self.window + MARGIN).saturating_duration_since(now);
            }
            must_leave -= sent.count;
        }
        Duration::ZERO
    }
}

#[derive(Debug, Clone)]
pub struct RateBudget {
    state: Arc<Mutex<WindowState>>,
}

/// Why no slot was taken.
#[derive(Debug, PartialEq)]
pub struct WouldExceedDeadline {
    pub wait: Duration,
}

impl RateBudget {
    pub fn new(limit: u32, window: Duration) -> Self {
        let state = WindowState { limit: limit.clamp(1, MAX_LIMIT), window, sent: VecDeque::new(), used: 0 };
        RateBudget { state: Arc::new(Mutex::new(state)) }
    }

    /// The budget shared by every instance in this process that uses `key_id`.
    pub fn shared(key_id: &str) -> Self {
        static BUDGETS: OnceLock<Mutex<HashMap<String, RateBudget>>> = OnceLock::new();
        let mut budgets = BUDGETS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        budgets.entry(key_id.to_string()).or_insert_with(|| RateBudget::new(DEFAULT_LIMIT, WINDOW)).clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WindowState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks until a request may be sent, and records it. Gives up, without
    /// waiting, when the wait would end after `deadline`. Returns the time waited.
    pub fn acquire(&self, deadline: Instant) -> Result<Duration, WouldExceedDeadline> {
        let mut waited = Duration::ZERO;
        loop {
            let now = Instant::now();
            let wait = {
                let mut state = self.lock();
                let wait = state.wait_for_slot(now);
                if wait.is_zero() {
                    state.record(now, 1);
                    return Ok(waited);
                }
                wait
            };
            if now + wait > deadline {
                return Err(WouldExceedDeadline { wait });
            }
            std::thread::sleep(wait);
            waited += wait;
        }
    }

    /// Reconciles with the server's view after a response. A limit is clamped
    /// to `1..=MAX_LIMIT`; the other clients' requests that `remaining` reveals
    /// take one entry, whatever their number.
    pub fn observe(&self, limit: Option<u32>, remaining: Option<u32>) {
        let now = Instant::now();
        let mut state = self.lock();
        if let Some(limit) = limit.filter(|l| *l > 0) {
            state.limit = limit.min(MAX_LIMIT);
        }
        let Some(remaining) = remaining else { return };
        state.prune(now);
        let used_by_server = state.limit.saturating_sub(remaining);
        // Requests the server counted that we did not make: another client of the key.
        let unseen = used_by_server.saturating_sub(state.used);
        state.record(now, unseen);
    }

    /// After a 429: how long to wait. When our own requests fill the window, until
    /// the oldest leaves it. Otherwise another client of the key used it up at times
    /// we cannot know: probe with `probe` (a growing backoff), but never longer than
    /// until our own oldest request leaves the window.
    pub fn backoff_after_429(&self, probe: Duration) -> Duration {
        let now = Instant::now();
        let mut state = self.lock();
        state.prune(now);
        let own_wait = state.wait_for_slot(now);
        if !own_wait.is_zero() {
            return own_wait;
        }
        let window_end = state.sent.front().map(|first| (first.at + state.window + MARGIN).saturating_duration_since(now));
        let wait = match window_end {
            Some(end) if !end.is_zero() => probe.min(end),
            _ => probe,
        };
        wait.max(Duration::from_millis(500))
    }

    pub fn limit(&self) -> u32 {
        self.lock().limit
    }

    /// How many requests could be sent right now without waiting. Takes nothing
    /// and never blocks: lower-priority features look before they start.
    pub fn free_slots(&self) -> u32 {
        let mut state = self.lock();
        state.prune(Instant::now());
        state.limit.saturating_sub(state.used)
    }

    /// How many requests could be sent from now until `until`, one after the
    /// other, without ever pausing longer than `max_gap` for a slot (a page token
    /// that outlives no such pause). Takes nothing and never blocks. Counts only
    /// the slots that requests already in the window free up.
    pub fn slots_before(&self, until: Instant, max_gap: Option<Duration>) -> u32 {
        let now = Instant::now();
        let mut state = self.lock();
        state.prune(now);
        let limit = state.limit;
        let mut used = state.used;
        let mut slots = limit.saturating_sub(used);
        let mut last = now;
        for sent in &state.sent {
            let opens = sent.at + state.window + MARGIN;
            if opens > until || max_gap.is_some_and(|gap| opens.saturating_duration_since(last) > gap) {
                break;
            }
            // Requests beyond the limit (other clients) free nothing until the count drops below it.
            let free_before = limit.saturating_sub(used);
            used = used.saturating_sub(sent.count);
            let freed = limit.saturating_sub(used) - free_before;
            if freed > 0 {
                slots += freed;
                last = last.max(opens);
            }
        }
        slots
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_limit_requests_then_asks_to_wait() {
        let budget = RateBudget::new(3, Duration::from_millis(200));
        let deadline = Instant::now() + Duration::from_secs(5);
        for _ in 0..3 {
            assert_eq!(budget.acquire(deadline).unwrap(), Duration::ZERO);
        }
        let waited = budget.acquire(deadline).unwrap();
        assert!(waited >= Duration::from_millis(200), "waited {waited:?}");
    }

    #[test]
    fn refuses_a_wait_past_the_deadline() {
        let budget = RateBudget::new(1, Duration::from_secs(60));
        let soon = Instant::now() + Duration::from_millis(50);
        budget.acquire(soon).unwrap();
        let err = budget.acquire(soon).unwrap_err();
        assert!(err.wait > Duration::from_secs(59));
    }

    #[test]
    fn server_remaining_reveals_other_clients() {
        let budget = RateBudget::new(60, Duration::from_secs(60));
        budget.acquire(Instant::now() + Duration::from_secs(1)).unwrap();
        // The server says only 9 remain: 50 requests came from elsewhere.
        budget.observe(Some(60), Some(9));
        let state = budget.lock();
        assert_eq!(state.used, 51);
        assert_eq!(state.sent.len(), 2, "the other clients' 50 requests take one entry");
    }

    #[test]
    fn header_limits_are_clamped_and_take_no_memory() {
        let budget = RateBudget::new(60, WINDOW);
        budget.observe(Some(u32::MAX), Some(0));
        assert_eq!(budget.limit(), MAX_LIMIT);
        assert_eq!(budget.free_slots(), 0);
        assert!(budget.lock().sent.len() <= 1);
        budget.observe(Some(0), None);
        assert_eq!(budget.limit(), MAX_LIMIT, "a zero limit is ignored");
        let wait = budget.lock().wait_for_slot(Instant::now());
        assert!(wait > Duration::from_secs(59), "the window is full until the revealed requests leave it: {wait:?}");
        assert_eq!(RateBudget::new(u32::MAX, WINDOW).limit(), MAX_LIMIT);
    }

    #[test]
    fn header_limit_replaces_default() {
        let budget = RateBudget::new(60, WINDOW);
        budget.observe(Some(120), None);
        assert_eq!(budget.limit(), 120);
    }

    #[test]
    fn backoff_after_429_waits_for_our_oldest_request_when_we_filled_the_window() {
        let budget = RateBudget::new(2, Duration::from_millis(1500));
        let deadline = Instant::now() + Duration::from_secs(5);
        budget.acquire(deadline).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        budget.acquire(deadline).unwrap();
        let wait = budget.backoff_after_429(Duration::from_secs(8));
        assert!(wait > Duration::from_millis(1400) && wait < Duration::from_millis(1800), "{wait:?}");
    }

    #[test]
    fn backoff_after_429_probes_when_someone_else_filled_the_window() {
        let budget = RateBudget::new(60, Duration::from_secs(60));
        budget.acquire(Instant::now() + Duration::from_secs(1)).unwrap();
        assert_eq!(budget.backoff_after_429(Duration::from_secs(2)), Duration::from_secs(2));
        let fresh = RateBudget::new(60, Duration::from_secs(60));
        assert_eq!(fresh.backoff_after_429(Duration::from_secs(4)), Duration::from_secs(4));
    }

    #[test]
    fn free_slots_counts_down_and_frees_with_the_window() {
        let budget = RateBudget::new(3, Duration::from_millis(100));
        assert_eq!(budget.free_slots(), 3);
        let deadline = Instant::now() + Duration::from_secs(5);
        budget.acquire(deadline).unwrap();
        budget.acquire(deadline).unwrap();
        assert_eq!(budget.free_slots(), 1);
        budget.acquire(deadline).unwrap();
        assert_eq!(budget.free_slots(), 0, "looking takes no slot and does not wait");
        std::thread::sleep(Duration::from_millis(100) + MARGIN);
        assert_eq!(budget.free_slots(), 3);
        budget.observe(Some(3), Some(1));
        assert_eq!(budget.free_slots(), 1, "requests by other clients of the key count too");
    }

    #[test]
    fn slots_before_counts_what_frees_up_in_time_and_without_long_pauses() {
        let budget = RateBudget::new(3, Duration::from_millis(300));
        let far = Instant::now() + Duration::from_secs(5);
        assert_eq!(budget.slots_before(far, None), 3);
        for _ in 0..3 {
            budget.acquire(far).unwrap();
        }
        assert_eq!(budget.slots_before(Instant::now() + Duration::from_millis(50), None), 0);
        assert_eq!(budget.slots_before(far, None), 3, "the three slots free up before the deadline");
        assert_eq!(budget.slots_before(far, Some(Duration::from_millis(100))), 0, "but only after a pause longer than a token lives");
    }

    #[test]
    fn shared_budgets_are_per_key() {
        let a = RateBudget::shared("key-a-test");
        let b = RateBudget::shared("key-a-test");
        let c = RateBudget::shared("key-c-test");
        assert!(Arc::ptr_eq(&a.state, &b.state));
        assert!(!Arc::ptr_eq(&a.state, &c.state));
    }
}
