//! Paging through the Huntress REST list endpoints (`/v1/organizations`,
//! `/v1/agents`, `/v1/incident_reports`) and the budget rule the REST features
//! share.
//!
//! Lists page with `limit` (at most 500) and `page_token`; there is no `page`
//! parameter. Pagination is not trusted to end: a listing stops at a page cap
//! and on a token it has already been given.

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::base::error::{ErrorKind, HuntressError, Result};
use crate::base::http::Deadline;
use crate::huntress::client::{Feature, HuntressClient};
use crate::datadog::report::Status;

/// The largest `limit` the API accepts.
pub const PAGE_LIMIT: u32 = 500;

#[derive(Debug)]
pub struct ListPage {
    pub items: Vec<Map<String, Value>>,
    pub next_page_token: Option<String>,
}

/// Checks the `{"<plural>": [...], "pagination": {...}}` shape instead of trusting it.
pub fn parse_list(value: Value, path: &str, plural: &str) -> Result<ListPage> {
    let malformed = |what: String| HuntressError::api(ErrorKind::MalformedResponse, format!("{path}: {what}"));
    let Value::Object(mut body) = value else { return Err(malformed("the response is not a JSON object".into())) };
    let items = match body.remove(plural) {
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::Object(map) => Ok(map),
                _ => Err(malformed(format!("`{plural}` holds an entry that is not an object"))),
            })
            .collect::<Result<Vec<_>>>()?,
        Some(Value::Null) | None => return Err(malformed(format!("`{plural}` is missing"))),
        Some(_) => return Err(malformed(format!("`{plural}` is not a list"))),
    };
    let next_page_token = match body.remove("pagination") {
        None | Some(Value::Null) => None,
        Some(Value::Object(mut pagination)) => match pagination.remove("next_page_token") {
            None | Some(Value::Null) => None,
            Some(Value::String(token)) if token.is_empty() => None,
            Some(Value::String(token)) => Some(token),
            Some(_) => return Err(malformed("`pagination.next_page_token` is not a string".into())),
        },
        Some(_) => return Err(malformed("`pagination` is not an object".into())),
    };
    Ok(ListPage { items, next_page_token })
}

/// Where pages come from: the Huntress client, or a fake in tests.
pub trait PageSource {
    fn get(&mut self, path: &str, query: &[(&str, String)]) -> Result<Value>;
    /// Whether one more request may be sent now (budget and deadline).
    fn may_send(&self) -> bool;
}

/// How a listing ended.
#[derive(Debug, Clone)]
pub enum End {
    /// The last page was read.
    Complete,
    /// The caller had read enough (e.g. it reached its checkpoint).
    Enough,
    /// `max_pages` pages were read and more remain.
    PageCap,
    /// The API handed out a page token it had handed out before.
    RepeatedToken,
    /// The rate budget (or the run deadline) left no room for the next page.
    Budget,
    Failed(HuntressError),
}

impl End {
    /// Everything there was to read was read.
    pub fn is_complete(&self) -> bool {
        matches!(self, End::Complete | End::Enough)
    }

    /// Why a listing is incomplete, for a warning; `None` when complete or failed.
    pub fn shortfall(&self, what: &str, max_pages: u32, option: &str) -> Option<String> {
        match self {
            End::Complete | End::Enough | End::Failed(_) => None,
            End::PageCap => Some(format!(
                "{what}: stopped after {max_pages} pages of {PAGE_LIMIT} with more remaining; raise `{option}`"
            )),
            End::RepeatedToken => Some(format!("{what}: the API repeated a page token; stopped paging to avoid a loop")),
            End::Budget => Some(format!("{what}: stopped early, the rate budget (or run deadline) left no room for more pages")),
        }
    }
}

#[derive(Debug)]
pub struct Listing {
    pub pages: u32,
    pub end: End,
    /// The token of the first page not read, when the listing stopped short of
    /// its end (page cap, budget, failure); `None` there means the first page.
    pub next: Option<String>,
}

/// Reads `path` page by page (`limit=500`, `page_token`), handing each page's
/// items to `on_page`, which returns `false` when it has read enough. Stops at
/// `max_pages`, on a repeated token, when the source may not send, or on an error.
pub fn list_pages(
    source: &mut dyn PageSource,
    path: &str,
    plural: &str,
    filters: &[(&str, String)],
    max_pages: u32,
    on_page: impl FnMut(Vec<Map<String, Value>>) -> bool,
) -> Listing {
    list_pages_from(source, path, plural, filters, max_pages, None, on_page)
}

/// `list_pages` from the page of `start` (a token an earlier listing of the
/// same query was given), or from the first page.
pub fn list_pages_from(
    source: &mut dyn PageSource,
    path: &str,
    plural: &str,
    filters: &[(&str, String)],
    max_pages: u32,
    start: Option<String>,
    mut on_page: impl FnMut(Vec<Map<String, Value>>) -> bool,
) -> Listing {
    let mut seen_tokens: HashSet<String> = start.iter().cloned().collect();
    let mut token: Option<String> = start;
    let mut pages = 0;
    loop {
        if pages >= max_pages {
            return Listing { pages, end: End::PageCap, next: token };
        }
        if !source.may_send() {
            return Listing { pages, end: End::Budget, next: token };
        }
        let mut query: Vec<(&str, String)> = filters.to_vec();
        query.push(("limit", PAGE_LIMIT.to_string()));
        if let Some(token) = &token {
            query.push(("page_token", token.clone()));
        }
        let page = match source.get(path, &query).and_then(|value| parse_list(value, path, plural)) {
            Ok(page) => page,
            Err(error) => return Listing { pages, end: End::Failed(error), next: token },
        };
        pages += 1;
        if !on_page(page.items) {
            return Listing { pages, end: End::Enough, next: None };
        }
        match page.next_page_token {
            None => return Listing { pages, end: End::Complete, next: None },
            Some(next) if !seen_tokens.insert(next.clone()) => return Listing { pages, end: End::RepeatedToken, next: None },
            Some(next) => token = Some(next),
        }
    }
}

/// How a feature's requests are paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// Wait for the rate budget like the SIEM queries (the first organization fetch).
    Wait,
    /// Send only while the budget has more than `reserve` free slots; never wait.
    Spare { reserve: u32 },
    /// Wait for the rate budget, but send only while this run has sent fewer
    /// than `requests` Huntress requests in all: the SOC feeds' bounded share
    /// ahead of the SIEM queries.
    Until { requests: u64 },
}

/// The Huntress client as a page source for one feature.
pub struct ClientSource<'a> {
    pub client: &'a mut HuntressClient,
    pub feature: Feature,
    pub deadline: Deadline,
    pub pacing: Pacing,
}

impl PageSource for ClientSource<'_> {
    fn get(&mut self, path: &str, query: &[(&str, String)]) -> Result<Value> {
        self.client.get_json(self.feature, path, query, &self.deadline)
    }

    fn may_send(&self) -> bool {
        !self.deadline.expired()
            && match self.pacing {
                Pacing::Wait => true,
                Pacing::Spare { reserve } => self.client.free_slots() > reserve,
                Pacing::Until { requests } => self.client.stats.requests.values().sum::<u64>() < requests,
            }
    }
}

/// Slots of the per-key budget the lower-priority features leave free, so the
/// next run's SIEM queries do not wait behind them: a sixth of the limit.
pub fn reserve_for_siem(limit: u32) -> u32 {
    (limit / 6).max(1)
}

/// Requests per run the SOC feeds (incident reports, escalations) may send
/// before the SIEM queries: a fifth of the per-minute limit, at least two
/// (one page of changes and one count).
pub fn soc_share(limit: u32) -> u64 {
    u64::from((limit / 5).max(2))
}

/// The budget rule: a lower-priority feature starts only when the free slots
/// cover its estimated requests plus the SIEM reserve. `Err` says why not.
pub fn budget_allows(free: u32, limit: u32, need: u32) -> std::result::Result<Pacing, String> {
    let reserve = reserve_for_siem(limit);
    if free >= need.saturating_add(reserve) {
        Ok(Pacing::Spare { reserve })
    } else {
        Err(format!("needs about {need} request(s) plus {reserve} kept for SIEM, {free} of {limit} free in the last minute"))
    }
}

/// How one REST feature (orgs, agents, incidents) fared in a run that sent
/// requests for it; feeds `huntress.api.can_connect`.
#[derive(Debug, Clone)]
pub struct Health {
    pub feature: Feature,
    pub status: Status,
    pub message: Option<String>,
    /// The errors of its run, for `huntress.siem.errors`: the one that made
    /// it fail, and those it recovered from (an expired page token...).
    pub errors: Vec<ErrorKind>,
}

impl Health {
    pub fn ok(feature: Feature) -> Self {
        Health { feature, status: Status::Ok, message: None, errors: Vec::new() }
    }

    pub fn warning(feature: Feature, message: String) -> Self {
        Health { feature, status: Status::Warning, message: Some(message), errors: Vec::new() }
    }

    pub fn failed(feature: Feature, status: Status, message: String, error: &HuntressError) -> Self {
        Health { feature, status, message: Some(message), errors: vec![error.kind()] }
    }

    /// The same, with the errors of the run it recovered from counted too.
    pub fn with_recovered(mut self, recovered: &[ErrorKind]) -> Self {
        self.errors.extend_from_slice(recovered);
        self
    }
}

/// `huntress.api.can_connect`: CRITICAL when every REST feature that ran failed,
/// WARNING when some failed or came back incomplete, OK otherwise; `None` when
/// no REST feature sent a request this run.
pub fn api_status(healths: &[Health]) -> Option<(Status, Option<String>)> {
    if healths.is_empty() {
        return None;
    }
    let messages: Vec<String> = healths.iter().filter_map(|h| h.message.as_ref().map(|m| format!("{}: {m}", h.feature.tag()))).collect();
    let message = (!messages.is_empty()).then(|| messages.join("; "));
    let status = if healths.iter().all(|h| h.status == Status::Critical) {
        Status::Critical
    } else if healths.iter().any(|h| h.status != Status::Ok) {
        Status::Warning
    } else {
        Status::Ok
    };
    Some((status, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{page, FakeSource};
    use serde_json::json;

    fn collect(source: &mut FakeSource, max_pages: u32) -> (Vec<Map<String, Value>>, Listing) {
        let mut all = Vec::new();
        let listing = list_pages(source, "/v1/items", "items", &[("status", "sent".into())], max_pages, |items| {
            all.extend(items);
            true
        });
        (all, listing)
    }

    #[test]
    fn follows_tokens_with_limit_500_and_no_page_parameter() {
        let mut source = FakeSource::new(vec![page("items", 0..500, Some("t1")), page("items", 500..1000, Some("t2")), page("items", 1000..1200, None)]);
        let (items, listing) = collect(&mut source, 10);
        assert_eq!(items.len(), 1200);
        assert!(matches!(listing.end, End::Complete));
        assert_eq!(listing.pages, 3);
        let queries: Vec<_> = source.requests.iter().map(|(_, q)| q.clone()).collect();
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(queries[0], vec![pair("status", "sent"), pair("limit", "500")]);
        assert_eq!(queries[2], vec![pair("status", "sent"), pair("limit", "500"), pair("page_token", "t2")]);
        assert!(queries.iter().flatten().all(|(k, _)| k != "page"));
    }

    #[test]
    fn stops_on_a_repeated_token() {
        // A server that ignores the token hands back the same page and token forever.
        let looping: Vec<_> = (0..50).map(|_| page("items", 0..500, Some("same"))).collect();
        let mut source = FakeSource::new(looping);
        let (_, listing) = collect(&mut source, 1000);
        assert!(matches!(listing.end, End::RepeatedToken));
        assert_eq!(listing.pages, 2);
    }

    #[test]
    fn stops_at_the_page_cap() {
        let endless: Vec<_> = (0..50).map(|i| page("items", 0..1, Some(&format!("t{i}")))).collect();
        let mut source = FakeSource::new(endless);
        let (items, listing) = collect(&mut source, 5);
        assert!(matches!(listing.end, End::PageCap));
        assert_eq!((listing.pages, items.len(), source.requests.len()), (5, 5, 5));
        assert!(listing.end.shortfall("agents", 5, "metrics.agents.max_pages").unwrap().contains("metrics.agents.max_pages"));
    }

    #[test]
    fn stops_when_the_budget_is_spent_and_when_told() {
        let mut source = FakeSource::new((0..5).map(|i| page("items", 0..1, Some(&format!("t{i}")))).collect());
        source.budget = 2;
        let (_, listing) = collect(&mut source, 10);
        assert!(matches!(listing.end, End::Budget));
        assert_eq!(listing.pages, 2);

        let mut source = FakeSource::new((0..5).map(|i| page("items", 0..1, Some(&format!("t{i}")))).collect());
        let listing = list_pages(&mut source, "/v1/items", "items", &[], 10, |_| false);
        assert!(matches!(listing.end, End::Enough) && listing.end.is_complete());
        assert_eq!(listing.pages, 1);
    }

    #[test]
    fn a_listing_from_a_token_says_where_the_next_one_goes_on() {
        let mut source = FakeSource::new((0..5).map(|i| page("items", 0..1, Some(&format!("t{i}")))).collect());
        let listing = list_pages_from(&mut source, "/v1/items", "items", &[], 2, Some("saved".into()), |_| true);
        assert!(matches!(listing.end, End::PageCap));
        assert_eq!(listing.next.as_deref(), Some("t1"));
        assert_eq!(source.requests[0].1.last(), Some(&("page_token".to_string(), "saved".to_string())));

        let mut source = FakeSource::new(vec![page("items", 0..1, Some("t0")), Err(HuntressError::api(ErrorKind::ServerError, "503"))]);
        let listing = list_pages_from(&mut source, "/v1/items", "items", &[], 5, None, |_| true);
        assert!(matches!(listing.end, End::Failed(_)));
        assert_eq!((listing.pages, listing.next.as_deref()), (1, Some("t0")), "the page that failed is read again");

        let mut source = FakeSource::new(vec![page("items", 0..1, None)]);
        let listing = list_pages_from(&mut source, "/v1/items", "items", &[], 5, Some("saved".into()), |_| true);
        assert!(matches!(listing.end, End::Complete) && listing.next.is_none());
    }

    #[test]
    fn malformed_pages_fail_the_listing() {
        for bad in [json!([]), json!({"items": "oops", "pagination": []}), json!({"pagination": {}}), json!({"items": [1]}), json!({"items": [], "pagination": {"next_page_token": 3}})] {
            let mut source = FakeSource::new(vec![Ok(bad)]);
            let (_, listing) = collect(&mut source, 10);
            match listing.end {
                End::Failed(error) => assert_eq!(error.kind(), ErrorKind::MalformedResponse),
                other => panic!("expected a failure, got {other:?}"),
            }
        }
    }

    #[test]
    fn api_status_is_critical_only_when_everything_that_ran_failed() {
        let down = HuntressError::api(ErrorKind::Network, "down");
        assert!(api_status(&[]).is_none());
        assert_eq!(api_status(&[Health::ok(Feature::Orgs), Health::ok(Feature::Agents)]), Some((Status::Ok, None)));
        let mixed = api_status(&[Health::ok(Feature::Orgs), Health::failed(Feature::Agents, Status::Critical, "down".into(), &down)]).unwrap();
        assert_eq!(mixed, (Status::Warning, Some("agents: down".into())));
        let all = api_status(&[Health::failed(Feature::Incidents, Status::Critical, "x".into(), &down)]).unwrap();
        assert_eq!(all.0, Status::Critical);
        let stale = api_status(&[Health::warning(Feature::Orgs, "using the cached directory".into())]).unwrap();
        assert_eq!(stale.0, Status::Warning);
    }

    #[test]
    fn lower_priority_features_need_their_estimate_plus_a_reserve() {
        assert_eq!(reserve_for_siem(60), 10);
        assert_eq!(reserve_for_siem(5), 1);
        assert_eq!(budget_allows(60, 60, 20), Ok(Pacing::Spare { reserve: 10 }));
        assert_eq!(budget_allows(30, 60, 20), Ok(Pacing::Spare { reserve: 10 }));
        assert!(budget_allows(29, 60, 20).unwrap_err().contains("29 of 60 free"));
    }
}
