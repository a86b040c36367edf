"""Self-tests of the local simulators (run: python -m pytest tests/sim -q)."""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import socket
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import pytest

from . import fixtures
from .huntress_sim import HuntressSimulator
from .intake_sink import EchoServer, IntakeSink
from .timeutil import format_ns, parse_iso_ns

START = datetime(2026, 5, 27, 14, 0, 0, tzinfo=timezone.utc)
END = START + timedelta(minutes=15)
RS, RE = "2026-05-27T14:00:00Z", "2026-05-27T14:15:00Z"


class FakeClock:
    def __init__(self, t: float = 1_800_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float):
        self.t += s


# ---------------------------------------------------------------------------
# tiny HTTP client (one connection per call)
# ---------------------------------------------------------------------------

class Resp:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)


def request(base_url, method, path, body=None, headers=None, timeout=10):
    u = urlsplit(base_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
    finally:
        conn.close()


def basic(user="demo-key", pw="demo-secret"):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode(),
            "Content-Type": "application/json"}


def siem(sim, esql="FROM logs | KEEP uuid, @timestamp", rs=RS, re_=RE, token=None, auth=None):
    body = {"esql": esql, "range_start": rs, "range_end": re_}
    if token is not None:
        body["page_token"] = token
    return request(sim.url, "POST", "/v1/siem/query", body, basic() if auth is None else auth)


def get(sim, path, auth=None):
    return request(sim.url, "GET", path, None, basic() if auth is None else auth)


def paginate(sim, esql="FROM logs | KEEP uuid, @timestamp", rs=RS, re_=RE):
    rows, token, pages = [], None, 0
    while True:
        r = siem(sim, esql, rs, re_, token)
        assert r.status == 200, r.body
        res = r.json()
        rows += res["logs"]
        pages += 1
        token = res["pagination"].get("next_page_token")
        if not token:
            assert res["pagination"] == {}
            return rows, pages


@pytest.fixture
def rows():
    return fixtures.siem_events(1000, START, END, seed=7)


@pytest.fixture
def sim():
    with HuntressSimulator(page_size=200, rate_limit=10_000) as s:
        yield s


# ---------------------------------------------------------------------------
# SIEM query
# ---------------------------------------------------------------------------

def test_pagination_returns_every_row_exactly_once(sim, rows):
    sim.add_events(rows)
    got, pages = paginate(sim)
    assert pages == 5
    uuids = [r["uuid"] for r in got]
    assert len(uuids) == len(set(uuids)) == 1000
    assert set(uuids) == {r["uuid"] for r in rows}
    # order is deterministic but not chronological
    stamps = [r["@timestamp"] for r in got]
    assert stamps != sorted(stamps)
    again, _ = paginate(sim)
    assert [r["uuid"] for r in again] == uuids


def test_range_is_half_open_with_nanoseconds(sim):
    base = "2026-05-27T14:00:00.123456789Z"
    sim.add_events([
        {"uuid": "at-start", "@timestamp": base},
        {"uuid": "before-end", "@timestamp": "2026-05-27T14:05:00.123456788Z"},
        {"uuid": "at-end", "@timestamp": "2026-05-27T14:05:00.123456789Z"},
        {"uuid": "offset-form", "@timestamp": "2026-05-27T16:01:00.5+02:00"},  # 14:01:00.5Z
        {"uuid": "too-early", "@timestamp": "2026-05-27T14:00:00.123456788Z"},
    ])
    got, _ = paginate(sim, rs=base, re_="2026-05-27T14:05:00.123456789+00:00")
    assert {r["uuid"] for r in got} == {"at-start", "before-end", "offset-form"}


def test_keep_and_no_keep_shapes(sim, rows):
    sim.add_events(rows[:50])
    r = siem(sim, "FROM logs")
    assert r.status == 200
    for row in r.json()["logs"]:
        assert set(row) == {"uuid", "organization_id"}
    org_split = {row["uuid"]: row["organization_id"] for row in r.json()["logs"]}
    flat = {x["uuid"]: x.get("organization_id") for x in rows[:50]}
    assert org_split == flat  # rows that carry organization.id come back with null

    r = siem(sim, "from LOGS | KEEP uuid, event.*, host.hostname, organization.id | SORT @timestamp DESC")
    logs = r.json()["logs"]
    for row in logs:
        assert row["uuid"]
        assert all(k in ("uuid", "host.hostname", "organization.id") or k.startswith("event.") for k in row)
        assert "event.provider" in row and "message" not in row
    assert list(logs[0])[0] == "uuid"  # KEEP order is kept

    sim.null_columns = False
    r = siem(sim, "FROM logs | KEEP uuid, host.hostname")
    assert any("host.hostname" not in row for row in r.json()["logs"])  # GenericHEC rows have none


def test_where_filters_and_limit(sim, rows):
    sim.add_events(rows)
    got, _ = paginate(sim, 'FROM logs | WHERE event.provider == "GenericHEC" | KEEP uuid, event.provider, message')
    expected = [r for r in rows if r["event.provider"] == "GenericHEC"]
    assert len(got) == len(expected) > 0
    assert all(json.loads(r["message"])["eventVersion"] for r in got)

    q = ('FROM logs | WHERE event.provider == "Microsoft-Windows-Security-Auditing" AND event.code != "4624" '
         'and event.outcome == "failure" | KEEP uuid, event.code')
    got, _ = paginate(sim, q)
    exp = {r["uuid"] for r in rows if r["event.provider"] == "Microsoft-Windows-Security-Auditing"
           and r.get("event.code") != "4624" and r.get("event.outcome") == "failure"}
    assert {r["uuid"] for r in got} == exp and exp

    multi, _ = paginate(sim, 'FROM logs\n| WHERE\n  event.provider == "GenericHEC"\n| KEEP\n  uuid, `@timestamp`')
    assert {r["uuid"] for r in multi} == {r["uuid"] for r in expected}
    assert set(multi[0]) == {"uuid", "@timestamp"}

    got, pages = paginate(sim, "FROM logs | KEEP uuid | LIMIT 450")
    assert len(got) == 450 and pages == 3
    assert len({r["uuid"] for r in got}) == 450

    for bad in ['FROM logs | WHERE NOT event.code == "1"',
                'FROM logs | WHERE event.code == "1" OR',
                'FROM logs | WHERE (event.code == "1"',
                'FROM logs | WHERE event.code == "1")',
                'FROM logs | WHERE event.code > 3',
                'FROM logs | WHERE @timestamp > "2026-05-27T14:00:00Z"',
                'FROM logs | WHERE @timestamp >= TO_DATETIME("2026-05-27T14:00:00")',
                'FROM logs | WHERE @timestamp >= TO_DATETIME(1)',
                'FROM logs | WHERE @timestamp >= NOW()',
                'FROM logs | WHERE starts_with(message, "x")',
                "FROM logs | FROBNICATE",
                "FROM logs | KEEP uuid | WHERE host.hostname == \"x\"",
                "SELECT * FROM logs",
                "FROM logsx",
                "FROM other"]:
        r = siem(sim, bad)
        assert r.status == 422, (bad, r.status, r.body)
        assert r.json()["message"]


def test_request_validation(sim):
    assert siem(sim, rs=None).status == 400
    r = request(sim.url, "POST", "/v1/siem/query", {"esql": "FROM logs", "range_start": RS}, basic())
    assert r.status == 400
    assert siem(sim, rs="yesterday").status == 400
    assert siem(sim, rs="2026-05-27T14:00:00").status == 400  # no time zone
    r = siem(sim, rs=RE, re_=RS)
    assert r.status == 400 and "range_start" in r.json()["message"]
    assert siem(sim, rs=RS, re_=RS).status == 200  # empty range is fine
    r = request(sim.url, "POST", "/v1/siem/query", b"{not json", basic())
    assert r.status == 400
    assert siem(sim, token="garbage").status == 400
    assert get(sim, "/v1/siem/query").status == 405
    assert get(sim, "/v1/nope").status == 404
    sim.siem_enabled = False
    assert siem(sim).status == 404


def test_page_token_must_match_query_and_range(sim, rows):
    sim.add_events(rows)
    tok = siem(sim).json()["pagination"]["next_page_token"]
    for kwargs in ({"rs": "2026-05-27T14:00:01Z"}, {"re_": "2026-05-27T14:14:00Z"},
                   {"rs": "2026-05-27T14:00:00+00:00"},  # same instant, different text
                   {"esql": "FROM logs | KEEP uuid"}):
        r = siem(sim, token=tok, **kwargs)
        assert r.status == 400
        assert "page_token does not match the query range" in r.json()["message"]
    assert siem(sim, token=tok).status == 200


def test_page_token_ttl_and_expire_tokens(rows):
    clock = FakeClock()
    with HuntressSimulator(token_ttl_seconds=30, clock=clock, rate_limit=1000) as sim:
        sim.add_events(rows)
        tok = siem(sim).json()["pagination"]["next_page_token"]
        clock.advance(29)
        r = siem(sim, token=tok)
        assert r.status == 200
        tok2 = r.json()["pagination"]["next_page_token"]
        clock.advance(31)
        r = siem(sim, token=tok2)
        assert r.status == 400 and "expired" in r.json()["message"]
        tok3 = siem(sim).json()["pagination"]["next_page_token"]
        sim.expire_tokens()
        r = siem(sim, token=tok3)
        assert r.status == 400 and "expired" in r.json()["message"]
        assert siem(sim).status == 200  # new queries still work


def test_visibility_delay_and_keyset_stability(rows):
    clock = FakeClock(parse_iso_ns("2026-05-27T14:20:00Z") / 1e9)
    with HuntressSimulator(clock=clock, page_size=100, rate_limit=1000) as sim:
        early, late = rows[:600], rows[600:]
        sim.add_events(early)
        sim.add_events(late, visible_at=clock() + 120)
        r = siem(sim)
        first = r.json()["logs"]
        tok = r.json()["pagination"]["next_page_token"]
        clock.advance(121)  # the late rows become visible mid-pagination
        got = list(first)
        while tok:
            res = siem(sim, token=tok).json()
            got += res["logs"]
            tok = res["pagination"].get("next_page_token")
        ids = [r["uuid"] for r in got]
        assert len(ids) == len(set(ids))  # nothing shifted into a second appearance
        assert {r["uuid"] for r in early} <= set(ids)
        assert 600 < len(ids) < 1000  # late rows sorting before the cursor were missed
        full, _ = paginate(sim)
        assert len(full) == 1000
        # per-row _visible_at
        sim.clear_events()
        sim.add_events([{"uuid": "x", "@timestamp": RS, "_visible_at": clock() + 5}])
        assert siem(sim).json()["logs"] == []
        clock.advance(5)
        assert [r["uuid"] for r in siem(sim).json()["logs"]] == ["x"]
        assert "_visible_at" not in siem(sim, "FROM logs | KEEP *").json()["logs"][0]


# ---------------------------------------------------------------------------
# WHERE with OR, parentheses and time comparisons; STATS per time bucket
# ---------------------------------------------------------------------------

REREAD = ' | WHERE (@timestamp >= TO_DATETIME("{}") AND @timestamp < TO_DATETIME("{}"))' \
         ' OR (@timestamp >= TO_DATETIME("{}") AND @timestamp < TO_DATETIME("{}"))'
STATS_2S = " | STATS rows = COUNT(*) BY bucket = BUCKET(@timestamp, 2 seconds)"


def uuids(sim, esql, rs=RS, re_=RE):
    got, _ = paginate(sim, esql, rs, re_)
    ids = [r["uuid"] for r in got]
    assert len(ids) == len(set(ids))
    return set(ids)


def ts_ns(row):
    return parse_iso_ns(row["@timestamp"])


def test_where_or_and_parentheses(sim, rows):
    sim.add_events(rows)
    provider, code, outcome = "event.provider", "event.code", "event.outcome"
    q = ('FROM logs | WHERE (event.provider == "GenericHEC" or event.code == "4624") '
         'AND event.outcome != "failure" | KEEP uuid')
    exp = {r["uuid"] for r in rows if (r[provider] == "GenericHEC" or r.get(code) == "4624")
           and r.get(outcome) is not None and r.get(outcome) != "failure"}
    assert uuids(sim, q) == exp and exp
    # AND binds tighter than OR, as in ES|QL
    q = 'FROM logs | WHERE event.provider == "GenericHEC" OR event.code == "4624" AND event.outcome == "failure"'
    exp = {r["uuid"] for r in rows if r[provider] == "GenericHEC"
           or (r.get(code) == "4624" and r.get(outcome) == "failure")}
    assert uuids(sim, q) == exp
    q = 'FROM logs | WHERE ((`event.code` == "4624") OR (event.code == "4625"))'
    assert uuids(sim, q) == {r["uuid"] for r in rows if r.get(code) in ("4624", "4625")}


def test_where_time_comparisons_at_nanosecond_precision(sim):
    at = "2026-05-27T14:00:00.123456789Z"
    sim.add_events([
        {"uuid": "before", "@timestamp": "2026-05-27T14:00:00.123456788Z"},
        {"uuid": "at", "@timestamp": at},
        {"uuid": "after", "@timestamp": "2026-05-27T16:00:00.12345679+02:00"},  # 14:00:00.123456790Z
    ])
    expected = {">=": {"at", "after"}, ">": {"after"}, "<": {"before"}, "<=": {"before", "at"},
                "==": {"at"}, "!=": {"before", "after"}}
    for op, exp in expected.items():
        assert uuids(sim, f'FROM logs | WHERE @timestamp {op} TO_DATETIME("{at}")') == exp, op
    # the same instant written with an offset
    assert uuids(sim, 'FROM logs | WHERE `@timestamp` >= TO_DATETIME("2026-05-27T15:00:00.123456789+01:00")') \
        == {"at", "after"}


def test_reread_of_several_ranges_as_the_core_sends_it(sim, rows):
    sim.add_events(rows)
    user = 'FROM logs | WHERE event.provider != "GenericHEC" | KEEP uuid, @timestamp, event.provider'
    a1, b1 = "2026-05-27T14:01:00.000Z", "2026-05-27T14:06:30.5Z"
    a2, b2 = "2026-05-27T14:10:00.000000001Z", "2026-05-27T14:14:00.000Z"
    esql = user + REREAD.format(a1, b1, a2, b2)
    spans = [(parse_iso_ns(a1), parse_iso_ns(b1)), (parse_iso_ns(a2), parse_iso_ns(b2))]
    exp = {r["uuid"] for r in rows if r["event.provider"] != "GenericHEC"
           and any(lo <= ts_ns(r) < hi for lo, hi in spans)}
    got, pages = paginate(sim, esql)
    assert {r["uuid"] for r in got} == exp and pages > 1  # paged with tokens like any query
    assert len(got) == len(exp)
    # the range of the request still applies
    assert uuids(sim, esql, re_="2026-05-27T14:05:00Z") == {
        u for u in exp if parse_iso_ns(next(r for r in rows if r["uuid"] == u)["@timestamp"])
        < parse_iso_ns("2026-05-27T14:05:00Z")}
    # a KEEP without @timestamp makes it an unknown column, like any other field
    r = siem(sim, "FROM logs | KEEP uuid" + REREAD.format(a1, b1, a2, b2))
    assert r.status == 422 and "Unknown column [@timestamp]" in r.json()["message"]


def stats_rows(sim, esql, rs=RS, re_=RE):
    got, pages = paginate(sim, esql, rs, re_)
    return got, pages


def expected_buckets(rows, span_s, keep=lambda r: True):
    counts = {}
    span = span_s * 1_000_000_000
    for r in rows:
        if keep(r):
            b = ts_ns(r) // span * span
            counts[b] = counts.get(b, 0) + 1
    return [{"rows": counts[b], "bucket": format_ns(b, 3)} for b in sorted(counts)]


def test_stats_count_by_bucket_as_the_core_sends_it(sim, rows):
    sim.add_events(rows)
    user = 'FROM logs | WHERE event.provider != "GenericHEC" | KEEP uuid, @timestamp'
    got, pages = stats_rows(sim, user + STATS_2S)
    exp = expected_buckets(rows, 2, lambda r: r["event.provider"] != "GenericHEC")
    assert got == exp and pages == (len(exp) + 199) // 200 > 1
    assert all(list(row) == ["rows", "bucket"] for row in got)
    assert got[0]["bucket"].endswith(".000Z") and len(got[0]["bucket"]) == 24
    assert sum(row["rows"] for row in got) == sum(1 for r in rows if r["event.provider"] != "GenericHEC")
    # after a re-read WHERE, and within the request's range only
    a1, b1 = "2026-05-27T14:01:00.000Z", "2026-05-27T14:02:00.000Z"
    a2, b2 = "2026-05-27T14:03:00.000Z", "2026-05-27T14:03:01.000Z"
    esql = user + REREAD.format(a1, b1, a2, b2) + STATS_2S
    spans = [(parse_iso_ns(a1), parse_iso_ns(b1)), (parse_iso_ns(a2), parse_iso_ns(b2))]
    keep = (lambda r: r["event.provider"] != "GenericHEC" and any(lo <= ts_ns(r) < hi for lo, hi in spans)
            and ts_ns(r) < parse_iso_ns("2026-05-27T14:01:30Z"))
    got, _ = stats_rows(sim, esql, re_="2026-05-27T14:01:30Z")
    assert got == expected_buckets(rows, 2, keep) and got


def test_stats_spans_names_limit_and_tokens(sim):
    base = parse_iso_ns("2026-05-27T14:00:00Z")
    sim.add_events([{"uuid": f"e{i}", "@timestamp": format_ns(base + i * 1_700_000_000 + 1)} for i in range(500)])
    for text, span_s in (("1 second", 1), ("5 minutes", 300), ("1 hour", 3600), ("2 hours", 7200)):
        got, _ = stats_rows(sim, f"FROM logs | STATS rows = COUNT(*) BY bucket = BUCKET(@timestamp, {text})")
        rows = [{"@timestamp": format_ns(base + i * 1_700_000_000 + 1)} for i in range(500)]
        assert got == expected_buckets(rows, span_s), text
    # unnamed columns are named after their expression
    r = siem(sim, "FROM logs | STATS COUNT(*) BY BUCKET(@timestamp, 1 hour)")
    assert r.status == 200
    assert r.json()["logs"][0] == {"COUNT(*)": 500, "BUCKET(@timestamp, 1 hour)": "2026-05-27T14:00:00.000Z"}
    # without BY, one row
    assert siem(sim, "FROM logs | STATS n = COUNT(*)").json()["logs"] == [{"n": 500}]
    # LIMIT after STATS caps buckets; before it, the rows counted
    got, pages = stats_rows(sim, "FROM logs | STATS c = COUNT(*) BY b = BUCKET(@timestamp, 1 second) | LIMIT 250")
    assert len(got) == 250 and pages == 2
    got, _ = stats_rows(sim, "FROM logs | LIMIT 10 | STATS c = COUNT(*) BY b = BUCKET(@timestamp, 1 hour)")
    assert sum(row["c"] for row in got) == 10
    # a STATS page token is bound to its query like any other
    q = "FROM logs | STATS c = COUNT(*) BY b = BUCKET(@timestamp, 1 second)"
    tok = siem(sim, q).json()["pagination"]["next_page_token"]
    assert siem(sim, q + " | LIMIT 1000", token=tok).status == 400
    assert siem(sim, "FROM logs | KEEP uuid", token=tok).status == 400
    assert siem(sim, q, token=tok).status == 200
    for bad in ["FROM logs | STATS c = COUNT(*) BY b = BUCKET(@timestamp, 2 seconds) | SORT b",
                "FROM logs | STATS c = COUNT(*) BY b = BUCKET(@timestamp, 2 seconds) | WHERE c > 1",
                "FROM logs | STATS c = MAX(event.code)",
                "FROM logs | STATS c = COUNT(*) BY host.hostname",
                "FROM logs | STATS c = COUNT(*) BY b = BUCKET(event.created, 2 seconds)",
                "FROM logs | STATS c = COUNT(*) BY b = BUCKET(@timestamp, 2 fortnights)",
                "FROM logs | STATS c = COUNT(*) BY b = BUCKET(@timestamp, 0 seconds)",
                "FROM logs | KEEP uuid | STATS c = COUNT(*) BY b = BUCKET(@timestamp, 2 seconds)"]:
        r = siem(sim, bad)
        assert r.status == 422, (bad, r.status, r.body)
        assert r.json()["message"]


def test_stats_counts_only_rows_visible_at_query_time():
    clock = FakeClock(parse_iso_ns("2026-05-27T14:20:00Z") / 1e9)
    with HuntressSimulator(clock=clock, rate_limit=1000) as sim:
        sim.add_events([{"uuid": "now", "@timestamp": "2026-05-27T14:00:00.5Z"},
                        {"uuid": "soon", "@timestamp": "2026-05-27T14:00:01Z", "_visible_at": clock() + 30},
                        {"uuid": "later", "@timestamp": "2026-05-27T14:00:03Z", "_visible_at": clock() + 90}])
        q = "FROM logs" + STATS_2S
        assert siem(sim, q).json()["logs"] == [{"rows": 1, "bucket": "2026-05-27T14:00:00.000Z"}]
        clock.advance(30)
        assert siem(sim, q).json()["logs"] == [{"rows": 2, "bucket": "2026-05-27T14:00:00.000Z"}]
        clock.advance(60)
        assert siem(sim, q).json()["logs"] == [{"rows": 2, "bucket": "2026-05-27T14:00:00.000Z"},
                                               {"rows": 1, "bucket": "2026-05-27T14:00:02.000Z"}]


def test_switches_refuse_stats_and_time_filters(sim, rows):
    sim.add_events(rows[:50])
    stats_q = 'FROM logs | KEEP uuid, @timestamp' + STATS_2S
    reread_q = 'FROM logs | KEEP uuid, @timestamp' + REREAD.format(RS, RE, RS, RE)
    assert siem(sim, stats_q).status == siem(sim, reread_q).status == 200
    sim.stats_refused = True
    r = siem(sim, stats_q)
    assert r.status == 422
    assert r.json()["message"] == "invalid ES|QL: line 1:37: STATS is not allowed in SIEM queries"
    assert siem(sim, reread_q).status == 200
    assert siem(sim, "FROM logs | KEEP uuid").status == 200
    sim.stats_refused = False
    sim.time_filters_refused = True
    r = siem(sim, reread_q)
    assert r.status == 422 and "WHERE on [@timestamp] is not allowed" in r.json()["message"]
    assert "line 1:37:" in r.json()["message"]
    assert siem(sim, 'FROM logs\n| WHERE `@timestamp` == "x"').json()["message"].startswith(
        "invalid ES|QL: line 2:3: WHERE on [@timestamp]")
    assert siem(sim, stats_q).status == 200  # BUCKET(@timestamp) is no WHERE
    assert siem(sim, 'FROM logs | WHERE event.code == "4624" OR event.code == "4625"').status == 200
    assert [e["kind"] for e in sim.siem_log[-4:]] == ["reread", "reread", "stats", "query"]
    assert [e["status"] for e in sim.siem_log[-4:]] == [422, 422, 200, 200]


def test_siem_log_records_each_query_and_its_kind(sim, rows):
    sim.add_events(rows[:10])
    siem(sim, "FROM logs | KEEP uuid")
    siem(sim, "FROM logs" + STATS_2S)
    siem(sim, "FROM logs" + REREAD.format(RS, RE, RS, RE))
    siem(sim, "FROM logs | FROBNICATE")
    request(sim.url, "POST", "/v1/siem/query", b"{not json", basic())
    get(sim, "/v1/account")
    assert [(e["kind"], e["status"]) for e in sim.siem_log] == [
        ("query", 200), ("stats", 200), ("reread", 200), ("invalid", 422), ("invalid", 400)]
    assert sim.siem_log[1]["esql"] == "FROM logs" + STATS_2S
    sim.reset_stats()
    assert sim.siem_log == []


# ---------------------------------------------------------------------------
# auth and rate limit
# ---------------------------------------------------------------------------

def test_auth_required(sim):
    for auth in ({"Content-Type": "application/json"}, basic("demo-key", "wrong"), basic("other", "demo-secret"),
                 {"Authorization": "Bearer demo-key"}, {"Authorization": "Basic !!!"}):
        r = siem(sim, auth=auth)
        assert r.status == 401
        assert r.json()["error"]
        assert r.headers["x-huntress-api-call-limit"] == "10000"
        assert "x-huntress-api-call-remaining" in r.headers
    assert get(sim, "/v1/account", auth={}).status == 401
    assert sim.stats["unauthorized"] == 6


def test_sliding_window_matches_huntress_example():
    """The documented example, scaled to a limit of 5: requests 1 at T0, 2 at
    T5, 3..5 at T10; request 6 at T55 -> 429; at T61 -> OK; another at T61 ->
    429 until T65 has passed."""
    clock = FakeClock(1000.0)
    with HuntressSimulator(rate_limit=5, rate_window_seconds=60, clock=clock) as sim:
        def call():
            r = get(sim, "/v1/account")
            return r.status, int(r.headers["x-huntress-api-call-remaining"]), r.headers["x-huntress-api-call-limit"]

        assert call() == (200, 4, "5")
        clock.advance(5)
        assert call() == (200, 3, "5")
        clock.advance(5)
        assert [call() for _ in range(3)] == [(200, 2, "5"), (200, 1, "5"), (200, 0, "5")]
        clock.advance(45)  # T55
        assert call() == (429, 0, "5")
        assert call() == (429, 0, "5")  # 429s are not counted
        clock.advance(6)  # T61: request at T0 has left the window
        assert call() == (200, 0, "5")
        assert call()[0] == 429
        clock.advance(4)  # T65: the T5 request is exactly 60 s old, still counted
        assert call()[0] == 429
        clock.advance(0.001)
        assert call() == (200, 0, "5")
        assert sim.stats["rate_limited"] == 4 and sim.stats["throttled"] == 4
        assert sim.remaining() == 0
        clock.advance(61)
        assert sim.remaining() == 5


def test_injected_429_has_headers_and_does_not_count():
    clock = FakeClock()
    with HuntressSimulator(rate_limit=3, clock=clock) as sim:
        sim.inject("status:429", count=2, path="/v1/account")
        for _ in range(2):
            r = get(sim, "/v1/account")
            assert r.status == 429
            assert r.headers["x-huntress-api-call-remaining"] == "3"
        assert [get(sim, "/v1/account").status for _ in range(4)] == [200, 200, 200, 429]
        assert sim.stats["throttled"] == 3 and sim.stats["rate_limited"] == 1
        assert sim.stats["faults"] == {"status:429": 2}


def test_stats_and_request_log(sim, rows):
    sim.add_events(rows[:10])
    siem(sim)
    get(sim, "/v1/agents")
    get(sim, "/v1/agents")
    assert sim.stats["total"] == 3
    assert sim.stats["by_path"] == {"/v1/siem/query": 1, "/v1/agents": 2}
    assert sim.stats["by_status"] == {200: 3}
    assert [(m, p, s) for _, m, p, s in sim.request_log] == [
        ("POST", "/v1/siem/query", 200), ("GET", "/v1/agents", 200), ("GET", "/v1/agents", 200)]
    assert sim.request_log[0][0] <= sim.request_log[-1][0]
    sim.reset_stats()
    assert sim.stats["total"] == 0 and sim.request_log == []


# ---------------------------------------------------------------------------
# fault injection (Huntress)
# ---------------------------------------------------------------------------

def test_status_faults_are_fifo_and_path_scoped(sim, rows):
    sim.add_events(rows[:10])
    sim.inject("status:503")
    sim.inject("status:500", path="/v1/agents")
    sim.inject("status:408")
    assert get(sim, "/v1/account").status == 200  # no fault for this path
    r = siem(sim)
    assert r.status == 503 and r.headers["x-huntress-api-call-remaining"]
    assert siem(sim).status == 408
    assert siem(sim).status == 200
    assert get(sim, "/v1/agents").status == 500
    sim.inject("status:502", count=2, path="*")
    assert get(sim, "/v1/account").status == 502
    assert siem(sim).status == 502
    assert sim.pending_faults() == []
    assert sim.stats["faults"] == {"status:503": 1, "status:408": 1, "status:500": 1, "status:502": 2}
    with pytest.raises(ValueError):
        sim.inject("explode")


def test_malformed_wrong_types_and_huge_field(sim, rows):
    sim.add_events(rows[:10])
    sim.inject("malformed_json")
    r = siem(sim)
    assert r.status == 200
    with pytest.raises(ValueError):
        r.json()
    sim.inject("wrong_types")
    assert siem(sim).json() == {"logs": "oops", "pagination": []}
    sim.inject("huge_field")
    res = siem(sim, "FROM logs | KEEP uuid, message").json()
    assert len(res["logs"][0]["message"]) == 2 * 1024 * 1024
    assert len(res["logs"]) == 10
    sim.inject("wrong_types", path="/v1/agents")
    assert get(sim, "/v1/agents").json() == {"agents": "oops", "pagination": []}


def test_truncated_body_reset_and_slow(sim, rows):
    sim.add_events(rows[:50])
    sim.inject("truncated_body")
    with pytest.raises(http.client.IncompleteRead):
        siem(sim)
    sim.inject("reset")
    with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
        siem(sim)
    sim.inject("slow:0.3")
    t0 = time.monotonic()
    r = siem(sim)
    assert r.status == 200 and time.monotonic() - t0 >= 0.3
    sim.inject("slow:5")
    with pytest.raises((socket.timeout, TimeoutError)):
        siem_timeout = request(sim.url, "POST", "/v1/siem/query",
                               {"esql": "FROM logs", "range_start": RS, "range_end": RE}, basic(), timeout=0.2)
        del siem_timeout
    assert sim.stats["faults"] == {"truncated_body": 1, "reset": 1, "slow": 2}
    assert [s for *_, s in sim.request_log[:2]] == [200, 0]
    assert siem(sim).status == 200  # server still healthy


def read_head_and_some(base_url, path, body, headers, limit=1 << 20):
    """Status, headers and at most `limit` body bytes; the connection is then dropped."""
    u = urlsplit(base_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        conn.request("POST", path, body=json.dumps(body).encode(), headers=headers)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read(limit)
    finally:
        conn.close()


def test_hostile_faults(sim, rows):
    sim.add_events(rows[:10])
    query = {"esql": "FROM logs", "range_start": RS, "range_end": RE}
    sim.inject("huge_body")
    status, headers, body = read_head_and_some(sim.url, "/v1/siem/query", query, basic())
    assert status == 200 and headers["content-length"] == "1500000000" and len(body) == 1 << 20
    sim.inject("endless_body:502")
    status, headers, body = read_head_and_some(sim.url, "/v1/siem/query", query, basic())
    assert status == 502 and headers["transfer-encoding"] == "chunked" and len(body) == 1 << 20
    sim.inject("hang")
    with pytest.raises((socket.timeout, TimeoutError)):
        request(sim.url, "POST", "/v1/siem/query", query, basic(), timeout=0.3)
    sim.inject("rate_headers:abc,-5")
    r = siem(sim)
    assert r.status == 200 and r.headers["x-huntress-api-call-limit"] == "abc"
    assert r.headers["x-huntress-api-call-remaining"] == "-5"
    sim.inject("echo_headers")
    r = siem(sim)
    assert r.status == 400
    echoed = r.json()
    assert echoed["credentials"] == "demo-key:demo-secret"
    assert echoed["token"] == basic()["Authorization"][6:]
    assert "Authorization: Basic " in echoed["raw"]
    for bad in ("rate_headers:5", "echo_headers:99", "hang:1"):
        with pytest.raises(ValueError):
            sim.inject(bad)
    assert siem(sim).status == 200  # server still healthy


def test_sink_hostile_faults():
    logs = [{"uuid": "a", "message": "m"}]
    headers = {"Content-Type": "application/json", "DD-API-KEY": "dd-demo-key"}
    with IntakeSink() as sink:
        sink.inject("huge_body:503")
        status, answer, body = read_head_and_some(sink.base_url, "/api/v2/logs", logs, headers)
        assert status == 503 and answer["content-length"] == "1500000000"
        sink.inject("endless_body")
        status, answer, body = read_head_and_some(sink.base_url, "/api/v2/logs", logs, headers)
        assert status == 202 and len(body) == 1 << 20
        sink.inject("echo_headers:500")
        r = post_logs(sink, logs)
        assert r.status == 500 and r.json()["dd"] == "dd-demo-key"
        sink.inject("hang")
        with pytest.raises((socket.timeout, TimeoutError)):
            request(sink.base_url, "POST", "/api/v2/logs", logs, headers, timeout=0.3)
        assert sink.logs == []
        assert [q["fault"] for q in sink.requests] == ["huge_body:503", "endless_body", "echo_headers:500", "hang"]


# ---------------------------------------------------------------------------
# REST endpoints
# ---------------------------------------------------------------------------

@pytest.fixture
def rest_sim():
    now = datetime(2026, 5, 27, 14, 0, tzinfo=timezone.utc)
    orgs = fixtures.organizations(4, seed=3)
    ags = fixtures.agents(57, orgs, seed=3, now=now)
    incs = fixtures.incident_reports(23, orgs, ags, seed=3, now=now)
    with HuntressSimulator(rate_limit=10_000) as s:
        s.set_organizations(orgs)
        s.set_agents(ags)
        s.set_incident_reports(incs)
        s.set_signals(fixtures.signals(5, orgs, ags, seed=3, now=now))
        s.set_escalations(fixtures.escalations(31, orgs, seed=3, now=now))
        yield s, orgs, ags, incs


def _walk(sim, path, plural):
    items, url, pages = [], path, 0
    while True:
        r = get(sim, url)
        assert r.status == 200, r.body
        res = r.json()
        items += res[plural]
        pages += 1
        pg = res["pagination"]
        if "next_page_token" not in pg:
            assert pg == {}
            return items, pages
        assert pg["next_page_url"].startswith(sim.url)
        assert "page_token=" + pg["next_page_token"] in pg["next_page_url"]
        u = urlsplit(pg["next_page_url"])
        url = f"{u.path}?{u.query}"


def test_account_and_list_pagination(rest_sim):
    sim, orgs, ags, incs = rest_sim
    acct = get(sim, "/v1/account").json()["account"]
    assert {"id", "name", "subdomain", "status"} <= set(acct)
    got, pages = _walk(sim, "/v1/agents?limit=10", "agents")
    assert pages == 6 and len(got) == 57
    assert [a["id"] for a in got] == sorted((a["id"] for a in ags), reverse=True)  # default id desc
    first = get(sim, "/v1/agents").json()
    assert len(first["agents"]) == 10  # default limit
    assert get(sim, "/v1/agents?page=2").json() == first  # `page` is ignored
    got, _ = _walk(sim, "/v1/organizations?limit=500", "organizations")
    assert len(got) == 4
    assert get(sim, "/v1/agents?limit=501").status == 400
    assert get(sim, "/v1/agents?limit=0").status == 400
    assert get(sim, "/v1/agents?sort_field=hostname").status == 400
    assert get(sim, "/v1/agents?page_token=nonsense").status == 400
    tok = first["pagination"]["next_page_token"]
    assert get(sim, f"/v1/agents?page_token={tok}&sort_direction=asc").status == 400
    one = ags[5]
    assert get(sim, f"/v1/agents/{one['id']}").json() == {"agent": one}
    assert get(sim, "/v1/agents/1").status == 404
    sig, _ = _walk(sim, "/v1/signals?limit=2", "signals")
    assert len(sig) == 5


def test_list_tokens_expire_on_demand_and_reports_can_be_added(rest_sim):
    sim, orgs, ags, incs = rest_sim
    first = get(sim, "/v1/incident_reports?limit=5").json()
    tok = first["pagination"]["next_page_token"]
    assert get(sim, f"/v1/incident_reports?limit=5&page_token={tok}").status == 200
    sim.expire_list_tokens()
    refused = get(sim, f"/v1/incident_reports?limit=5&page_token={tok}")
    assert refused.status == 400 and "expired" in refused.json()["message"]
    fresh = get(sim, "/v1/incident_reports?limit=5").json()["pagination"]["next_page_token"]
    assert get(sim, f"/v1/incident_reports?limit=5&page_token={fresh}").status == 200
    more = fixtures.incident_reports(3, orgs, ags, seed=99)
    for i, report in enumerate(more):
        report["id"] = 900_000 + i
    sim.add_incident_reports(more)
    got, _ = _walk(sim, "/v1/incident_reports?limit=500", "incident_reports")
    assert len(got) == 26 and {r["id"] for r in more} <= {r["id"] for r in got}


def test_list_filters_and_sorting(rest_sim):
    sim, orgs, ags, incs = rest_sim
    org = orgs[1]["id"]
    got, _ = _walk(sim, f"/v1/agents?organization_id={org}&limit=7&sort_field=updated_at&sort_direction=asc", "agents")
    assert {a["id"] for a in got} == {a["id"] for a in ags if a["organization_id"] == org}
    assert [a["updated_at"] for a in got] == sorted(a["updated_at"] for a in got)
    got, _ = _walk(sim, "/v1/incident_reports?sort_field=updated_at&sort_direction=desc&limit=5", "incident_reports")
    assert len(got) == 23
    assert [i["updated_at"] for i in got] == sorted((i["updated_at"] for i in got), reverse=True)
    got, _ = _walk(sim, "/v1/incident_reports?severity=critical&limit=500", "incident_reports")
    assert all(i["severity"] == "critical" for i in got)
    # an update moves the report to the top of updated_at desc
    target = min(incs, key=lambda i: i["updated_at"])
    sim.update_incident_report(target["id"], status="closed", updated_at="2030-01-01T00:00:00Z")
    top = get(sim, "/v1/incident_reports?sort_field=updated_at&sort_direction=desc&limit=1").json()
    assert top["incident_reports"][0]["id"] == target["id"]
    assert top["incident_reports"][0]["status"] == "closed"
    assert top["incident_reports"][0]["closed_at"]
    with pytest.raises(KeyError):
        sim.update_incident_report(-1, status="closed")


def test_escalations_page_sort_and_filter_as_the_spec_says(rest_sim):
    sim, orgs, _ags, _incs = rest_sim
    everything, pages = _walk(sim, "/v1/escalations?limit=4", "escalations")
    assert len(everything) == 31 and pages == 8
    assert {"id", "severity", "status", "type", "subtype", "subject", "organizations", "created_at",
            "updated_at", "resolved_at", "due_at"} <= set(everything[0])
    got, _ = _walk(sim, "/v1/escalations?sort_field=updated_at&sort_direction=desc&limit=5", "escalations")
    assert [e["updated_at"] for e in got] == sorted((e["updated_at"] for e in everything), reverse=True)
    got, _ = _walk(sim, "/v1/escalations?sort_field=due_at&sort_direction=asc&limit=500", "escalations")
    assert [e["due_at"] for e in got] == sorted(e["due_at"] for e in everything)
    for severity in ("low", "high", "critical"):
        got, _ = _walk(sim, f"/v1/escalations?severity={severity}&limit=500", "escalations")
        assert {e["id"] for e in got} == {e["id"] for e in everything if e["severity"] == severity}
    open_, _ = _walk(sim, "/v1/escalations?status=open&limit=500", "escalations")
    assert {e["id"] for e in open_} == {e["id"] for e in everything if e["status"] != "resolved"}
    resolved, _ = _walk(sim, "/v1/escalations?status=resolved&limit=500", "escalations")
    assert len(open_) + len(resolved) == 31
    overdue, _ = _walk(sim, "/v1/escalations?status=overdue&limit=500", "escalations")
    now_iso = datetime.fromtimestamp(sim.clock(), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert {e["id"] for e in overdue} == {e["id"] for e in open_ if e["due_at"] < now_iso}
    org = orgs[2]["id"]
    got, _ = _walk(sim, f"/v1/escalations?organization_id={org}&limit=500", "escalations")
    assert got and all(e["organizations"][0]["id"] == org for e in got)
    subtype, _ = _walk(sim, "/v1/escalations?subtype=BR&limit=500", "escalations")
    assert all(e["subtype"] == "BR" for e in subtype)
    for bad in ("status=sent", "severity=medium", "sort_field=status", "organization_id=x", "limit=501"):
        assert get(sim, f"/v1/escalations?{bad}").status == 400, bad
    target = everything[-1]
    sim.update_escalation(target["id"], status="resolved", updated_at="2030-01-01T00:00:00Z")
    top = get(sim, "/v1/escalations?sort_field=updated_at&sort_direction=desc&limit=1").json()["escalations"][0]
    assert (top["id"], top["status"]) == (target["id"], "resolved") and top["resolved_at"]
    assert get(sim, f"/v1/escalations/{target['id']}").json()["escalation"]["status"] == "resolved"


def test_signals_filter_by_investigated_at_types_statuses_and_entity(rest_sim):
    sim, orgs, ags, _incs = rest_sim
    now = datetime(2026, 5, 27, 14, 0, tzinfo=timezone.utc)
    sim.set_signals(fixtures.signals(40, orgs, ags, seed=9, now=now))
    everything, _ = _walk(sim, "/v1/signals?limit=500", "signals")
    assert len(everything) == 40
    cut = sorted(s["investigated_at"] for s in everything)[20]
    got, _ = _walk(sim, f"/v1/signals?investigated_at_min={cut}&limit=7&sort_field=id&sort_direction=asc", "signals")
    assert {s["id"] for s in got} == {s["id"] for s in everything if s["investigated_at"] >= cut}
    assert [s["id"] for s in got] == sorted(s["id"] for s in got)
    got, _ = _walk(sim, f"/v1/signals?investigated_at_max={cut}&limit=500", "signals")
    assert {s["id"] for s in got} == {s["id"] for s in everything if s["investigated_at"] <= cut}
    got, _ = _walk(sim, "/v1/signals?types=SIEM,Antivirus&statuses=closed&limit=500", "signals")
    assert {s["id"] for s in got} == {s["id"] for s in everything
                                      if s["type"] in ("SIEM", "Antivirus") and s["status"] == "closed"}
    agent = everything[0]["entity"]["id"]
    got, _ = _walk(sim, f"/v1/signals?entity_type=agent&entity_id={agent}&limit=500", "signals")
    assert got and all(s["entity"]["id"] == agent for s in got)
    org = everything[0]["organization"]["id"]
    got, _ = _walk(sim, f"/v1/signals?organization_id={org}&limit=500", "signals")
    assert {s["id"] for s in got} == {s["id"] for s in everything if s["organization"]["id"] == org}
    for bad in ("investigated_at_min=yesterday", "types=Bogus", "statuses=open", "entity_type=laptop",
                "sort_field=investigated_at"):
        assert get(sim, f"/v1/signals?{bad}").status == 400, bad


# ---------------------------------------------------------------------------
# intake sink
# ---------------------------------------------------------------------------

def post_logs(sink, payload, key="dd-demo-key", gz=False, raw=None, extra=None):
    body = raw if raw is not None else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", "DD-API-KEY": key}
    if gz:
        body = gzip.compress(body) if raw is None else body
        headers["Content-Encoding"] = "gzip"
    headers.update(extra or {})
    return request(sink.base_url, "POST", "/api/v2/logs", body, headers)


def now_ms():
    return int(time.time() * 1000)


@pytest.fixture
def sink():
    with IntakeSink(max_logs=10, max_body_bytes=64 * 1024, max_log_bytes=4096) as s:
        yield s


def test_sink_accepts_plain_and_gzip(sink):
    logs = [{"uuid": f"u{i}", "message": "hello", "date": now_ms()} for i in range(3)]
    r = post_logs(sink, logs)
    assert r.status == 202 and r.json() == {}
    r = post_logs(sink, logs[:2], gz=True)
    assert r.status == 202
    r = post_logs(sink, {"uuid": "single", "message": "one object"})
    assert r.status == 202
    assert sink.uuids() == {"u0": 2, "u1": 2, "u2": 1, "single": 1}
    assert [(q["status"], q["n_logs"], q["compressed"]) for q in sink.requests] == [
        (202, 3, False), (202, 2, True), (202, 1, False)]
    assert sink.requests[1]["raw_bytes"] < len(json.dumps(logs[:2]))
    hdrs = sink.requests[0]["headers"]
    assert hdrs["dd-api-key"] == "<redacted>" and hdrs.get("content-type") == "application/json"
    assert hdrs["DD-API-KEY"] == "<redacted>" and "dd-demo-key" not in json.dumps(sink.requests)
    assert sink.url.endswith("/api/v2/logs")
    sink.clear()
    assert sink.logs == [] and sink.requests == [] and not sink.uuids()


def test_sink_rejections(sink):
    ok = [{"message": "x"}]
    assert post_logs(sink, ok, key="wrong").status == 403
    assert post_logs(sink, ok, key="").status == 403
    assert post_logs(sink, None, raw=b"not gzip at all", gz=True).status == 400
    assert post_logs(sink, None, raw=gzip.compress(b'[{"a":1}]')[:-6], gz=True).status == 400
    assert post_logs(sink, None, raw=b"{broken").status == 400
    assert post_logs(sink, [1, 2]).status == 400
    assert post_logs(sink, "a string").status == 400
    assert post_logs(sink, [{"message": "x"}] * 11).status == 413
    big = [{"message": "y" * 7000}] * 10  # 70 KB > 64 KB
    assert post_logs(sink, big).status == 413
    assert post_logs(sink, big, gz=True).status == 413  # limit is on uncompressed size
    bomb = gzip.compress(b" " * (10 * 1024 * 1024))
    assert post_logs(sink, None, raw=bomb, gz=True).status == 413
    assert sink.logs == []
    assert request(sink.base_url, "GET", "/api/v2/logs").status == 405
    assert request(sink.base_url, "POST", "/v1/input", b"[]").status == 404


def test_sink_decodes_zstd_and_checks_the_header_against_the_body(sink):
    import zstandard

    logs = [{"uuid": f"z{i}", "message": "zstd", "date": now_ms()} for i in range(4)]
    body = zstandard.ZstdCompressor(level=1).compress(json.dumps(logs).encode())
    r = post_logs(sink, None, raw=body, extra={"Content-Encoding": "zstd"})
    assert r.status == 202
    assert sink.uuids() == {f"z{i}": 1 for i in range(4)}
    assert sink.requests[-1]["encoding"] == "zstd" and sink.requests[-1]["compressed"]
    # Each label must match the body: zstd sent as gzip, gzip as zstd, either unlabelled.
    gz = gzip.compress(json.dumps(logs).encode())
    mislabelled = [(body, "gzip"), (gz, "zstd"), (body, None), (gz, None), (b"[]", "zstd")]
    for raw, label in mislabelled:
        r = post_logs(sink, None, raw=raw, extra={"Content-Encoding": label} if label else None)
        assert r.status == 400, (raw[:4], label)
    assert post_logs(sink, None, raw=body[:-4], extra={"Content-Encoding": "zstd"}).status == 400
    bomb = zstandard.ZstdCompressor(level=3).compress(b" " * (10 * 1024 * 1024))
    assert post_logs(sink, None, raw=bomb, extra={"Content-Encoding": "zstd"}).status == 413
    streamed = zstandard.ZstdCompressor().compressobj()
    no_size = streamed.compress(b" " * (10 * 1024 * 1024)) + streamed.flush()
    assert post_logs(sink, None, raw=no_size, extra={"Content-Encoding": "zstd"}).status == 413
    assert len(sink.logs) == 4


def test_sink_truncates_big_logs(sink):
    r = post_logs(sink, [{"uuid": "big", "message": "z" * 10_000, "service": "s"}, {"uuid": "small"}])
    assert r.status == 202
    assert sink.truncated == 1
    stored = {log["uuid"]: log for log in sink.logs}
    assert len(json.dumps(stored["big"])) <= 4096 + 64
    assert stored["big"]["_sink_truncated"] is True and stored["big"]["service"] == "s"
    assert "_sink_truncated" not in stored["small"]


def test_sink_records_when_each_log_was_accepted():
    clock = FakeClock(parse_iso_ns("2026-05-27T14:00:00Z") / 1e9)
    with IntakeSink(clock=clock) as sink:
        ms = int(clock() * 1000)
        assert post_logs(sink, [{"uuid": "a", "date": ms}, {"uuid": "old", "date": ms - 19 * 3600_000}]).status == 202
        clock.advance(7.5)
        sink.inject("accept_then_fail")
        assert post_logs(sink, [{"uuid": "b", "date": ms}, {"uuid": "a", "date": ms}, {"no": "uuid"}]).status == 500
        sink.inject("status:503")
        assert post_logs(sink, [{"uuid": "c", "date": ms}]).status == 503  # nothing stored, nothing accepted
        start = clock() - 7.5
        assert sink.accepted_at == [start, start + 7.5, start + 7.5, start + 7.5]  # the stale log is not stored
        assert sink.first_accepted() == {"a": start, "b": start + 7.5}
        sink.clear()
        assert sink.accepted_at == [] and sink.first_accepted() == {}


def test_sink_drops_logs_outside_18h_2h_window():
    clock = FakeClock(parse_iso_ns("2026-05-27T14:00:00Z") / 1e9)
    with IntakeSink(clock=clock) as sink:
        ms = int(clock() * 1000)
        logs = [
            {"uuid": "fresh-ms", "date": ms - 3600_000},
            {"uuid": "old-ms", "date": ms - 18 * 3600_000 - 1000},
            {"uuid": "edge-old", "date": ms - 18 * 3600_000 + 1000},
            {"uuid": "future", "timestamp": "2026-05-27T16:00:01Z"},
            {"uuid": "near-future", "timestamp": "2026-05-27T15:59:00.123456789Z"},
            {"uuid": "old-iso", "@timestamp": "2026-05-26T19:59:00Z"},
            {"uuid": "no-date"},
            {"uuid": "ecs-wins", "@timestamp": "2026-05-20T00:00:00Z", "date": ms},
        ]
        r = post_logs(sink, logs)
        assert r.status == 202  # dropped silently, after the 202
        assert set(sink.uuids()) == {"fresh-ms", "edge-old", "near-future", "no-date"}
        assert sink.dropped_stale == 4
        assert sink.requests[0]["dropped_stale"] == 4


def test_sink_faults(sink):
    logs = [{"uuid": "a", "message": "m"}]
    for code in (500, 503, 408, 429, 400, 413, 401, 403):
        sink.inject(f"status:{code}")
        assert post_logs(sink, logs).status == code
    assert sink.logs == []
    sink.inject("accept_then_fail")
    assert post_logs(sink, logs).status == 500
    assert sink.uuids() == {"a": 1}  # stored although the client saw a 500
    assert post_logs(sink, logs).status == 202
    assert sink.uuids() == {"a": 2}  # a retry duplicates
    sink.inject("reset")
    with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
        post_logs(sink, logs)
    sink.inject("slow:0.2")
    t0 = time.monotonic()
    assert post_logs(sink, logs).status == 202
    assert time.monotonic() - t0 >= 0.2
    assert len(sink.logs) == 3
    with pytest.raises(ValueError):
        sink.inject("redirect")
    assert [q["fault"] for q in sink.requests][-4:] == ["accept_then_fail", None, "reset", "slow:0.2"]


def test_sink_redirect_and_echo_server(sink):
    with EchoServer() as echo:
        sink.inject(f"redirect:{echo.base_url}/api/v2/logs")
        r = post_logs(sink, [{"uuid": "r"}])
        assert r.status == 307 and r.headers["location"] == f"{echo.base_url}/api/v2/logs"
        assert sink.logs == []
        # a client that follows the redirect without the key ...
        r = request(echo.base_url, "POST", "/api/v2/logs", b"[]", {"Content-Type": "application/json"})
        assert r.status == 202
        assert not echo.saw_header("DD-API-KEY")
        # ... versus one that leaks it
        request(echo.base_url, "POST", "/api/v2/logs", b"[]", {"dd-api-key": "secret"})
        assert echo.saw_header("DD-API-KEY")
        assert echo.requests[-1]["headers"]["dd-api-key"] == "secret"


def test_stop_closes_keepalive_connections():
    sim = HuntressSimulator().start()
    u = urlsplit(sim.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
    conn.request("GET", "/v1/account", headers=basic())
    r = conn.getresponse()
    r.read()
    assert r.status == 200 and not r.will_close
    sim.stop()
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        conn.request("GET", "/v1/account", headers=basic())
        conn.getresponse()
    conn.close()


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------

def test_fixtures_are_deterministic_and_realistic():
    a = fixtures.siem_events(500, START, END, seed=1)
    assert a == fixtures.siem_events(500, START, END, seed=1)
    assert a != fixtures.siem_events(500, START, END, seed=2)
    providers = {r["event.provider"] for r in a}
    assert providers == {"Microsoft-Windows-Security-Auditing", "Syslog-SentinelOne", "GenericHEC"}
    nested = sum("organization.id" in r for r in a)
    assert 50 < nested < 150 and all(("organization_id" in r) != ("organization.id" in r) for r in a)
    lo, hi = parse_iso_ns(RS), parse_iso_ns(RE)
    for r in a:
        ts = parse_iso_ns(r["@timestamp"])
        assert lo <= ts < hi and len(r["@timestamp"]) == 30  # nanoseconds
        assert format_ns(ts) == r["@timestamp"]
        size = len(json.dumps(r))
        assert 400 < size < 2100
        if r["event.provider"] == "GenericHEC":
            ct = json.loads(r["message"])
            assert ct["eventSource"].endswith("amazonaws.com") and "host.hostname" not in r
        elif r["event.provider"] == "Microsoft-Windows-Security-Auditing":
            assert r["event.code"] in {"4624", "4625", "4672", "4688"}
            assert r["event.outcome"] in {"success", "failure"} and r["host.os.type"] == "windows"
        else:
            assert r["threat.technique.id"].startswith("T")
    assert any(r.get("userIdentity", None) is None and '"type":"Root"' in r.get("message", "") for r in a)

    now = datetime(2026, 5, 27, tzinfo=timezone.utc)
    orgs = fixtures.organizations(3, seed=4)
    ags = fixtures.agents(40, orgs, seed=4, now=now)
    incs = fixtures.incident_reports(10, orgs, ags, seed=4, now=now)
    assert ags == fixtures.agents(40, orgs, seed=4, now=now)
    assert {a["platform"] for a in ags} <= {"windows", "darwin", "linux"}
    for ag in ags:
        for k in ("id", "organization_id", "account_id", "hostname", "os", "version", "edr_version",
                  "defender_status", "firewall_status", "tamper_protection_configured",
                  "tamper_protection_actual", "last_callback_at"):
            assert k in ag
    for inc in incs:
        assert inc["severity"] in {"low", "high", "critical"}
        assert inc["status"] in {"sent", "closed", "dismissed"}
        assert (inc["closed_at"] is not None) == (inc["status"] == "closed")
        assert inc["agent_id"] in {a["id"] for a in ags}
        for k in ("indicator_types", "platform", "subject", "summary", "body", "sent_at", "updated_at"):
            assert k in inc
