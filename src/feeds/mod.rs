//! The Huntress feeds and what they share.
//!
//! The SIEM feed (`siem`: Managed SIEM logs from `POST /v1/siem/query`) is run
//! by the collector query by query. Every other feed lists one REST endpoint
//! and implements `feed::Feed`; `enabled` builds the ones an instance turns on:
//!
//! - `incidents`: SOC incident reports, forwarded as logs and events;
//! - `escalations`: SOC requests for action, forwarded as logs and events;
//! - `signals`: the detections the SOC investigated, forwarded as logs;
//! - `agents`: agent inventory gauges.
//!
//! What they share, from the bottom up: `paging` (REST listings and the
//! budget rule), `orgs` (the account's organizations, which enrich every
//! feed), `scope` (which organizations an instance forwards), `item` (reading
//! an item and shaping its log), `known` (checkpoints and versions kept in the
//! cache), `forwarding` (a feed's run context and the way to the intake) and
//! `versioned` (one log and event per version of an item that changes).

pub mod agents;
pub mod escalations;
pub mod feed;
pub mod forwarding;
pub mod incidents;
pub mod item;
pub mod known;
pub mod orgs;
pub mod paging;
pub mod scope;
pub mod siem;
pub mod signals;
pub mod versioned;

use agents::{Agents, AgentsSettings};
use escalations::Escalations;
use feed::{Feed, ListSettings};
use incidents::Incidents;
use signals::Signals;
use versioned::Versioned;

/// The settings of every REST feed.
#[derive(Clone, Debug, PartialEq)]
pub struct FeedSettings {
    pub incidents: ListSettings,
    pub escalations: ListSettings,
    pub signals: ListSettings,
    pub agents: AgentsSettings,
}

/// The REST feeds an instance turns on, in the order they run within their
/// slot. A new feed is registered here.
pub fn enabled(settings: &FeedSettings) -> Vec<Box<dyn Feed>> {
    let all: [(bool, Box<dyn Feed>); 4] = [
        (settings.incidents.enabled, Box::new(Versioned { feed: Incidents, settings: settings.incidents.clone() })),
        (settings.escalations.enabled, Box::new(Versioned { feed: Escalations, settings: settings.escalations.clone() })),
        (settings.signals.enabled, Box::new(Signals(settings.signals.clone()))),
        (settings.agents.enabled, Box::new(Agents(settings.agents.clone()))),
    ];
    all.into_iter().filter(|(on, _)| *on).map(|(_, feed)| feed).collect()
}
