//! What the collector knows of a REST feed (`Feed`): which requests it sends,
//! when in a run it goes, and one call that runs it. Each feed's file
//! implements it; `feeds::enabled` lists them.

use crate::datadog::report::Report;
use crate::feeds::forwarding::FeedContext;
use crate::feeds::orgs::OrgDirectory;
use crate::feeds::paging::{Health, PageSource};
use crate::huntress::client::Feature;

/// `<feed>: {enabled, max_pages}`: the settings of a feed that lists one endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct ListSettings {
    pub enabled: bool,
    /// Pages one run reads at most, per listing.
    pub max_pages: u32,
}

/// When in a run a feed goes, which is also its priority on the rate budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// Before the SIEM queries, within the SOC share of the budget, so that
    /// what the SOC reports never waits behind a SIEM backlog.
    Soc,
    /// After the SIEM queries, and only when the budget's free slots cover the
    /// feed's estimate plus a reserve for the next run's SIEM queries.
    Spare,
}

pub trait Feed: Send + Sync {
    /// Its requests, for the rate budget and `huntress.api.requests`.
    fn feature(&self) -> Feature;
    fn slot(&self) -> Slot;
    /// Pages one run reads at most, per listing.
    fn max_pages(&self) -> u32;
    /// Requests a first run is expected to send, before any run measured it.
    fn first_estimate(&self, _directory: Option<&OrgDirectory>) -> u32 {
        1
    }
    /// One run: its health (`None` when the budget left no room to send
    /// anything) and the pages it read, the next run's estimate.
    fn run(&mut self, source: &mut dyn PageSource, ctx: FeedContext<'_>, report: &mut Report) -> (Option<Health>, u32);
}
