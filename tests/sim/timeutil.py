"""ISO 8601 helpers with nanosecond precision (stdlib datetime stops at µs)."""

from __future__ import annotations

import calendar
import re
from datetime import datetime, timezone

_ISO_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})"
    r"(?:[.,](\d{1,9}))?"
    r"(Z|z|[+-]\d{2}:?\d{2})?$"
)


def parse_iso_ns(value, require_tz: bool = True) -> int:
    """Parse an ISO 8601 timestamp into integer nanoseconds since the epoch.

    Accepts 'Z', 'z', '+HH:MM', '+HHMM' offsets and 1..9 fractional digits.
    Without an offset the value is rejected unless ``require_tz`` is False
    (then it is read as UTC). Raises ValueError on anything else.
    """
    if not isinstance(value, str):
        raise ValueError(f"not a string: {value!r}")
    m = _ISO_RE.match(value.strip())
    if not m:
        raise ValueError(f"not an ISO 8601 timestamp: {value!r}")
    y, mo, d, h, mi, s, frac, tz = m.groups()
    if tz is None and require_tz:
        raise ValueError(f"timestamp has no timezone: {value!r}")
    # validates month/day ranges
    datetime(int(y), int(mo), int(d), int(h), int(mi), min(int(s), 59))
    secs = calendar.timegm((int(y), int(mo), int(d), int(h), int(mi), int(s), 0, 0, 0))
    if tz and tz not in ("Z", "z"):
        sign = 1 if tz[0] == "+" else -1
        digits = tz[1:].replace(":", "")
        secs -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    ns = int((frac or "").ljust(9, "0")) if frac else 0
    return secs * 1_000_000_000 + ns


def format_ns(ns: int, digits: int = 9) -> str:
    """Format epoch nanoseconds as 'YYYY-MM-DDTHH:MM:SS.fffffffffZ'."""
    secs, rem = divmod(int(ns), 1_000_000_000)
    base = datetime.fromtimestamp(secs, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    if digits <= 0:
        return base + "Z"
    return f"{base}.{str(rem).rjust(9, '0')[:digits]}Z"


def dt_to_ns(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    delta = dt - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def iso_seconds(dt: datetime) -> str:
    """'YYYY-MM-DDTHH:MM:SSZ' (the style of the Huntress REST API)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
