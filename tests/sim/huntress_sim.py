"""In-process simulator of the Huntress REST + SIEM query API.

Usage::

    with HuntressSimulator(page_size=200) as sim:
        sim.add_events(rows)
        ...  # point the client at sim.url with api_key/secret_key

See tests/sim/README.md for the full behaviour description.
"""

from __future__ import annotations

import base64
import bisect
import copy
import hashlib
import hmac
import json
import os
import threading
import time
from collections import OrderedDict, deque
from urllib.parse import parse_qsl, urlencode, urlsplit

from . import esql as _esql
from ._http import HUGE_BODY_BYTES, FaultQueue, ServerBase, monotonic, parse_fault, validate_fault
from .timeutil import format_ns, iso_seconds, parse_iso_ns

SIEM_PATH = "/v1/siem/query"
HUGE_FIELD_BYTES = 2 * 1024 * 1024

FAULT_KINDS = ("status", "malformed_json", "truncated_body", "reset", "slow",
               "wrong_types", "huge_field", "hang", "huge_body", "endless_body",
               "echo_headers", "rate_headers")

# path -> (plural key, singular key, allowed sort fields, filters)
# filter spec: name -> (kind, getter) where kind is "int", "str", "csv",
# "in_list", "any_org" (an id among the item's `organizations`), "min"/"max"
# (an ISO-8601 bound, inclusive, on a timestamp), or a tuple of allowed values
# (an enum; anything else is a 400). Escalations' `status` filter is special:
# `open` (not resolved), `overdue` (not resolved, `due_at` passed), `resolved`.
LIST_RESOURCES = {
    "/v1/organizations": (
        "organizations", "organization",
        ("id", "created_at", "updated_at", "name", "key"),
        {"name": ("str", "name"), "key": ("str", "key")},
    ),
    "/v1/agents": (
        "agents", "agent",
        ("id", "created_at", "updated_at", "last_callback_at"),
        {"organization_id": ("int", "organization_id"), "platform": ("str", "platform"),
         "hostname": ("str", "hostname"), "os": ("str", "os"), "version": ("str", "version")},
    ),
    "/v1/incident_reports": (
        "incident_reports", "incident_report",
        ("id", "created_at", "updated_at", "sent_at", "closed_at", "status_updated_at"),
        {"organization_id": ("int", "organization_id"), "agent_id": ("int", "agent_id"),
         "status": ("str", "status"), "severity": ("str", "severity"),
         "platform": ("str", "platform"), "indicator_type": ("in_list", "indicator_types")},
    ),
    "/v1/signals": (
        "signals", "signal",
        ("id", "created_at", "updated_at", "status"),
        {"organization_id": ("int", "organization.id"), "statuses": ("csv", "status"),
         "types": ("csv", "type"),
         "entity_type": (("user_entity", "source", "mailbox", "service_principal", "agent", "identity"),
                         "entity.type"),
         "entity_id": ("str", "entity.id"),
         "investigated_at_min": ("min", "investigated_at"),
         "investigated_at_max": ("max", "investigated_at")},
    ),
    "/v1/escalations": (
        "escalations", "escalation",
        ("id", "severity", "due_at", "created_at", "updated_at"),
        {"status": (("open", "overdue", "resolved"), "escalation_status"),
         "severity": (("low", "high", "critical"), "severity"),
         "subtype": ("str", "subtype"),
         "organization_id": ("any_org", "organizations")},
    ),
}

SIGNAL_TYPES = ("Antivirus", "Process Insights", "Managed ITDR", "Footholds", "MDE Detections", "SIEM",
                "Ransomware Canaries", "Favicon Detections", "Attack Disruptions", "App Control")


def _parse_iso(text):
    from datetime import datetime, timezone
    if not isinstance(text, str) or not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)

DEFAULT_ACCOUNT = {
    "id": 5,
    "name": "Demo MSP",
    "subdomain": "demomsp",
    "status": "enabled",
    "support_type": "huntress_supported",
    "neighborhood_watch": {"edr": 10, "ispm": 10, "itdr": 10, "sat": 10, "siem": 10},
    "billing_address": None,
    "shipping_address": None,
}


class _ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _org_ids(item: dict, orgs: list) -> set:
    """The ids of the organizations an item belongs to, however it names them:
    `organization_id`, `organization.id` (flat or nested), `organization.name`,
    or `organizations` as objects, ids or names. The API filters on the
    organization itself, not on how the item spells it."""
    by_name = {str(o.get("name", "")).strip().lower(): o["id"] for o in orgs}
    refs = [_dig(item, "organization_id"), _dig(item, "organization.id"), _dig(item, "organization.name")]
    refs += item.get("organizations") or []
    ids = set()
    for ref in refs:
        if isinstance(ref, dict):
            ref = ref.get("id") if ref.get("id") is not None else ref.get("name")
        if isinstance(ref, bool) or ref is None:
            continue
        if isinstance(ref, int) or (isinstance(ref, str) and ref.strip().isdigit()):
            ids.add(int(ref))
        elif isinstance(ref, str) and ref.strip().lower() in by_name:
            ids.add(by_name[ref.strip().lower()])
    return ids


def _dig(item: dict, dotted: str):
    """item['a.b'] if present, else item['a']['b']."""
    if dotted in item:
        return item[dotted]
    cur = item
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _sort_value(v):
    return (0, 0) if v is None else (1, v)


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class _Event:
    __slots__ = ("key", "ts", "visible_at", "row", "seq")

    def __init__(self, key, ts, visible_at, row, seq):
        self.key = key
        self.ts = ts
        self.visible_at = visible_at
        self.row = row
        self.seq = seq


class HuntressSimulator(ServerBase):
    """Local fake of https://api.huntress.io (see module docstring)."""

    def __init__(self, api_key: str = "demo-key", secret_key: str = "demo-secret",
                 rate_limit: int = 60, rate_window_seconds: float = 60.0,
                 page_size: int = 200, token_ttl_seconds: float | None = None,
                 clock=time.time, host: str = "127.0.0.1", port: int = 0):
        super().__init__(host, port)
        self.api_key = api_key
        self.secret_key = secret_key
        self.rate_limit = int(rate_limit)
        self.rate_window_seconds = float(rate_window_seconds)
        self.page_size = int(page_size)
        self.token_ttl_seconds = token_ttl_seconds
        self.clock = clock
        # Behaviour switches (plain attributes, may be changed at any time).
        self.siem_enabled = True      # False -> POST /v1/siem/query answers 404
        self.null_columns = True      # KEEP columns missing in a row come back as null
        self.siem_raw_page = None     # bytes -> every SIEM query answers 200 with exactly these bytes
        self.repeat_page_tokens = False  # True -> a SIEM page read with a token hands the same token out again
        self.retention_seconds = None  # a number -> a SIEM range starting earlier than that far back answers 400
        self.ignore_sort = False      # True -> REST lists come back by id ascending, whatever sort_field/sort_direction ask
        self.rest_raw_pages = {}      # path -> bytes: that REST list answers 200 with exactly these bytes
        self.stats_refused = False    # True -> a SIEM query with STATS answers 422, as an API that does not allow it
        self.time_filters_refused = False  # True -> a SIEM query with a WHERE on @timestamp answers 422
        self._lock = threading.RLock()
        self._secret = os.urandom(16)
        self._token_generation = 0
        self._list_token_generation = 0
        self._windows: dict[str, deque] = {}
        self._faults = FaultQueue(lambda kind: validate_fault(kind, FAULT_KINDS))
        # SIEM store
        self._events: list[_Event] = []      # sorted by key (sha256(uuid), seq)
        self._keys: list = []
        self._by_ts: list[_Event] = []       # sorted by (ts, seq)
        self._ts_keys: list = []
        self._fields: set[str] = set()
        self._seq = 0
        self._version = 0
        self._cand_cache: OrderedDict = OrderedDict()
        # REST fixtures
        self._account = copy.deepcopy(DEFAULT_ACCOUNT)
        self._lists: dict[str, list] = {p: [] for p in LIST_RESOURCES}
        # Observability
        self.stats: dict = {}
        self.request_log: list = []
        self.siem_log: list = []
        self.reset_stats()

    # ------------------------------------------------------------------
    # public helpers
    # ------------------------------------------------------------------
    @property
    def credentials(self):
        return (self.api_key, self.secret_key)

    def reset_stats(self):
        with self._lock:
            self.stats.clear()
            self.stats.update({
                "total": 0,           # every request received (any status)
                "by_path": {},        # path -> requests
                "by_status": {},      # status -> responses (0 = reset, no response)
                "throttled": 0,       # all 429 responses (rate limit + injected)
                "rate_limited": 0,    # 429s from the sliding window only
                "unauthorized": 0,    # 401s
                "faults": {},         # fault kind -> times applied
            })
            self.request_log.clear()
            self.siem_log.clear()

    def reset_rate_limit(self):
        with self._lock:
            self._windows.clear()

    def remaining(self, api_key: str | None = None) -> int:
        """Requests still allowed right now for api_key (does not consume)."""
        with self._lock:
            win = self._window(api_key or self.api_key, self.clock())
            return max(0, self.rate_limit - len(win))

    # faults ----------------------------------------------------------------
    def inject(self, kind: str, count: int = 1, path: str | None = SIEM_PATH):
        """Queue `count` faults of `kind` for the next requests whose path matches
        `path` (exact or fnmatch pattern; None or "*" = any path)."""
        self._faults.add(kind, count, path)

    def pending_faults(self):
        return self._faults.pending()

    def clear_faults(self):
        self._faults.clear()

    # SIEM store ------------------------------------------------------------
    def add_events(self, rows, visible_at: float | None = None) -> int:
        """Store rows. Each needs "uuid" and "@timestamp" (ISO 8601 with zone).
        A row is hidden until clock() >= visible_at (argument, or per-row key
        "_visible_at", which is stripped)."""
        new = []
        fields = set()
        with self._lock:
            for raw in rows:
                row = dict(raw)
                vis = row.pop("_visible_at", visible_at)
                if "uuid" not in row or "@timestamp" not in row:
                    raise ValueError("every row needs 'uuid' and '@timestamp'")
                ts = parse_iso_ns(row["@timestamp"])
                self._seq += 1
                digest = hashlib.sha256(str(row["uuid"]).encode()).hexdigest()
                new.append(_Event((digest, self._seq), ts, vis, row, self._seq))
                fields.update(row.keys())
            if not new:
                return 0
            self._fields |= fields
            self._events.extend(new)
            self._events.sort(key=lambda e: e.key)
            self._keys = [e.key for e in self._events]
            self._by_ts.extend(new)
            self._by_ts.sort(key=lambda e: (e.ts, e.seq))
            self._ts_keys = [e.ts for e in self._by_ts]
            self._version += 1
            self._cand_cache.clear()
        return len(new)

    def clear_events(self):
        with self._lock:
            self._events, self._keys, self._by_ts, self._ts_keys = [], [], [], []
            self._fields = set()
            self._version += 1
            self._cand_cache.clear()

    @property
    def event_count(self) -> int:
        return len(self._events)

    def expire_tokens(self):
        """Invalidate every SIEM page_token issued so far."""
        with self._lock:
            self._token_generation += 1

    def expire_list_tokens(self):
        """Invalidate every REST list page_token issued so far: each answers 400."""
        with self._lock:
            self._list_token_generation += 1

    # REST fixtures -----------------------------------------------------------
    def set_account(self, account: dict):
        with self._lock:
            self._account = copy.deepcopy(account)

    def set_organizations(self, items):
        self._set_list("/v1/organizations", items)

    def set_agents(self, items):
        self._set_list("/v1/agents", items)

    def set_incident_reports(self, items):
        self._set_list("/v1/incident_reports", items)

    def add_incident_reports(self, items):
        with self._lock:
            self._lists["/v1/incident_reports"].extend(copy.deepcopy(i) for i in items)

    def set_signals(self, items):
        self._set_list("/v1/signals", items)

    def add_signals(self, items):
        with self._lock:
            self._lists["/v1/signals"].extend(copy.deepcopy(i) for i in items)

    def set_escalations(self, items):
        self._set_list("/v1/escalations", items)

    def add_escalations(self, items):
        with self._lock:
            self._lists["/v1/escalations"].extend(copy.deepcopy(i) for i in items)

    def update_escalation(self, escalation_id, **fields):
        """Update one escalation in place. `updated_at` is set to now unless
        given; `resolved_at` too when it becomes resolved."""
        with self._lock:
            for item in self._lists["/v1/escalations"]:
                if item.get("id") == escalation_id:
                    now = iso_seconds_from_epoch(self.clock())
                    if fields.get("status") == "resolved" and item.get("status") != "resolved":
                        fields.setdefault("resolved_at", now)
                    fields.setdefault("updated_at", now)
                    item.update(fields)
                    return copy.deepcopy(item)
        raise KeyError(f"no escalation with id {escalation_id!r}")

    def _set_list(self, path, items):
        with self._lock:
            self._lists[path] = [copy.deepcopy(i) for i in items]

    def update_incident_report(self, report_id, **fields):
        """Update one incident report in place. `updated_at` is set to now
        unless given; `status_updated_at` too when `status` changes."""
        with self._lock:
            for item in self._lists["/v1/incident_reports"]:
                if item.get("id") == report_id:
                    now = iso_seconds_from_epoch(self.clock())
                    if "status" in fields and fields["status"] != item.get("status"):
                        fields.setdefault("status_updated_at", now)
                        if fields["status"] == "closed":
                            fields.setdefault("closed_at", now)
                    fields.setdefault("updated_at", now)
                    item.update(fields)
                    return copy.deepcopy(item)
        raise KeyError(f"no incident report with id {report_id!r}")

    # ------------------------------------------------------------------
    # request handling
    # ------------------------------------------------------------------
    def _window(self, key: str, now: float) -> deque:
        win = self._windows.setdefault(key, deque())
        # A request at t counts against any later request at t' with t' - t <= window.
        while win and now - win[0] > self.rate_window_seconds:
            win.popleft()
        return win

    def _auth_ok(self, h) -> str | None:
        header = h.headers.get("Authorization") or ""
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic" or not value:
            return None
        try:
            user, sep, pw = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except Exception:
            return None
        if not sep:
            return None
        if hmac.compare_digest(user, self.api_key) and hmac.compare_digest(pw, self.secret_key):
            return user
        return None

    def _handle(self, h):
        t_mono = monotonic()
        path = urlsplit(h.path).path
        body = h.read_body()
        now = self.clock()
        fault = None
        with self._lock:
            self.stats["total"] += 1
            self.stats["by_path"][path] = self.stats["by_path"].get(path, 0) + 1
            key = self._auth_ok(h)
            if key is None:
                win = self._window(self.api_key, now)
                status_hint = 401
            else:
                win = self._window(key, now)
                if len(win) >= self.rate_limit:
                    status_hint = 429
                else:
                    win.append(now)
                    status_hint = None
                    fault = self._faults.take(path)
                    if fault == "status:429":
                        win.pop()  # injected 429s do not count either
                    if fault:
                        name = "slow" if fault.startswith("slow:") else fault
                        self.stats["faults"][name] = self.stats["faults"].get(name, 0) + 1
            remaining = max(0, self.rate_limit - len(win))
        headers = {
            "x-huntress-api-call-limit": str(self.rate_limit),
            "x-huntress-api-call-remaining": str(remaining),
        }
        if fault and fault.startswith("rate_headers:"):
            limit_text, _, remaining_text = parse_fault(fault)[1].partition(",")
            headers = {"x-huntress-api-call-limit": limit_text, "x-huntress-api-call-remaining": remaining_text}
            fault = None
        if status_hint == 401:
            reply = ("json", 401, {"status": 401, "error": "Unauthorized",
                                   "message": "invalid or missing API credentials"})
        elif status_hint == 429:
            reply = ("json", 429, {"status": 429, "error": "Too Many Requests",
                                   "message": f"rate limit of {self.rate_limit} requests per "
                                              f"{self.rate_window_seconds:g} seconds exceeded"})
        else:
            reply = self._serve(h, path, body, fault)
        status = 0 if reply[0] == "reset" else reply[1]
        # book-keeping happens before the client can see the answer
        with self._lock:
            if status == 401:
                self.stats["unauthorized"] += 1
            if status == 429:
                self.stats["throttled"] += 1
                if status_hint == 429:
                    self.stats["rate_limited"] += 1
            self.stats["by_status"][status] = self.stats["by_status"].get(status, 0) + 1
            self.request_log.append((t_mono, h.command, path, status))
            if path == SIEM_PATH:
                self.siem_log.append(_siem_log_entry(t_mono, now, body, status))
        mode = reply[0]
        if mode == "reset":
            h.reset_connection()
        elif mode == "json":
            h.send_json(reply[1], reply[2], headers)
        elif mode == "raw":
            h.send_bytes(reply[1], reply[2], headers)
        elif mode == "truncated":
            h.send_truncated(reply[1], reply[2], headers)
        elif mode == "stream":
            h.send_stream(reply[1], headers, declared_length=reply[2])
        elif mode == "hang":
            h.hang()

    def _serve(self, h, path, body, fault):
        """Answer an authenticated, non-throttled request: returns
        ("json", status, obj) | ("raw", status, bytes) | ("truncated", status, bytes) | ("reset",)."""
        if fault:
            name, arg = parse_fault(fault)
            if name == "status":
                code = int(arg)
                return ("json", code, {"status": code, "error": "injected fault",
                                       "message": f"simulated HTTP {code}"})
            if name == "reset":
                return ("reset",)
            if name == "hang":
                return ("hang", 0)
            if name in ("huge_body", "endless_body"):
                declared = HUGE_BODY_BYTES if name == "huge_body" else None
                return ("stream", int(arg or 200), declared)
            if name == "echo_headers":
                return ("raw", int(arg or 400), h.echo_headers_body(int(arg or 400)))
            if name == "slow":
                self._sleep(float(arg))
                fault = None
        try:
            status, payload = self._route(h, path, body, fault)
        except _ApiError as e:
            return ("json", e.status, {"status": e.status, "error": e.message, "message": e.message})
        if fault == "malformed_json":
            raw = b'{"logs": [{"uuid": "6f1c", "message": "unterminated' if path == SIEM_PATH \
                else b'{"data": [1, 2,'
            return ("raw", 200, raw)
        if status == 200 and path in self.rest_raw_pages:
            return ("raw", 200, self.rest_raw_pages[path])
        raw = json.dumps(payload).encode("utf-8")
        if path == SIEM_PATH and status == 200 and self.siem_raw_page is not None:
            # What json.dumps cannot write: repeated members, lone surrogate escapes.
            raw = self.siem_raw_page
        if fault == "truncated_body":
            return ("truncated", status, raw)
        return ("raw", status, raw)

    def _route(self, h, path, body, fault):
        method = h.command
        if path == SIEM_PATH:
            if method != "POST":
                raise _ApiError(405, "method not allowed")
            if not self.siem_enabled:
                raise _ApiError(404, "SIEM query feature is not enabled for this account")
            result = self._siem_query(body)
            if fault == "wrong_types":
                return 200, {"logs": "oops", "pagination": []}
            if fault == "huge_field":
                filler = ("huge-field " * (HUGE_FIELD_BYTES // 11 + 1))[:HUGE_FIELD_BYTES]
                if result["logs"]:
                    result["logs"][0] = dict(result["logs"][0], message=filler)
                else:
                    result["logs"].append({"uuid": "00000000-0000-4000-8000-00000000huge",
                                           "organization_id": None, "message": filler})
            return 200, result
        if method != "GET":
            if path == "/v1/account" or path in LIST_RESOURCES:
                raise _ApiError(405, "method not allowed")
            raise _ApiError(404, "not found")
        query = parse_qsl(urlsplit(h.path).query, keep_blank_values=True)
        if path == "/v1/account":
            with self._lock:
                acct = copy.deepcopy(self._account)
            if fault == "wrong_types":
                return 200, {"account": "oops"}
            if fault == "huge_field":
                acct["message"] = "x" * HUGE_FIELD_BYTES
            return 200, {"account": acct}
        if path in LIST_RESOURCES:
            plural = LIST_RESOURCES[path][0]
            result = self._list(path, query)
            if fault == "wrong_types":
                return 200, {plural: "oops", "pagination": []}
            if fault == "huge_field" and result[plural]:
                result[plural][0]["message"] = "x" * HUGE_FIELD_BYTES
            return 200, result
        base, _, ident = path.rpartition("/")
        if base in LIST_RESOURCES and ident:
            singular = LIST_RESOURCES[base][1]
            with self._lock:
                for item in self._lists[base]:
                    if str(item.get("id")) == ident:
                        return 200, {singular: copy.deepcopy(item)}
            raise _ApiError(404, f"{singular} not found")
        raise _ApiError(404, "not found")

    # SIEM ------------------------------------------------------------------
    def _fingerprint(self, esql, rs, re_) -> str:
        return hashlib.sha256(f"{esql}\n{rs}\n{re_}".encode()).hexdigest()[:32]

    def _make_token(self, payload: dict) -> str:
        data = json.dumps(payload, separators=(",", ":")).encode()
        sig = hmac.new(self._secret, data, hashlib.sha256).hexdigest()[:24]
        return f"{_b64e(data)}.{sig}"

    def _read_token(self, token):
        if not isinstance(token, str) or "." not in token:
            raise _ApiError(400, "invalid page_token")
        data_b64, _, sig = token.rpartition(".")
        try:
            data = _b64d(data_b64)
        except Exception:
            raise _ApiError(400, "invalid page_token") from None
        good = hmac.new(self._secret, data, hashlib.sha256).hexdigest()[:24]
        if not hmac.compare_digest(good, sig):
            raise _ApiError(400, "invalid page_token")
        return json.loads(data)

    def _candidates(self, rs_ns, re_ns, q):
        """Rows in [rs, re) matching the WHERE, sorted by key (cached)."""
        ck = (rs_ns, re_ns, repr(q.conditions), self._version)
        hit = self._cand_cache.get(ck)
        if hit is not None:
            self._cand_cache.move_to_end(ck)
            return hit
        lo = bisect.bisect_left(self._ts_keys, rs_ns)
        hi = bisect.bisect_left(self._ts_keys, re_ns)
        cands = [e for e in self._by_ts[lo:hi] if all(c.matches(e.row) for c in q.conditions)]
        cands.sort(key=lambda e: e.key)
        keys = [e.key for e in cands]
        self._cand_cache[ck] = (keys, cands)
        while len(self._cand_cache) > 32:
            self._cand_cache.popitem(last=False)
        return keys, cands

    def _siem_query(self, body: bytes) -> dict:
        esql, rs, re_, page_token = self._siem_request(body)
        rs_ns, re_ns = self._siem_range(rs, re_)
        try:
            q = _esql.parse(esql)
        except _esql.QueryError as e:
            raise _ApiError(422, f"invalid ES|QL: {e}") from None
        self._refuse_switched_off(q)
        fp = self._fingerprint(esql, rs, re_)
        now = self.clock()
        tok = self._check_token(page_token, fp, now) if page_token not in (None, "") else None
        if q.stats is not None:
            result = self._stats_page(q, rs_ns, re_ns, tok, fp, now)
        else:
            result = self._rows_page(q, rs_ns, re_ns, tok, fp, now)
        if self.repeat_page_tokens and page_token and result["pagination"]:
            result["pagination"]["next_page_token"] = page_token
        return result

    def _siem_request(self, body: bytes):
        try:
            req = json.loads(body.decode("utf-8")) if body else None
        except (UnicodeDecodeError, ValueError):
            raise _ApiError(400, "request body is not valid JSON") from None
        if not isinstance(req, dict):
            raise _ApiError(400, "request body must be a JSON object")
        esql = req.get("esql")
        if not isinstance(esql, str) or not esql.strip():
            raise _ApiError(400, "esql is missing")
        rs, re_ = req.get("range_start"), req.get("range_end")
        if rs is None or re_ is None:
            raise _ApiError(400, "range_start and range_end are required")
        return esql, rs, re_, req.get("page_token")

    def _siem_range(self, rs, re_):
        try:
            rs_ns, re_ns = parse_iso_ns(rs), parse_iso_ns(re_)
        except ValueError as e:
            raise _ApiError(400, f"range_start/range_end must be ISO 8601 with a time zone: {e}") from None
        if rs_ns > re_ns:
            raise _ApiError(400, "range_start must not be after range_end")
        if self.retention_seconds is not None and rs_ns < (self.clock() - self.retention_seconds) * 1e9:
            raise _ApiError(400, "range_start is older than the retention period")
        return rs_ns, re_ns

    def _refuse_switched_off(self, q):
        """The 422 an API that does not allow STATS, or WHERE on @timestamp, would give."""
        if self.stats_refused and q.stats is not None:
            where = _esql.position(q.esql, q.stats_offset)
            raise _ApiError(422, f"invalid ES|QL: {where}: STATS is not allowed in SIEM queries")
        if self.time_filters_refused and q.filters_time:
            where = _esql.position(q.esql, q.time_filter_offset)
            raise _ApiError(422, f"invalid ES|QL: {where}: WHERE on [@timestamp] is not allowed in SIEM "
                                 "queries; use range_start and range_end")

    def _check_token(self, page_token, fp, now) -> dict:
        tok = self._read_token(page_token)
        if tok.get("f") != fp:
            raise _ApiError(400, "page_token does not match the query range")
        if tok.get("g") != self._token_generation or (
                self.token_ttl_seconds is not None and now - tok.get("t", 0) > self.token_ttl_seconds):
            raise _ApiError(400, "page token expired; restart the query without page_token")
        return tok

    def _visible(self, events, now):
        return [e for e in events if e.visible_at is None or now >= e.visible_at]

    def _rows_page(self, q, rs_ns, re_ns, tok, fp, now) -> dict:
        if tok and "k" not in tok:
            raise _ApiError(400, "invalid page_token")
        cursor = (tok["k"], tok["s"]) if tok else None
        emitted = int(tok.get("n", 0)) if tok else 0
        with self._lock:
            keys, cands = self._candidates(rs_ns, re_ns, q)
            start = bisect.bisect_right(keys, cursor) if cursor else 0
            cap = self.page_size
            if q.limit is not None:
                cap = max(0, min(cap, q.limit - emitted))
            out, more = [], False
            for e in cands[start:]:
                if e.visible_at is not None and now < e.visible_at:
                    continue
                if len(out) >= cap:
                    more = True
                    break
                out.append(e)
            if q.limit is not None and emitted + len(out) >= q.limit:
                more = False
            cols = q.project_columns(self._fields)
            generation = self._token_generation
        logs = [self._shape(e.row, cols) for e in out]
        pagination = {}
        if more and out:
            last = out[-1]
            pagination["next_page_token"] = self._make_token({
                "k": last.key[0], "s": last.key[1], "f": fp, "t": now,
                "g": generation, "n": emitted + len(out)})
        return {"logs": logs, "pagination": pagination}

    def _shape(self, row, cols):
        if cols is None:
            return {"uuid": row.get("uuid"), "organization_id": row.get("organization_id")}
        if self.null_columns:
            return {c: row.get(c) for c in cols}
        return {c: row[c] for c in cols if c in row}

    def _stats_page(self, q, rs_ns, re_ns, tok, fp, now) -> dict:
        """STATS COUNT(*) [BY BUCKET(@timestamp, span)]: the rows the query would
        return now (visible ones only), counted per bucket, buckets ascending."""
        if tok and "b" not in tok:
            raise _ApiError(400, "invalid page_token")
        with self._lock:
            _keys, cands = self._candidates(rs_ns, re_ns, q)
            counted = self._visible(cands, now)
            generation = self._token_generation
        if q.input_limit is not None:
            counted = counted[:q.input_limit]
        stats = q.stats
        if stats.bucket_name is None:
            return {"logs": [{stats.count_name: len(counted)}], "pagination": {}}
        counts = {}
        for e in counted:
            bucket = stats.bucket_of(e.ts)
            counts[bucket] = counts.get(bucket, 0) + 1
        buckets = sorted(counts)
        emitted = int(tok.get("n", 0)) if tok else 0
        start = bisect.bisect_right(buckets, tok["b"]) if tok else 0
        cap = self.page_size
        if q.limit is not None:
            cap = max(0, min(cap, q.limit - emitted))
        page = buckets[start:start + cap]
        more = start + len(page) < len(buckets) and (q.limit is None or emitted + len(page) < q.limit)
        logs = [{stats.count_name: counts[b], stats.bucket_name: format_ns(b, 3)} for b in page]
        pagination = {}
        if more and page:
            pagination["next_page_token"] = self._make_token({
                "b": page[-1], "f": fp, "t": now, "g": generation, "n": emitted + len(page)})
        return {"logs": logs, "pagination": pagination}

    # REST lists ------------------------------------------------------------
    def _list(self, path, query) -> dict:
        plural, _singular, sort_fields, filters = LIST_RESOURCES[path]
        params = {}
        for k, v in query:
            params[k] = v  # last one wins
        limit_raw = params.get("limit", "10")
        try:
            limit = int(limit_raw)
        except ValueError:
            raise _ApiError(400, "limit is invalid") from None
        if not 1 <= limit <= 500:
            raise _ApiError(400, "limit does not have a valid value (1..500)")
        sort_field = params.get("sort_field", "id")
        if sort_field not in sort_fields:
            raise _ApiError(400, f"sort_field does not have a valid value ({', '.join(sort_fields)})")
        sort_dir = params.get("sort_direction", "desc")
        if sort_dir not in ("asc", "desc"):
            raise _ApiError(400, "sort_direction does not have a valid value (asc, desc)")
        if self.ignore_sort:
            sort_field, sort_dir = "id", "asc"
        active = []
        for name, (kind, getter) in filters.items():
            if name not in params:
                continue
            raw = params[name]
            if kind in ("int", "any_org"):
                try:
                    val = int(raw)
                except ValueError:
                    raise _ApiError(400, f"{name} is invalid") from None
            elif kind == "csv":
                val = [s.strip() for s in raw.split(",") if s.strip()]
                if name == "types" and any(v not in SIGNAL_TYPES for v in val):
                    raise _ApiError(400, f"{name} does not have a valid value ({', '.join(SIGNAL_TYPES)})")
                if name == "statuses" and any(v not in ("reported", "closed") for v in val):
                    raise _ApiError(400, f"{name} does not have a valid value (reported, closed)")
            elif kind in ("min", "max"):
                val = _parse_iso(raw)
                if val is None:
                    raise _ApiError(400, f"{name} is not an ISO-8601 date")
            elif isinstance(kind, tuple):
                if raw not in kind:
                    raise _ApiError(400, f"{name} does not have a valid value ({', '.join(kind)})")
                val = raw
            else:
                val = raw
            active.append((name, kind, getter, val))
        fp = hashlib.sha256(json.dumps(
            [path, sort_field, sort_dir, [(a[0], a[3]) for a in active]], default=str).encode()).hexdigest()[:16]
        now = self.clock()

        orgs = self._lists.get("/v1/organizations", [])

        def keep(item):
            for _name, kind, getter, val in active:
                if _name == "organization_id":
                    if val not in _org_ids(item, orgs):
                        return False
                    continue
                if getter == "escalation_status":
                    if not _escalation_has_status(item, val, now):
                        return False
                    continue
                got = _dig(item, getter)
                if kind == "any_org":
                    try:
                        if not any(int(o.get("id")) == int(val) for o in (got or [])):
                            return False
                    except (TypeError, ValueError):
                        return False
                    continue
                if kind in ("min", "max"):
                    at = _parse_iso(got)
                    if at is None or (at < val if kind == "min" else at > val):
                        return False
                    continue
                if kind == "in_list":
                    if not isinstance(got, list) or val not in got:
                        return False
                elif kind == "csv":
                    if got not in val:
                        return False
                elif kind == "int":
                    try:
                        if int(got) != val:
                            return False
                    except (TypeError, ValueError):
                        return False
                elif got != val and str(got) != val:
                    return False
            return True

        def skey(item):
            return (_sort_value(item.get(sort_field)), _sort_value(item.get("id")))

        with self._lock:
            items = [copy.deepcopy(i) for i in self._lists[path] if keep(i)]
        desc = sort_dir == "desc"
        items.sort(key=skey, reverse=desc)
        token = params.get("page_token")
        if token:
            try:
                tok = json.loads(_b64d(token))
                if tok["fp"] != fp:
                    raise _ApiError(400, "page_token does not match the query parameters")
                if tok.get("g", 0) != self._list_token_generation:
                    raise _ApiError(400, "page_token expired; list again without page_token")
                cursor = (tuple(tok["v"]), tuple(tok["i"]))
            except _ApiError:
                raise
            except Exception:
                raise _ApiError(400, "page_token is invalid") from None
            if desc:
                items = [i for i in items if _as_key(skey(i)) < cursor]
            else:
                items = [i for i in items if _as_key(skey(i)) > cursor]
        page, more = items[:limit], len(items) > limit
        pagination = {}
        if more:
            last_key = skey(page[-1])
            ntok = _b64e(json.dumps({"fp": fp, "v": list(last_key[0]), "i": list(last_key[1]),
                                     "g": self._list_token_generation}).encode())
            next_params = [(k, v) for k, v in query if k not in ("page_token", "page", "limit")]
            next_params += [("limit", str(limit)), ("page_token", ntok)]
            pagination = {
                "next_page_token": ntok,
                "next_page_url": f"{self.base_url}{path}?{urlencode(next_params)}",
            }
        return {plural: page, "pagination": pagination}


def _siem_log_entry(t_mono, now, body, status) -> dict:
    """What a SIEM request asked, for benchmarks that split requests by kind."""
    try:
        esql = json.loads(body.decode("utf-8")).get("esql")
    except (AttributeError, UnicodeDecodeError, ValueError):
        esql = None
    kind = _esql.query_kind(esql) if isinstance(esql, str) else "invalid"
    return {"monotonic": t_mono, "time": now, "status": status, "kind": kind, "esql": esql}


def _escalation_has_status(item, wanted, now):
    resolved = item.get("status") == "resolved"
    if wanted == "resolved":
        return resolved
    if resolved:
        return False
    if wanted == "overdue":
        due = _parse_iso(item.get("due_at"))
        return due is not None and due.timestamp() < now
    return True


def _as_key(k):
    return (tuple(k[0]), tuple(k[1]))


def iso_seconds_from_epoch(epoch: float) -> str:
    from datetime import datetime, timezone
    return iso_seconds(datetime.fromtimestamp(epoch, tz=timezone.utc))
