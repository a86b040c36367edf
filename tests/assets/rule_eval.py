"""Evaluates Cloud SIEM log detection rules (threshold method) over a list of processed logs.

Model of the threshold method:
  - each query selects logs with its search query and splits them by its `groupByFields`; a log missing a
    group-by field is ignored, unless `hasOptionalGroupByFields` is true (the value is then `N/A`);
  - `aggregation: count` counts logs; `cardinality` counts distinct values of `distinctFields`;
  - for every group and every instant a selected log arrives, each query's value is computed over the
    `evaluationWindow` seconds ending at that instant (a sliding window), and the cases are tried in order:
    the first whose condition holds raises a signal with the case's status.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from ddsearch import Log, compile_query, lookup

RESERVED_GROUP_FIELDS = ('host', 'service', 'source', 'status')


class RuleError(ValueError):
    pass


@dataclass(frozen=True)
class Signal:
    case: str
    status: str
    group: tuple
    at: int


def group_value(log: Log, name: str):
    if name in RESERVED_GROUP_FIELDS:
        return getattr(log, name)
    values = lookup(log.attributes, name)
    if not values:
        return None
    value = values[0]
    return tuple(value) if isinstance(value, list) else value


def compile_condition(condition: str, names: set[str]):
    """A case condition (`a > 10 && b > 0`) as a Python callable over {query name: value}."""
    text = condition.replace('&&', ' and ').replace('||', ' or ')
    text = re.sub(r'!(?!=)', ' not ', text)
    try:
        tree = ast.parse(text, mode='eval')
    except SyntaxError as e:
        raise RuleError(f'cannot parse condition {condition!r}: {e}') from e
    allowed = (
        ast.Expression,
        ast.BoolOp,
        ast.And,
        ast.Or,
        ast.UnaryOp,
        ast.Not,
        ast.USub,
        ast.Compare,
        ast.Gt,
        ast.GtE,
        ast.Lt,
        ast.LtE,
        ast.Eq,
        ast.NotEq,
        ast.BinOp,
        ast.Add,
        ast.Sub,
        ast.Mult,
        ast.Div,
        ast.Name,
        ast.Load,
        ast.Constant,
    )
    for node in ast.walk(tree):
        if not isinstance(node, allowed):
            raise RuleError(f'unsupported element {type(node).__name__} in condition {condition!r}')
        if isinstance(node, ast.Name) and node.id not in names:
            raise RuleError(f'condition {condition!r} names {node.id!r}, which is not a query name of the rule')
        if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float)):
            raise RuleError(f'condition {condition!r} holds a non-numeric constant')
    code = compile(tree, '<condition>', 'eval')
    return lambda values: bool(eval(code, {'__builtins__': {}}, dict(values)))  # noqa: S307 - checked AST


def query_names(rule: dict) -> list[str]:
    names = []
    for i, query in enumerate(rule['queries']):
        names.append(query.get('name') or chr(ord('a') + i))
    return names


def evaluate(rule: dict, logs: list[Log]) -> list[Signal]:
    if rule.get('type') != 'log_detection':
        raise RuleError('only log_detection rules are modeled')
    options = rule['options']
    if options.get('detectionMethod') != 'threshold':
        raise RuleError('only the threshold detection method is modeled')
    window_ms = int(options['evaluationWindow']) * 1000
    names = query_names(rule)
    cases = [(case, compile_condition(case['condition'], set(names))) for case in rule['cases']]

    # Per query: list of (timestamp, group, distinct value)
    selected: dict[str, list] = {}
    groups: set[tuple] = set()
    instants: set[int] = set()
    for name, query in zip(names, rule['queries']):
        if query.get('aggregation') not in ('count', 'cardinality'):
            raise RuleError(f'aggregation {query.get("aggregation")!r} is not modeled')
        matcher = compile_query(query['query'])
        fields = query.get('groupByFields', [])
        optional = query.get('hasOptionalGroupByFields', False)
        rows = []
        for log in logs:
            if log.timestamp is None:
                raise RuleError('every sample log needs a date')
            if not matcher(log):
                continue
            group = []
            skip = False
            for field in fields:
                value = group_value(log, field)
                if value is None:
                    if not optional:
                        skip = True
                        break
                    value = 'N/A'
                group.append(value)
            if skip:
                continue
            distinct = None
            if query.get('aggregation') == 'cardinality':
                distinct = tuple(group_value(log, f) for f in query.get('distinctFields', []))
            rows.append((log.timestamp, tuple(group), distinct))
            groups.add(tuple(group))
            instants.add(log.timestamp)
        selected[name] = rows

    signals = []
    for group in sorted(groups, key=repr):
        for instant in sorted(instants):
            values = {}
            for name, query in zip(names, rule['queries']):
                in_window = [r for r in selected[name] if r[1] == group and instant - window_ms < r[0] <= instant]
                if query['aggregation'] == 'count':
                    values[name] = len(in_window)
                else:
                    values[name] = len({r[2] for r in in_window})
            for case, condition in cases:
                if condition(values):
                    signals.append(Signal(case.get('name', ''), case['status'], group, instant))
                    break
    return signals


def strongest(signals: list[Signal], rule: dict) -> Signal | None:
    """The signal of the earliest-listed case among those raised (the case a Datadog signal ends up with)."""
    order = {case.get('name', ''): i for i, case in enumerate(rule['cases'])}
    if not signals:
        return None
    return min(signals, key=lambda s: (order.get(s.case, len(order)), s.at))
