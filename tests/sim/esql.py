"""A deliberately tiny ES|QL subset, enough to exercise a SIEM client.

Supported, after a leading ``FROM logs``:
  * ``WHERE`` boolean expressions: ``and``/``AND``, ``or``/``OR`` and
    parentheses over ``field == "v"`` / ``field != "v"`` (string or integer
    literals) and time comparisons ``field >= TO_DATETIME("<ISO 8601 with
    zone>")`` (``>=``, ``>``, ``<``, ``<=``, ``==``, ``!=``; nanosecond
    precision). Field names may be back-quoted. Anything else in a WHERE
    (NOT, other functions, ``<`` on a plain literal, LIKE...) raises
    QueryError (-> 422).
  * ``KEEP a, b.c, @timestamp, event.*`` (``*`` wildcards anywhere).
  * ``LIMIT n`` caps the total number of rows (the smallest LIMIT wins).
  * ``STATS [name =] COUNT(*) [BY [bname =] BUCKET(@timestamp, <n> <unit>)]``
    with unit second(s), minute(s) or hour(s): one row per non-empty bucket.
    Only LIMIT may follow it (it then caps the buckets; a LIMIT before it
    caps the rows counted).
  * SORT, EVAL, DROP, RENAME, ... are accepted and ignored.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

from .timeutil import parse_iso_ns

IGNORED_COMMANDS = {
    "SORT", "EVAL", "DROP", "RENAME", "DISSECT", "GROK", "ENRICH", "MV_EXPAND",
    "INLINESTATS", "LOOKUP", "CHANGE_POINT", "FORK", "SAMPLE",
    "COMPLETION", "RERANK", "RRF", "FUSE",
}
TIMESTAMP = "@timestamp"

_FROM_RE = re.compile(r"^\s*FROM\s+logs(?=\s|$)", re.IGNORECASE)
_FIELD_RE = re.compile(r"[A-Za-z_@][A-Za-z0-9_.@\-]*")
_KEEP_ITEM_RE = re.compile(r"^(?:`[^`]+`|[A-Za-z_@*][A-Za-z0-9_.@*\-]*)$")
_NAME = r"(?:`[^`]+`|[A-Za-z_@][A-Za-z0-9_.@]*)"
_STATS_RE = re.compile(
    rf"^(?:(?P<name>{_NAME})\s*=\s*)?(?P<agg>COUNT\s*\(\s*\*\s*\))"
    rf"(?:\s+BY\s+(?:(?P<bname>{_NAME})\s*=\s*)?"
    rf"(?P<bexpr>BUCKET\s*\(\s*(?P<bfield>{_NAME})\s*,\s*(?P<n>\d+)\s*(?P<unit>[A-Za-z]+)\s*\)))?\s*$",
    re.IGNORECASE | re.S)
_UNIT_SECONDS = {
    "second": 1, "seconds": 1, "sec": 1, "s": 1,
    "minute": 60, "minutes": 60, "min": 60,
    "hour": 3600, "hours": 3600, "h": 3600,
}
_TIME_OPS = {
    ">=": lambda a, b: a >= b, ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b, "<": lambda a, b: a < b,
    "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
}


class QueryError(ValueError):
    """Invalid or unsupported ES|QL (the simulator answers 422)."""


@dataclass
class Condition:
    field: str
    op: str  # "==" or "!="
    value: object  # str or int

    def matches(self, row: dict) -> bool:
        if self.field not in row:
            return False  # null compares to null -> row excluded
        v = row[self.field]
        if v is None or isinstance(v, (list, dict)):
            return False  # null / multi-valued -> null -> excluded
        if isinstance(self.value, str):
            eq = (v if isinstance(v, str) else _as_text(v)) == self.value
        else:
            if isinstance(v, bool):
                eq = False
            elif isinstance(v, (int, float)):
                eq = v == self.value
            else:
                eq = str(v) == str(self.value)
        return eq if self.op == "==" else not eq

    def fields(self):
        yield self.field

    def compares_time(self, name: str) -> bool:
        return self.field == name


@dataclass
class TimeCondition:
    """`field <op> TO_DATETIME("...")`, compared in epoch nanoseconds."""
    field: str
    op: str
    value_ns: int

    def matches(self, row: dict) -> bool:
        v = row.get(self.field)
        if not isinstance(v, str):
            return False  # null, multi-valued or not a date -> excluded
        try:
            ns = parse_iso_ns(v)
        except ValueError:
            return False
        return _TIME_OPS[self.op](ns, self.value_ns)

    def fields(self):
        yield self.field

    def compares_time(self, name: str) -> bool:
        return self.field == name


@dataclass
class AllOf:
    items: list

    def matches(self, row: dict) -> bool:
        # With no NOT in the subset, reading null as false gives ES|QL's
        # three-valued result for every row that WHERE keeps.
        return all(item.matches(row) for item in self.items)

    def fields(self):
        for item in self.items:
            yield from item.fields()

    def compares_time(self, name: str) -> bool:
        return any(item.compares_time(name) for item in self.items)


@dataclass
class AnyOf(AllOf):
    def matches(self, row: dict) -> bool:
        return any(item.matches(row) for item in self.items)


def _as_text(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


@dataclass
class Stats:
    """`STATS count_name = COUNT(*) BY bucket_name = BUCKET(@timestamp, span)`."""
    count_name: str
    bucket_name: str | None = None  # None: no BY, a single row
    span_ns: int | None = None

    def bucket_of(self, ts_ns: int) -> int:
        return ts_ns // self.span_ns * self.span_ns


@dataclass
class Query:
    esql: str
    conditions: list = field(default_factory=list)
    keep: list | None = None  # list of patterns (strings), None = no KEEP
    limit: int | None = None  # rows returned (buckets, after a STATS)
    stats: Stats | None = None
    input_limit: int | None = None  # with STATS: a LIMIT before it caps the rows counted
    stats_offset: int | None = None  # where the STATS command starts in esql
    time_filter_offset: int | None = None  # where the first WHERE on @timestamp starts

    @property
    def filters_time(self) -> bool:
        return self.time_filter_offset is not None

    def project_columns(self, universe):
        """Expand KEEP patterns into an ordered, de-duplicated column list."""
        if self.keep is None:
            return None
        cols = []
        seen = set()
        for pat in self.keep:
            if "*" in pat:
                for name in sorted(universe):
                    if fnmatch.fnmatchcase(name, pat) and name not in seen:
                        seen.add(name)
                        cols.append(name)
            elif pat not in seen:
                seen.add(pat)
                cols.append(pat)
        return cols


def position(text: str, offset: int) -> str:
    """`line L:C` of a character offset, as ES|QL spells positions in errors."""
    before = text[:offset]
    line = before.count("\n") + 1
    column = offset - (before.rfind("\n") + 1) + 1
    return f"line {line}:{column}"


def split_pipes(text: str):
    """Split on '|' outside double-quoted strings and back-quoted names."""
    return [seg for _, seg in split_pipes_at(text)]


def split_pipes_at(text: str):
    """Like split_pipes, with the offset where each segment starts."""
    parts, buf, quote, i, start = [], [], None, 0, 0
    while i < len(text):
        ch = text[i]
        if quote:
            buf.append(ch)
            if ch == "\\" and quote == '"' and i + 1 < len(text):
                buf.append(text[i + 1])
                i += 2
                continue
            if ch == quote:
                quote = None
        elif ch in ('"', "`"):
            quote = ch
            buf.append(ch)
        elif ch == "|":
            parts.append((start, "".join(buf)))
            buf, start = [], i + 1
        else:
            buf.append(ch)
        i += 1
    if quote:
        raise QueryError("unterminated quoted string")
    parts.append((start, "".join(buf)))
    return parts


def _read_string(expr: str, i: int):
    j, out, n = i + 1, [], len(expr)
    while j < n and expr[j] != '"':
        if expr[j] == "\\" and j + 1 < n:
            nxt = expr[j + 1]
            out.append({"n": "\n", "t": "\t", "r": "\r"}.get(nxt, nxt))
            j += 2
        else:
            out.append(expr[j])
            j += 1
    if j >= n:
        raise QueryError("unterminated string literal in WHERE")
    return "".join(out), j + 1


def _tokenize_where(expr: str):
    tokens, i, n = [], 0, len(expr)
    while i < n:
        ch = expr[i]
        two = expr[i:i + 2]
        if ch.isspace():
            i += 1
        elif two in ("==", "!=", ">=", "<="):
            tokens.append(("op", two))
            i += 2
        elif ch in "<>":
            tokens.append(("op", ch))
            i += 1
        elif ch in "(),":
            tokens.append((ch, ch))
            i += 1
        elif ch == '"':
            text, i = _read_string(expr, i)
            tokens.append(("str", text))
        elif ch == "`":
            j = expr.find("`", i + 1)
            if j < 0:
                raise QueryError("unterminated back-quoted name in WHERE")
            tokens.append(("name", expr[i + 1:j]))
            i = j + 1
        elif ch == "-" or ch.isdigit():
            m = re.match(r"-?\d+(?![A-Za-z0-9_.@])", expr[i:])
            if not m:
                raise QueryError(f"unsupported WHERE syntax near {expr[i:i + 20]!r}")
            tokens.append(("int", int(m.group(0))))
            i += len(m.group(0))
        else:
            m = _FIELD_RE.match(expr, i)
            if not m:
                raise QueryError(f"unsupported WHERE syntax near {expr[i:i + 20]!r}")
            word = m.group(0)
            kind = word.lower() if word.lower() in ("and", "or") else "name"
            tokens.append((kind, word))
            i = m.end()
    return tokens


class _WhereParser:
    """expr := and_expr (OR and_expr)* ; and_expr := atom (AND atom)* ;
    atom := "(" expr ")" | comparison."""

    def __init__(self, tokens):
        self.tokens = tokens
        self.i = 0

    def peek(self):
        return self.tokens[self.i][0] if self.i < len(self.tokens) else None

    def take(self, kind, what):
        if self.peek() != kind:
            near = self.tokens[self.i][1] if self.i < len(self.tokens) else "the end"
            raise QueryError(f"unsupported WHERE syntax: expected {what} near {near!r}")
        self.i += 1
        return self.tokens[self.i - 1][1]

    def parse(self):
        node = self.any_of()
        if self.i != len(self.tokens):
            raise QueryError(f"unsupported WHERE syntax near {self.tokens[self.i][1]!r}")
        return node

    def any_of(self):
        items = [self.all_of()]
        while self.peek() == "or":
            self.i += 1
            items.append(self.all_of())
        return items[0] if len(items) == 1 else AnyOf(items)

    def all_of(self):
        items = [self.atom()]
        while self.peek() == "and":
            self.i += 1
            items.append(self.atom())
        return items[0] if len(items) == 1 else AllOf(items)

    def atom(self):
        if self.peek() == "(":
            self.i += 1
            node = self.any_of()
            self.take(")", "`)`")
            return node
        name = self.take("name", '`field == "value"`')
        if name.lower() == "not":
            raise QueryError(f"unsupported WHERE operator {name!r}")
        op = self.take("op", 'a comparison such as `field == "value"` or `@timestamp >= TO_DATETIME("...")`')
        if self.peek() == "name" and self.tokens[self.i][1].lower() == "to_datetime":
            return TimeCondition(name, op, self.datetime_literal())
        if op not in ("==", "!="):
            raise QueryError(f"unsupported WHERE comparison {op!r}: only against TO_DATETIME(\"...\")")
        kind, value = self.tokens[self.i] if self.i < len(self.tokens) else (None, None)
        if kind not in ("str", "int"):
            raise QueryError("unsupported WHERE syntax: expected `field == \"value\"` or `field != \"value\"`")
        self.i += 1
        return Condition(name, op, value)

    def datetime_literal(self) -> int:
        self.i += 1
        self.take("(", "`(` after TO_DATETIME")
        text = self.take("str", "a quoted timestamp in TO_DATETIME")
        self.take(")", "`)` after the TO_DATETIME timestamp")
        try:
            return parse_iso_ns(text)
        except ValueError as e:
            raise QueryError(f"TO_DATETIME needs an ISO 8601 timestamp with a zone: {e}") from None


def parse_where(expr: str):
    """The WHERE expression as one node with matches(row) and fields()."""
    tokens = _tokenize_where(expr)
    if not tokens:
        raise QueryError("empty WHERE")
    return _WhereParser(tokens).parse()


def _unquote(name: str) -> str:
    return name[1:-1] if name.startswith("`") and name.endswith("`") else name


def _check_known(names, available):
    """A column a KEEP dropped is unknown to the commands after it."""
    if available is None:
        return
    for name in names:
        if name not in available and not any(
                fnmatch.fnmatchcase(name, p) for p in available if "*" in p):
            raise QueryError(f"Unknown column [{name}]")


def parse_stats(rest: str, available) -> Stats:
    m = _STATS_RE.match(rest)
    if not m:
        raise QueryError("unsupported STATS: only `STATS [name =] COUNT(*) "
                         "[BY [name =] BUCKET(@timestamp, <n> <second|minute|hour>)]`")
    count_name = _unquote(m.group("name")) if m.group("name") else re.sub(r"\s+", "", m.group("agg"))
    if not m.group("bexpr"):
        return Stats(count_name)
    bucket_field = _unquote(m.group("bfield"))
    _check_known([bucket_field], available)
    if bucket_field != TIMESTAMP:
        raise QueryError(f"BUCKET over [{bucket_field}] is not supported, only over [{TIMESTAMP}]")
    unit = m.group("unit").lower()
    if unit not in _UNIT_SECONDS or int(m.group("n")) < 1:
        raise QueryError(f"unsupported BUCKET span {m.group('n')} {m.group('unit')}")
    bucket_name = _unquote(m.group("bname")) if m.group("bname") else m.group("bexpr")
    return Stats(count_name, bucket_name, int(m.group("n")) * _UNIT_SECONDS[unit] * 1_000_000_000)


def _parse_keep(rest: str, available):
    items = [s.strip() for s in rest.split(",")] if rest else []
    if not items or any(not s for s in items):
        raise QueryError("KEEP needs a comma-separated list of columns")
    pats = []
    for s in items:
        if not _KEEP_ITEM_RE.match(s):
            raise QueryError(f"invalid KEEP column {s!r}")
        pats.append(s.strip("`"))
    if available is not None:
        # a second KEEP can only narrow the first one
        pats = [p for p in pats if p in available or "*" in p
                or any(fnmatch.fnmatchcase(p, a) for a in available if "*" in a)]
    return pats


def parse(esql) -> Query:
    if not isinstance(esql, str):
        raise QueryError("esql must be a string")
    if not _FROM_RE.match(esql):
        raise QueryError("query must begin with FROM logs")
    q = Query(esql=esql)
    available = None  # columns left after a KEEP, None = everything
    for offset, raw_seg in split_pipes_at(esql)[1:]:
        seg = raw_seg.strip()
        if not seg:
            raise QueryError("empty command between pipes")
        offset += len(raw_seg) - len(raw_seg.lstrip())
        m = re.match(r"(\S+)\s*(.*)", seg, re.S)
        word, rest = m.group(1), m.group(2).strip()
        cmd = word.upper()
        if q.stats is not None and cmd != "LIMIT":
            raise QueryError(f"{word} after STATS is not supported, only LIMIT")
        if cmd == "WHERE":
            node = parse_where(rest)
            _check_known(node.fields(), available)
            if q.time_filter_offset is None and node.compares_time(TIMESTAMP):
                q.time_filter_offset = offset
            q.conditions.append(node)
        elif cmd == "KEEP":
            q.keep = _parse_keep(rest, available)
            available = list(q.keep)
        elif cmd == "LIMIT":
            if not re.fullmatch(r"\d+", rest):
                raise QueryError("LIMIT needs a non-negative integer")
            n = int(rest)
            q.limit = n if q.limit is None else min(q.limit, n)
        elif cmd == "STATS":
            q.stats = parse_stats(rest, available)
            q.stats_offset = offset
            q.input_limit, q.limit = q.limit, None
        elif cmd in IGNORED_COMMANDS:
            continue
        else:
            raise QueryError(f"unknown command {word!r}")
    return q


def query_kind(esql) -> str:
    """"stats" (a STATS query), "reread" (a WHERE on @timestamp), "query"
    (anything else the subset reads) or "invalid"."""
    try:
        q = parse(esql)
    except QueryError:
        return "invalid"
    if q.stats is not None:
        return "stats"
    return "reread" if q.filters_time else "query"
