"""A small evaluator for the subset of the Datadog log search syntax used by this integration's assets.

Supported:
  - reserved attributes: `source:`, `service:`, `host:`, `status:`
  - tags: `key:value` for any other key without `@` (matched case-insensitively, as tags are lowercased)
  - attributes: `@path.to.attr:value`; the path walks nested objects and also matches flat dotted keys
  - values: bare words, "quoted phrases", `*` and `?` wildcards, `\\` escapes, `@attr:*` (exists),
    grouped values `@attr:(a OR b)`, numeric comparisons `@attr:>5` (`>`, `>=`, `<`, `<=`) and ranges `[a TO b]`
  - boolean logic: implicit AND, `AND`, `OR`, `NOT`, `-term`, parentheses (OR binds weaker than AND)
  - free text (a term without `key:`) matches the message, case-insensitively

It does not claim to cover the whole syntax: anything it does not understand raises `SearchSyntaxError`, so a rule
or pipeline that uses more of the syntax fails its tests instead of passing silently.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any, Callable

RESERVED = ('source', 'service', 'host', 'status')


class SearchSyntaxError(ValueError):
    pass


# ---------------------------------------------------------------------------------------------------------------
# Log model


@dataclass
class Log:
    """A log as Datadog holds it after intake: reserved fields apart, attributes nested."""

    attributes: dict = field(default_factory=dict)
    message: str = ''
    source: str | None = None
    service: str | None = None
    host: str | None = None
    status: str = 'info'
    tags: list = field(default_factory=list)
    timestamp: int | None = None  # epoch milliseconds


def lookup(attributes: Any, path: str) -> list:
    """All values found at a dotted path, walking nested objects and flat dotted keys (`a.b` as one key)."""
    found: list = []

    def walk(node: Any, parts: list[str]) -> None:
        if not parts:
            found.append(node)
            return
        if isinstance(node, list):
            for item in node:
                walk(item, parts)
            return
        if not isinstance(node, dict):
            return
        for i in range(1, len(parts) + 1):
            key = '.'.join(parts[:i])
            if key in node:
                walk(node[key], parts[i:])

    walk(attributes, path.split('.') if path else [])
    return found


def flatten_values(values: list) -> list:
    out: list = []
    for value in values:
        if isinstance(value, list):
            out.extend(flatten_values(value))
        else:
            out.append(value)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer

SPECIAL = set('():')


@dataclass
class Token:
    kind: str  # LPAREN, RPAREN, WORD, PHRASE, EOF
    text: str
    raw: str = ''


def tokenize(query: str) -> list[Token]:
    tokens: list[Token] = []
    i = 0
    n = len(query)
    while i < n:
        c = query[i]
        if c.isspace():
            i += 1
            continue
        if c == '(':
            tokens.append(Token('LPAREN', c))
            i += 1
            continue
        if c == ')':
            tokens.append(Token('RPAREN', c))
            i += 1
            continue
        if c == '"':
            j = i + 1
            buf = []
            while j < n and query[j] != '"':
                if query[j] == '\\' and j + 1 < n:
                    buf.append(query[j + 1])
                    j += 2
                    continue
                buf.append(query[j])
                j += 1
            if j >= n:
                raise SearchSyntaxError(f'unterminated quote in {query!r}')
            tokens.append(Token('PHRASE', ''.join(buf), query[i : j + 1]))
            i = j + 1
            continue
        # A word runs to whitespace or a parenthesis; `key:(` is split so that the group is parsed.
        # A range `[a TO b]` is kept as one word.
        j = i
        buf = []
        raw_start = i
        while j < n:
            ch = query[j]
            if ch == '\\' and j + 1 < n:
                buf.append('\\' + query[j + 1])
                j += 2
                continue
            if ch == '[':
                end = query.find(']', j)
                if end < 0:
                    raise SearchSyntaxError(f'unterminated range in {query!r}')
                buf.append(query[j : end + 1])
                j = end + 1
                continue
            if ch.isspace() or ch in '()':
                break
            if ch == '"' and buf and buf[-1].endswith(':'):
                # key:"quoted value"
                end = j + 1
                quoted = []
                while end < n and query[end] != '"':
                    if query[end] == '\\' and end + 1 < n:
                        quoted.append('\\' + query[end + 1])
                        end += 2
                        continue
                    quoted.append(query[end])
                    end += 1
                if end >= n:
                    raise SearchSyntaxError(f'unterminated quote in {query!r}')
                buf.append('"' + ''.join(quoted) + '"')
                j = end + 1
                continue
            buf.append(ch)
            j += 1
        tokens.append(Token('WORD', ''.join(buf), query[raw_start:j]))
        i = j
    tokens.append(Token('EOF', ''))
    return tokens


# ---------------------------------------------------------------------------------------------------------------
# AST

Node = Callable[[Log], bool]


def unescape(text: str) -> str:
    return re.sub(r'\\(.)', r'\1', text)


def split_key(word: str) -> tuple[str | None, str]:
    """Splits `key:value` on the first unescaped colon."""
    i = 0
    while i < len(word):
        if word[i] == '\\':
            i += 2
            continue
        if word[i] == ':':
            return word[:i], word[i + 1 :]
        i += 1
    return None, word


def glob_regex(pattern: str, case_sensitive: bool) -> re.Pattern:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == '\\' and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if c == '*':
            out.append('.*')
        elif c == '?':
            out.append('.')
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile('^' + ''.join(out) + '$', 0 if case_sensitive else re.IGNORECASE | re.DOTALL)


def as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def value_text(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def make_value_matcher(raw: str) -> Callable[[Any], bool]:
    """A predicate over one attribute value, from the value part of `key:value`."""
    if raw == '':
        raise SearchSyntaxError('empty value')
    if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
        literal = unescape(raw[1:-1])
        return lambda v: value_text(v) == literal
    m = re.fullmatch(r'(>=|<=|>|<)(.+)', raw)
    if m:
        op, bound_text = m.groups()
        bound = as_number(unescape(bound_text))
        if bound is None:
            raise SearchSyntaxError(f'comparison needs a number: {raw!r}')
        ops = {
            '>': lambda a: a > bound,
            '>=': lambda a: a >= bound,
            '<': lambda a: a < bound,
            '<=': lambda a: a <= bound,
        }[op]
        return lambda v: (n := as_number(v)) is not None and ops(n)
    m = re.fullmatch(r'\[(\S+) TO (\S+)\]', raw)
    if m:
        low, high = m.groups()
        lo = float('-inf') if low == '*' else as_number(low)
        hi = float('inf') if high == '*' else as_number(high)
        if lo is None or hi is None:
            raise SearchSyntaxError(f'range needs numbers: {raw!r}')
        return lambda v: (n := as_number(v)) is not None and lo <= n <= hi
    if '[' in raw or ']' in raw or '{' in raw or '}' in raw:
        raise SearchSyntaxError(f'unsupported value syntax: {raw!r}')
    if any(c in raw.replace('\\*', '').replace('\\?', '') for c in '*?'):
        pattern = glob_regex(raw, case_sensitive=True)
        return lambda v: (t := value_text(v)) is not None and bool(pattern.match(t))
    literal = unescape(raw)
    return lambda v: value_text(v) == literal


def field_node(key: str, matcher: Callable[[Any], bool]) -> Node:
    if key.startswith('@'):
        path = unescape(key[1:])
        if not path:
            raise SearchSyntaxError('empty attribute name')

        def attr(log: Log) -> bool:
            return any(matcher(v) for v in flatten_values(lookup(log.attributes, path)))

        return attr
    name = unescape(key)
    if name in RESERVED:

        def reserved(log: Log) -> bool:
            value = getattr(log, name)
            return value is not None and matcher(value)

        return reserved

    if name == '*':
        raise SearchSyntaxError('`*:` searches are not supported')

    def tag(log: Log) -> bool:
        for t in log.tags:
            k, _, v = t.partition(':')
            if k.lower() == name.lower() and (matcher(v) or matcher(v.lower())):
                return True
        return False

    return tag


def text_node(raw: str, phrase: bool) -> Node:
    text = raw if phrase else unescape(raw)
    if not phrase and any(c in raw for c in '*?'):
        pattern = glob_regex(raw, case_sensitive=False)
        return lambda log: any(pattern.match(word) for word in re.split(r'\s+', log.message or ''))
    needle = text.lower()
    return lambda log: needle in (log.message or '').lower()


class Parser:
    def __init__(self, query: str):
        self.query = query
        self.tokens = tokenize(query)
        self.pos = 0

    def peek(self) -> Token:
        return self.tokens[self.pos]

    def take(self) -> Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def parse(self) -> Node:
        if self.peek().kind == 'EOF':
            return lambda log: True
        node = self.parse_or()
        if self.peek().kind != 'EOF':
            raise SearchSyntaxError(f'unexpected {self.peek().text!r} in {self.query!r}')
        return node

    def parse_or(self) -> Node:
        nodes = [self.parse_and()]
        while self.peek().kind == 'WORD' and self.peek().text == 'OR':
            self.take()
            nodes.append(self.parse_and())
        if len(nodes) == 1:
            return nodes[0]
        return lambda log: any(n(log) for n in nodes)

    def parse_and(self) -> Node:
        nodes = [self.parse_not()]
        while True:
            token = self.peek()
            if token.kind in ('EOF', 'RPAREN') or (token.kind == 'WORD' and token.text == 'OR'):
                break
            if token.kind == 'WORD' and token.text == 'AND':
                self.take()
            nodes.append(self.parse_not())
        if len(nodes) == 1:
            return nodes[0]
        return lambda log: all(n(log) for n in nodes)

    def parse_not(self) -> Node:
        token = self.peek()
        if token.kind == 'WORD' and token.text == 'NOT':
            self.take()
            inner = self.parse_not()
            return lambda log: not inner(log)
        if token.kind == 'WORD' and token.text == '-' and self.tokens[self.pos + 1].kind == 'LPAREN':
            self.take()
            inner = self.parse_primary()
            return lambda log: not inner(log)
        if token.kind == 'WORD' and token.text.startswith('-') and len(token.text) > 1:
            self.take()
            inner = self.term(Token('WORD', token.text[1:]))
            return lambda log: not inner(log)
        return self.parse_primary()

    def parse_primary(self) -> Node:
        token = self.take()
        if token.kind == 'LPAREN':
            node = self.parse_or()
            if self.take().kind != 'RPAREN':
                raise SearchSyntaxError(f'missing ) in {self.query!r}')
            return node
        if token.kind == 'PHRASE':
            return text_node(token.text, phrase=True)
        if token.kind == 'WORD':
            if token.text in ('AND', 'OR'):
                raise SearchSyntaxError(f'misplaced {token.text} in {self.query!r}')
            return self.term(token)
        raise SearchSyntaxError(f'unexpected {token.text or token.kind!r} in {self.query!r}')

    def term(self, token: Token) -> Node:
        key, value = split_key(token.text)
        if key is None:
            return text_node(token.text, phrase=False)
        if not key:
            raise SearchSyntaxError(f'empty key in {token.text!r}')
        if value == '':
            # `key:(a OR b)` or `key:"phrase"` split by the tokenizer
            nxt = self.peek()
            if nxt.kind == 'LPAREN':
                self.take()
                matcher = self.value_group()
                return field_node(key, matcher)
            if nxt.kind == 'PHRASE':
                self.take()
                return field_node(key, make_value_matcher('"' + nxt.text.replace('"', '\\"') + '"'))
            raise SearchSyntaxError(f'missing value after {token.text!r}')
        return field_node(key, make_value_matcher(value))

    def value_group(self) -> Callable[[Any], bool]:
        """Values inside `key:( ... )`: OR, AND and NOT between values."""

        def parse_or():
            items = [parse_and()]
            while self.peek().kind == 'WORD' and self.peek().text == 'OR':
                self.take()
                items.append(parse_and())
            return items[0] if len(items) == 1 else (lambda v: any(i(v) for i in items))

        def parse_and():
            items = [parse_unary()]
            while True:
                token = self.peek()
                if token.kind in ('RPAREN', 'EOF') or (token.kind == 'WORD' and token.text == 'OR'):
                    break
                if token.kind == 'WORD' and token.text == 'AND':
                    self.take()
                items.append(parse_unary())
            return items[0] if len(items) == 1 else (lambda v: all(i(v) for i in items))

        def parse_unary():
            token = self.take()
            if token.kind == 'WORD' and token.text == 'NOT':
                inner = parse_unary()
                return lambda v: not inner(v)
            if token.kind == 'LPAREN':
                inner = parse_or()
                if self.take().kind != 'RPAREN':
                    raise SearchSyntaxError(f'missing ) in {self.query!r}')
                return inner
            if token.kind == 'PHRASE':
                return make_value_matcher('"' + token.text.replace('"', '\\"') + '"')
            if token.kind == 'WORD':
                return make_value_matcher(token.text)
            raise SearchSyntaxError(f'unexpected {token.text or token.kind!r} in value group of {self.query!r}')

        matcher = parse_or()
        if self.take().kind != 'RPAREN':
            raise SearchSyntaxError(f'missing ) in {self.query!r}')
        return matcher


def compile_query(query: str) -> Node:
    return Parser(query).parse()


def matches(query: str, log: Log) -> bool:
    return compile_query(query)(log)
