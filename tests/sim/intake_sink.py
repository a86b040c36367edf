"""In-process fake of the Datadog Logs HTTP intake (POST /api/v2/logs), plus a
tiny EchoServer that records what it receives (to prove a client does not
forward DD-API-KEY across a redirect)."""

from __future__ import annotations

import json
import threading
import time
import zlib
from collections import Counter
from datetime import datetime, timezone
from urllib.parse import urlsplit

from ._http import HUGE_BODY_BYTES, FaultQueue, Headers, ServerBase, monotonic, parse_fault, validate_fault
from .timeutil import parse_iso_ns

LOGS_PATH = "/api/v2/logs"
SINK_FAULT_KINDS = ("status", "accept_then_fail", "reset", "slow", "redirect",
                    "hang", "huge_body", "endless_body", "echo_headers")

# Attributes the intake reads a log's date from, first match wins. Datadog's
# documented default date attributes are timestamp, date, _timestamp,
# Timestamp, eventTime, published_date; @timestamp is also honoured by the
# JSON preprocessing (assumption: put first, which is the strict choice for a
# forwarder that keeps the original ECS @timestamp next to a rewritten date).
DEFAULT_DATE_ATTRIBUTES = ("@timestamp", "timestamp", "date", "_timestamp",
                           "Timestamp", "eventTime", "published_date")

MAX_PAST_SECONDS = 18 * 3600
MAX_FUTURE_SECONDS = 2 * 3600

_SECRET_HEADERS = ("dd-api-key", "dd-application-key", "authorization")

# How each Content-Encoding's body starts: a body that does not start so, or an
# unencoded body that does, was labelled wrong by the client.
_MAGIC = {"gzip": b"\x1f\x8b", "zstd": b"\x28\xb5\x2f\xfd"}
ENCODINGS = ("identity", "gzip", "deflate", "zstd")


def encoding_mismatch(encoding: str, raw: bytes):
    """Why `raw` cannot be a body with this Content-Encoding, or None."""
    magic = _MAGIC.get(encoding)
    if magic is not None and not raw.startswith(magic):
        return f"Content-Encoding {encoding} but the body is not {encoding} (starts {raw[:4].hex()})"
    if encoding in ("", "identity"):
        for name, other in _MAGIC.items():
            if raw.startswith(other):
                return f"no Content-Encoding but the body is {name}"
    return None


class ZstdError(ValueError):
    pass


def _zstd_modules():
    """The stdlib's zstd (Python 3.14+), or the zstandard package; imported on
    the first zstd body, so that the sink runs without either."""
    try:
        from compression import zstd

        return zstd, None
    except ImportError:
        pass
    try:
        import zstandard

        return None, zstandard
    except ImportError:
        raise ZstdError("zstd needs Python 3.14 or the zstandard package") from None


def zstd_decompress(raw: bytes, limit: int) -> bytes:
    """At most `limit + 1` bytes of a zstd body; ZstdError when it is not one
    whole zstd stream."""
    _stdlib_zstd, _zstandard = _zstd_modules()
    if _stdlib_zstd is not None:
        d = _stdlib_zstd.ZstdDecompressor()
        try:
            body = d.decompress(raw, limit + 1)
        except _stdlib_zstd.ZstdError as e:
            raise ZstdError(str(e)) from None
        if len(body) <= limit and not d.eof:
            raise ZstdError("truncated stream")
        return body
    declared = _zstandard.frame_content_size(raw) if len(raw) >= 18 else -1
    if declared > limit:
        return b"\0" * (limit + 1)
    d = _zstandard.ZstdDecompressor().decompressobj()
    out = bytearray()
    try:
        # fed in small pieces, so a decompression bomb stops near the limit
        for start in range(0, len(raw), 4096):
            out += d.decompress(raw[start:start + 4096])
            if len(out) > limit:
                return bytes(out[: limit + 1])
    except _zstandard.ZstdError as e:
        raise ZstdError(str(e)) from None
    if not d.eof:
        raise ZstdError("truncated stream")
    return bytes(out)


def _redact(headers) -> Headers:
    return Headers((k, "<redacted>" if k.lower() in _SECRET_HEADERS else v) for k, v in headers.items())


def log_date_seconds(log: dict, attributes=DEFAULT_DATE_ATTRIBUTES):
    """Epoch seconds of a log's date as the intake would read it, or None."""
    for attr in attributes:
        if attr not in log:
            continue
        v = log[attr]
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            return v / 1000.0  # epoch milliseconds
        if isinstance(v, str):
            s = v.strip()
            if s.lstrip("-").isdigit():
                return int(s) / 1000.0
            try:
                return parse_iso_ns(s, require_tz=False) / 1e9
            except ValueError:
                continue
    return None


class IntakeSink(ServerBase):
    """Local fake of https://http-intake.logs.<site>/api/v2/logs. Takes bodies
    unencoded or with Content-Encoding gzip, deflate or zstd, and answers 400
    when the header does not match the body."""

    _path_suffix = LOGS_PATH

    def __init__(self, api_key: str = "dd-demo-key", max_logs: int = 1000,
                 max_body_bytes: int = 5 * 1024 * 1024, max_log_bytes: int = 1024 * 1024,
                 clock=time.time, host: str = "127.0.0.1", port: int = 0,
                 date_attributes=DEFAULT_DATE_ATTRIBUTES):
        super().__init__(host, port)
        self.api_key = api_key
        self.max_logs = int(max_logs)
        self.max_body_bytes = int(max_body_bytes)
        self.max_log_bytes = int(max_log_bytes)
        self.clock = clock
        self.date_attributes = tuple(date_attributes)
        self._lock = threading.RLock()
        self._faults = FaultQueue(lambda kind: validate_fault(kind, SINK_FAULT_KINDS))
        self.logs: list = []
        self.accepted_at: list = []  # clock() when each stored log was accepted, aligned with logs
        self.requests: list = []
        self.dropped_stale = 0
        self.repeated_keys: list = []
        self.truncated = 0

    # ------------------------------------------------------------------
    def clear(self):
        """Forget stored logs, request records and counters (not faults)."""
        with self._lock:
            self.logs.clear()
            self.accepted_at.clear()
            self.requests.clear()
            self.dropped_stale = 0
            self.truncated = 0
            self.repeated_keys.clear()

    def uuids(self) -> Counter:
        """Counter of the top-level "uuid" of every stored log (logs without one are skipped)."""
        with self._lock:
            return Counter(log["uuid"] for log in self.logs if isinstance(log, dict) and "uuid" in log)

    def first_accepted(self) -> dict:
        """uuid -> clock() when the intake first accepted a log with that uuid."""
        with self._lock:
            first = {}
            for log, at in zip(self.logs, self.accepted_at):
                if isinstance(log, dict) and "uuid" in log:
                    first.setdefault(log["uuid"], at)
            return first

    def inject(self, kind: str, count: int = 1):
        """Queue `count` faults for the next POSTs to /api/v2/logs (FIFO)."""
        self._faults.add(kind, count, LOGS_PATH)

    def pending_faults(self):
        return self._faults.pending()

    def clear_faults(self):
        self._faults.clear()

    # ------------------------------------------------------------------
    def _handle(self, h):
        path = urlsplit(h.path).path
        raw = h.read_body()
        encoding = (h.headers.get("Content-Encoding") or "").strip().lower()
        rec = {
            "time": self.clock(),
            "monotonic": monotonic(),
            "method": h.command,
            "path": path,
            "status": None,
            "n_logs": 0,
            "raw_bytes": len(raw),
            "compressed": encoding in ("gzip", "deflate", "zstd"),
            "encoding": encoding or None,
            "headers": _redact(h.headers),
            "api_key_ok": h.headers.get("DD-API-KEY") == self.api_key,
            "fault": None,
            "stored": 0,
            "dropped_stale": 0,
            "truncated": 0,
        }
        h._sink_rec = rec
        try:
            self._process(h, path, raw, encoding, rec)
        finally:
            self._commit(h)

    def _commit(self, h):
        """Publish the request record; called before the client gets any answer."""
        rec = getattr(h, "_sink_rec", None)
        if rec is not None:
            h._sink_rec = None
            with self._lock:
                self.requests.append(rec)

    def _error(self, h, rec, status, detail, headers=None):
        rec["status"] = status
        rec.setdefault("detail", detail)
        self._commit(h)
        h.send_json(status, {"errors": [{"status": str(status), "detail": detail}]}, headers)

    def _process(self, h, path, raw, encoding, rec):
        if path != LOGS_PATH:
            return self._error(h, rec, 404, "not found")
        if h.command != "POST":
            return self._error(h, rec, 405, "method not allowed")
        fault = self._faults.take(path)
        rec["fault"] = fault
        accept_then_fail = False
        if fault:
            name, arg = parse_fault(fault)
            if name == "status":
                return self._error(h, rec, int(arg), f"simulated HTTP {arg}")
            if name == "reset":
                rec["status"] = 0
                self._commit(h)
                h.reset_connection()
                return
            if name == "hang":
                rec["status"] = 0
                self._commit(h)
                h.hang()
                return
            if name in ("huge_body", "endless_body"):
                rec["status"] = int(arg or 202)
                self._commit(h)
                h.send_stream(int(arg or 202), declared_length=HUGE_BODY_BYTES if name == "huge_body" else None)
                return
            if name == "echo_headers":
                rec["status"] = int(arg or 400)
                self._commit(h)
                h.send_bytes(int(arg or 400), h.echo_headers_body(int(arg or 400)))
                return
            if name == "redirect":
                rec["status"] = 307
                self._commit(h)
                h.send_bytes(307, b"", headers={"Location": arg})
                return
            if name == "slow":
                self._sleep(float(arg))
            accept_then_fail = name == "accept_then_fail"
        if h.headers.get("DD-API-KEY") != self.api_key:
            return self._error(h, rec, 403, "Forbidden: invalid or missing DD-API-KEY")
        # decode
        mismatch = encoding_mismatch(encoding, raw)
        if mismatch:
            return self._error(h, rec, 400, mismatch)
        if encoding in ("", "identity"):
            if len(raw) > self.max_body_bytes:
                return self._error(h, rec, 413, "payload too large")
            body = raw
        elif encoding in ("gzip", "deflate"):
            d = zlib.decompressobj(31 if encoding == "gzip" else 15)
            try:
                # bounded output: a decompression bomb stops at max_body_bytes + 1
                body = d.decompress(raw, self.max_body_bytes + 1)
            except zlib.error as e:
                return self._error(h, rec, 400, f"invalid {encoding} body: {e}")
            if len(body) > self.max_body_bytes:
                return self._error(h, rec, 413, "payload too large (uncompressed)")
            if not d.eof:
                return self._error(h, rec, 400, f"invalid {encoding} body: truncated stream")
        elif encoding == "zstd":
            try:
                body = zstd_decompress(raw, self.max_body_bytes)
            except ZstdError as e:
                return self._error(h, rec, 400, f"invalid zstd body: {e}")
            if len(body) > self.max_body_bytes:
                return self._error(h, rec, 413, "payload too large (uncompressed)")
        else:
            return self._error(h, rec, 415, f"unsupported Content-Encoding {encoding!r}")
        rec["uncompressed_bytes"] = len(body)
        try:
            payload = json.loads(body.decode("utf-8"), object_pairs_hook=self._note_repeated_keys)
        except (UnicodeDecodeError, ValueError) as e:
            return self._error(h, rec, 400, f"body is not valid JSON: {e}")
        entries = [payload] if isinstance(payload, dict) else payload
        if not isinstance(entries, list) or not all(isinstance(x, dict) for x in entries):
            return self._error(h, rec, 400, "body must be a JSON object or an array of objects")
        rec["n_logs"] = len(entries)
        if len(entries) > self.max_logs:
            return self._error(h, rec, 413, f"too many logs in one request ({len(entries)} > {self.max_logs})")
        now = self.clock()
        stored, stale, truncated = [], 0, 0
        for log in entries:
            log, was_truncated = self._truncate(log)
            truncated += was_truncated
            ts = log_date_seconds(log, self.date_attributes)
            if ts is not None and not (now - MAX_PAST_SECONDS <= ts <= now + MAX_FUTURE_SECONDS):
                stale += 1
                continue
            stored.append(log)
        with self._lock:
            self.logs.extend(stored)
            self.accepted_at.extend([now] * len(stored))
            self.dropped_stale += stale
            self.truncated += truncated
        rec.update(stored=len(stored), dropped_stale=stale, truncated=truncated)
        if accept_then_fail:
            return self._error(h, rec, 500, "simulated failure after the logs were accepted")
        rec["status"] = 202
        self._commit(h)
        h.send_json(202, {})

    def _note_repeated_keys(self, pairs):
        """An object, as json.loads builds it (the last value wins); a key that
        appears twice is recorded in `repeated_keys`."""
        seen = set()
        for key, _ in pairs:
            if key in seen:
                with self._lock:
                    self.repeated_keys.append(key)
            seen.add(key)
        return dict(pairs)

    def _truncate(self, log: dict):
        """Cut the longest string attributes until the log fits max_log_bytes.
        Returns (log, 1) when truncated, else (log, 0)."""
        size = len(json.dumps(log, ensure_ascii=False).encode("utf-8"))
        if size <= self.max_log_bytes:
            return log, 0
        log = dict(log)
        for _ in range(len(log)):
            excess = size - self.max_log_bytes
            if excess <= 0:
                break
            strings = [(len(v.encode("utf-8")), k) for k, v in log.items() if isinstance(v, str)]
            if not strings:
                break
            blen, key = max(strings)
            keep = max(0, blen - excess - 64)
            log[key] = log[key].encode("utf-8")[:keep].decode("utf-8", "ignore") + "...TRUNCATED..."
            size = len(json.dumps(log, ensure_ascii=False).encode("utf-8"))
        if size > self.max_log_bytes:
            text = json.dumps(log, ensure_ascii=False).encode("utf-8")[: self.max_log_bytes // 2]
            log = {"message": text.decode("utf-8", "ignore")}
        log["_sink_truncated"] = True
        return log, 1


class EchoServer(ServerBase):
    """Answers every request 202 `{}` and records what it received.

    `requests` holds dicts: method, path, headers (NOT redacted: the point is
    to see whether a secret leaked), body (bytes)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, status: int = 202):
        super().__init__(host, port)
        self.status = status
        self.requests: list = []
        self._lock = threading.Lock()

    def _handle(self, h):
        body = h.read_body()
        with self._lock:  # recorded before answering
            self.requests.append({"method": h.command, "path": h.path,
                                  "headers": Headers(h.headers.items()), "body": body,
                                  "time": datetime.now(timezone.utc)})
        h.send_json(self.status, {})

    def saw_header(self, name: str) -> bool:
        """True if any received request carried header `name` (case-insensitive)."""
        low = name.lower()
        with self._lock:
            return any(k.lower() == low for r in self.requests for k in r["headers"])

    def clear(self):
        with self._lock:
            self.requests.clear()
