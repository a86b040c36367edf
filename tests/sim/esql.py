"""A deliberately tiny ES|QL subset, enough to exercise a SIEM client.

Supported, after a leading ``FROM logs``:
  * ``WHERE field == "v" [and|AND field != "v" ...]`` (string or integer
    literals; field names may be back-quoted). Anything else in a WHERE
    (OR, parentheses, functions, <, LIKE...) raises QueryError (-> 422).
  * ``KEEP a, b.c, @timestamp, event.*`` (``*`` wildcards anywhere).
  * ``LIMIT n`` caps the total number of rows (the smallest LIMIT wins).
  * SORT, EVAL, DROP, RENAME, STATS, ... are accepted and ignored.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

IGNORED_COMMANDS = {
    "SORT", "EVAL", "DROP", "RENAME", "DISSECT", "GROK", "ENRICH", "MV_EXPAND",
    "STATS", "INLINESTATS", "LOOKUP", "CHANGE_POINT", "FORK", "SAMPLE",
    "COMPLETION", "RERANK", "RRF", "FUSE",
}

_FROM_RE = re.compile(r"^\s*FROM\s+logs(?=\s|$)", re.IGNORECASE)
_FIELD_RE = re.compile(r"[A-Za-z_@][A-Za-z0-9_.@\-]*")
_KEEP_ITEM_RE = re.compile(r"^(?:`[^`]+`|[A-Za-z_@*][A-Za-z0-9_.@*\-]*)$")


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


def _as_text(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


@dataclass
class Query:
    esql: str
    conditions: list = field(default_factory=list)
    keep: list | None = None  # list of patterns (strings), None = no KEEP
    limit: int | None = None

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


def split_pipes(text: str):
    """Split on '|' outside double-quoted strings and back-quoted names."""
    parts, buf, quote, i = [], [], None, 0
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
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
        i += 1
    if quote:
        raise QueryError("unterminated quoted string")
    parts.append("".join(buf))
    return parts


def _tokenize_where(expr: str):
    tokens, i, n = [], 0, len(expr)
    while i < n:
        ch = expr[i]
        if ch.isspace():
            i += 1
        elif expr.startswith("==", i) or expr.startswith("!=", i):
            tokens.append(("op", expr[i:i + 2]))
            i += 2
        elif ch == '"':
            j, out = i + 1, []
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
            tokens.append(("str", "".join(out)))
            i = j + 1
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
            tokens.append(("and", word) if word.lower() == "and" else ("name", word))
            i = m.end()
    return tokens


def parse_where(expr: str):
    tokens = _tokenize_where(expr)
    if not tokens:
        raise QueryError("empty WHERE")
    conds, i = [], 0
    while True:
        if i + 3 > len(tokens):
            raise QueryError("unsupported WHERE syntax: expected `field == \"value\"`")
        (k1, name), (k2, op), (k3, val) = tokens[i:i + 3]
        if k1 != "name" or k2 != "op" or k3 not in ("str", "int"):
            raise QueryError("unsupported WHERE syntax: expected `field == \"value\"` or `field != \"value\"`")
        if name.lower() in ("or", "not"):
            raise QueryError(f"unsupported WHERE operator {name!r}")
        conds.append(Condition(name, op, val))
        i += 3
        if i == len(tokens):
            return conds
        if tokens[i][0] != "and":
            raise QueryError(f"unsupported WHERE syntax near {tokens[i][1]!r} (only `and` is supported)")
        i += 1


def parse(esql) -> Query:
    if not isinstance(esql, str):
        raise QueryError("esql must be a string")
    if not _FROM_RE.match(esql):
        raise QueryError("query must begin with FROM logs")
    segments = split_pipes(esql)
    q = Query(esql=esql)
    available = None  # columns left after a KEEP, None = everything
    for seg in segments[1:]:
        seg = seg.strip()
        if not seg:
            raise QueryError("empty command between pipes")
        m = re.match(r"(\S+)\s*(.*)", seg, re.S)
        word, rest = m.group(1), m.group(2).strip()
        cmd = word.upper()
        if cmd == "WHERE":
            conds = parse_where(rest)
            if available is not None:
                for c in conds:
                    if c.field not in available and not any(
                            fnmatch.fnmatchcase(c.field, p) for p in available if "*" in p):
                        raise QueryError(f"Unknown column [{c.field}]")
            q.conditions.extend(conds)
        elif cmd == "KEEP":
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
            q.keep = pats
            available = list(pats)
        elif cmd == "LIMIT":
            if not re.fullmatch(r"\d+", rest):
                raise QueryError("LIMIT needs a non-negative integer")
            n = int(rest)
            q.limit = n if q.limit is None else min(q.limit, n)
        elif cmd in IGNORED_COMMANDS:
            continue
        else:
            raise QueryError(f"unknown command {word!r}")
    return q
