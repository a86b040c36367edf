"""A local model of the Datadog logs intake and of the processors used by assets/logs/huntress.yaml.

It exists so that the pipeline, its test file (huntress_tests.yaml) and the detection rules are checked together
offline. It models only what these assets rely on; a processor type or grok pattern it does not know raises
`NotImplementedError`, so extending the pipeline without extending the model fails the tests.

Intake model (what Datadog does before pipelines run, for a JSON log):
  - `ddsource`, `ddtags`, `hostname`, `service`, `message` become the reserved source, tags, host, service and
    message;
  - the date comes from the first of the reserved date attributes present; `date` is consumed;
  - the status comes from `status`, else `severity`, else `level`, mapped like the status remapper does;
  - every other key is an attribute; a key with dots is a path (`"event.provider"` is `event` > `provider`).
"""

from __future__ import annotations

import copy
import json
import re
from datetime import datetime, timezone
from typing import Any

from ddsearch import Log, compile_query, lookup

DATE_ATTRIBUTES = ('@timestamp', 'timestamp', '_timestamp', 'Timestamp', 'eventTime', 'date', 'published_date')
STATUS_ATTRIBUTES = ('status', 'severity', 'level')
SYSLOG_STATUSES = ['emergency', 'alert', 'critical', 'error', 'warning', 'notice', 'info', 'debug']

SUPPORTED_PROCESSORS = {
    'pipeline',
    'date-remapper',
    'attribute-remapper',
    'category-processor',
    'status-remapper',
    'grok-parser',
}


# ---------------------------------------------------------------------------------------------------------------
# Values


def parse_date(value: Any) -> int | None:
    """Epoch milliseconds from epoch milliseconds or an ISO 8601 string (nanoseconds accepted)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if re.fullmatch(r'\d{10,}', text):
        return int(text)
    m = re.fullmatch(r'(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:?\d{2})?', text)
    if not m:
        return None
    base, fraction, zone = m.groups()
    dt = datetime.strptime(base, '%Y-%m-%dT%H:%M:%S')
    if zone and zone != 'Z':
        sign = 1 if zone[0] == '+' else -1
        hours, minutes = int(zone[1:3]), int(zone[-2:])
        offset = sign * (hours * 3600 + minutes * 60)
    else:
        offset = 0
    ms = int(dt.replace(tzinfo=timezone.utc).timestamp() * 1000) - offset * 1000
    if fraction:
        ms += int((fraction[1:] + '000')[:3])
    return ms


def status_from(value: Any) -> str | None:
    """The log status a status remapper derives from one value."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.strip().isdigit()):
        number = int(float(value))
        return SYSLOG_STATUSES[number] if 0 <= number <= 7 else None
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    if not text:
        return None
    if text.startswith('emerg') or text.startswith('f'):
        return 'emergency'
    if text.startswith('a'):
        return 'alert'
    if text.startswith('c'):
        return 'critical'
    if text.startswith('err'):
        return 'error'
    if text.startswith('w'):
        return 'warning'
    if text.startswith('n'):
        return 'notice'
    if text.startswith('i'):
        return 'info'
    if text.startswith('d') or text in ('trace', 'verbose'):
        return 'debug'
    if text.startswith('o') or text.startswith('s') or text in ('ok', 'success'):
        return 'ok'
    return 'info'


# ---------------------------------------------------------------------------------------------------------------
# Attribute paths


def unflatten(flat: dict) -> dict:
    """Nests dotted keys: {"a.b": 1, "a.c": 2} -> {"a": {"b": 1, "c": 2}}. Nested input is merged."""
    out: dict = {}
    for key, value in flat.items():
        if isinstance(value, dict):
            value = unflatten(value)
        parts = key.split('.') if '.' in key and not key.startswith('.') and not key.endswith('.') else [key]
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        last = parts[-1]
        if isinstance(node.get(last), dict) and isinstance(value, dict):
            node[last].update(value)
        else:
            node[last] = value
    return out


def get_path(attributes: dict, path: str) -> tuple[bool, Any]:
    values = lookup(attributes, path)
    if not values:
        return False, None
    return True, values[0]


def set_path(attributes: dict, path: str, value: Any) -> None:
    parts = path.split('.')
    node = attributes
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def delete_path(attributes: dict, path: str) -> None:
    parts = path.split('.')
    node = attributes
    chain = []
    for part in parts[:-1]:
        if not isinstance(node, dict) or part not in node:
            return
        chain.append((node, part))
        node = node[part]
    if isinstance(node, dict):
        node.pop(parts[-1], None)
    # drop emptied parents
    for parent, key in reversed(chain):
        if isinstance(parent.get(key), dict) and not parent[key]:
            del parent[key]


# ---------------------------------------------------------------------------------------------------------------
# Intake


def intake(raw: dict, default_source: str | None = None, extra_tags: list | None = None) -> Log:
    data = copy.deepcopy(raw)
    source = data.pop('ddsource', default_source)
    tags = list(extra_tags or [])
    ddtags = data.pop('ddtags', '')
    if ddtags:
        tags.extend(t.strip() for t in ddtags.split(',') if t.strip())
    host = data.pop('hostname', None)
    service = data.pop('service', None)
    message = data.pop('message', '')
    if not isinstance(message, str):
        message = json.dumps(message)

    timestamp = None
    for name in DATE_ATTRIBUTES:
        if name in data:
            timestamp = parse_date(data[name])
            if timestamp is not None:
                break
    data.pop('date', None)

    status = 'info'
    if 'status' in data:
        status = status_from(data.pop('status')) or 'info'
    else:
        for name in STATUS_ATTRIBUTES[1:]:
            if name in data:
                status = status_from(data[name]) or 'info'
                break

    return Log(
        attributes=unflatten(data),
        message=message,
        source=source,
        service=service,
        host=host,
        status=status,
        tags=tags,
        timestamp=timestamp,
    )


# ---------------------------------------------------------------------------------------------------------------
# Processors


def run_grok(processor: dict, log: Log) -> None:
    source = processor['source']
    if processor.get('grok', {}).get('supportRules', '').strip():
        raise NotImplementedError('grok support rules are not modeled')
    rules = [line.strip() for line in processor['grok']['matchRules'].splitlines() if line.strip()]
    for rule in rules:
        name, _, pattern = rule.partition(' ')
        m = re.fullmatch(r'%\{data:([\w.@]*):json\}', pattern.strip())
        if not m:
            raise NotImplementedError(f'grok pattern not modeled: {pattern!r}')
        text = log.message if source == 'message' else get_path(log.attributes, source)[1]
        if not isinstance(text, str):
            continue
        try:
            parsed = json.loads(text)
        except ValueError:
            continue
        if not isinstance(parsed, dict):
            continue
        target = m.group(1)
        if target:
            set_path(log.attributes, target, parsed)
        else:
            log.attributes.update(parsed)
        return


def read_source(log: Log, source: str) -> tuple[bool, Any]:
    return get_path(log.attributes, source)


def run_processor(processor: dict, log: Log) -> None:
    kind = processor['type']
    if kind not in SUPPORTED_PROCESSORS:
        raise NotImplementedError(f'processor type not modeled: {kind}')
    if not processor.get('enabled', False):
        return
    if kind == 'pipeline':
        query = processor.get('filter', {}).get('query', '')
        if compile_query(query)(log):
            for child in processor.get('processors', []):
                if child['type'] == 'pipeline':
                    raise NotImplementedError('Datadog pipelines nest one level only')
                run_processor(child, log)
        return
    if kind == 'date-remapper':
        for source in processor['sources']:
            found, value = read_source(log, source)
            if found:
                parsed = parse_date(value)
                if parsed is not None:
                    log.timestamp = parsed
                    return
        return
    if kind == 'status-remapper':
        for source in processor['sources']:
            found, value = read_source(log, source)
            if found:
                status = status_from(value)
                if status:
                    log.status = status
                    return
        return
    if kind == 'attribute-remapper':
        if processor.get('sourceType', 'attribute') != 'attribute' or processor.get('targetType', 'attribute') != 'attribute':
            raise NotImplementedError('only attribute-to-attribute remapping is modeled')
        target = processor['target']
        if target in ('host', 'message', 'service', 'status', 'date', 'source'):
            raise ValueError(f'the attribute remapper cannot write the reserved attribute {target!r}')
        for source in processor['sources']:
            found, value = read_source(log, source)
            if not found:
                continue
            exists, _ = get_path(log.attributes, target)
            if exists and not processor.get('overrideOnConflict', False):
                return
            value = copy.deepcopy(value)
            if not processor.get('preserveSource', False):
                delete_path(log.attributes, source)
            set_path(log.attributes, target, value)
            return
        return
    if kind == 'category-processor':
        for category in processor['categories']:
            if compile_query(category['filter']['query'])(log):
                set_path(log.attributes, processor['target'], category['name'])
                return
        return
    if kind == 'grok-parser':
        run_grok(processor, log)
        return


def run_pipeline(pipeline: dict, log: Log) -> bool:
    """Applies the top-level pipeline when its filter matches. Returns whether it matched."""
    if not compile_query(pipeline.get('filter', {}).get('query', ''))(log):
        return False
    for processor in pipeline.get('processors', []):
        run_processor(processor, log)
    return True


def iter_processors(processors: list):
    for processor in processors:
        yield processor
        if processor.get('type') == 'pipeline':
            yield from iter_processors(processor.get('processors', []))


def process(raw: dict, pipeline: dict, default_source: str | None = 'huntress') -> Log:
    log = intake(raw, default_source=default_source)
    run_pipeline(pipeline, log)
    return log
