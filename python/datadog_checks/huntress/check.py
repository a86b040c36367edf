import importlib
import json

from datadog_checks.base import AgentCheck, ConfigurationError
from datadog_checks.base.errors import CheckException

from ._loader import load_core
from .config_models import ConfigMixin
from .lease import RunLease, lease_path

try:
    import datadog_agent
except ImportError:
    from datadog_checks.base.stubs import datadog_agent

_core = load_core()


class HuntressCheck(AgentCheck, ConfigMixin):
    """Collects Huntress Managed SIEM logs. All the work is done by the Rust core;
    this class hands it the configuration and the persistent cache, and emits what
    it reports."""

    # The core reports fully qualified names (huntress.siem.*, huntress.agents.*).
    __NAMESPACE__ = ''

    def __init__(self, name, init_config, instances):
        super().__init__(name, init_config, instances)
        # The config models (config_models/, generated from spec.yaml) report wrong types as every integration
        # does, before the core sees the instance; the core then checks the values.
        self.load_configuration_models()
        try:
            self._collector = _core.Collector(json.dumps(self.instance, default=str), self._agent_context())
        except _core.ConfigError as e:
            raise ConfigurationError(str(e)) from None

    @staticmethod
    def load_configuration_model(import_path, model_name, config, context):
        # The base class reports a model's errors as `log_queries -> 1 -> name` / `Input should be a valid tuple`;
        # here they name the option as the core does (`log_queries[0].name`, counted from 0) in YAML's words.
        try:
            package = importlib.import_module(import_path)
        except ModuleNotFoundError:
            package = None  # no models there (a subclass defined elsewhere): the base class decides, as it does
        model = getattr(package, model_name, None)
        if model is not None:
            from pydantic import ValidationError

            try:
                model.model_validate(config, context=context)
            except ValidationError as e:
                section = 'init_config.' if model_name == 'SharedConfig' else ''
                raise ConfigurationError(describe_model_errors(e.errors(), section)) from None
        return AgentCheck.load_configuration_model(import_path, model_name, config, context)

    # The Agent's logs settings the check follows, under their own datadog.yaml keys.
    _LOGS_CONFIG_KEYS = (
        'processing_rules',
        'logs_dd_url',
        'logs_no_ssl',
        'use_compression',
        'compression_kind',
        'zstd_compression_level',
        'compression_level',
    )

    def _logs_config(self):
        settings = {}
        for key in self._LOGS_CONFIG_KEYS:
            value = datadog_agent.get_config('logs_config.' + key)
            # Unset reads as None in the Agent and '' in its test stub: the core's default applies.
            if value is not None and value != '':
                settings[key] = value
        return json.dumps(settings, default=str)

    def _interval(self):
        return self.instance.get('min_collection_interval') or self.init_config.get('min_collection_interval') or 15
    def _agent_context(self):
        interval = self._interval()
        return {
            'api_key': datadog_agent.get_config('api_key'),
            'site': datadog_agent.get_config('site'),
            'proxy': datadog_agent.get_config('proxy'),
            'min_collection_interval': interval,
            'logs_config': self._logs_config(),
        }

    def persistent_cache_id(self):
        # Stable across config edits: derived from the Huntress account, not the whole instance.
        return self._collector.cache_id

    def check(self, _):
        # One collector per account at a time on this node: a second process on the same persistent cache
        # (`datadog-agent check huntress` beside the Agent) would send again what the first is sending.
        # The lease is per process: instances of this Agent on the same account still run side by side.
        lease = RunLease(self._lease_path(), check_id=self.check_id)
        outcome = lease.acquire()
        if not outcome.held:
            self._report_skipped_run(outcome)
            return
        if outcome.unprotected:
            self.log.warning('%s; this run collects without it', outcome.unprotected)
        try:
            self._collect()
        finally:
            lease.release()

    def _lease_path(self):
        # The Agent keeps the persistent cache under `run_path`, in a directory named after the check.
        check_name = ':'.join(self.check_id.split(':')[:-1]) or self.name
        return lease_path(datadog_agent.get_config('run_path'), check_name, self._collector.cache_id)

    def _report_skipped_run(self, outcome):
        message = (
            'skipped this run: another process is collecting this Huntress account from the same persistent cache '
            f'({outcome.describe_holder()}); the next run continues from its checkpoint'
        )

        self.log.warning('%s', message)
        tags = list(self.instance.get('tags') or [])
        queries = [q for q in self.instance.get('log_queries') or [] if isinstance(q, dict) and q.get('name')]
        for query in queries:
            self.service_check(
                'huntress.siem.can_connect',
                AgentCheck.WARNING,
                tags=tags + [f"query_name:{query['name']}"],
                message=message,
            )

    def _collect(self):
        try:
            report = self._collector.run(self.read_persistent_cache, self.write_persistent_cache)
        except Exception:
            raise
        except BaseException as e:
            # pyo3's PanicException derives from BaseException, which the Agent does not
            # handle. The core catches its panics itself; this is the last line.
            if type(e).__name__ != 'PanicException':
                raise
            self._report_internal_error(str(e))
            raise CheckException(f'internal error in the check: {e}') from None
        for kind, name, value, tags in report['metrics']:
            getattr(self, kind)(name, value, tags=tags)
        for name, status, tags, message in report['service_checks']:
            self.service_check(name, status, tags=tags, message=message)
        for event in report['events']:
            self.event(event)
        for level, message in report['logs']:
            getattr(self.log, level)(message)
        if report['fatal']:
            raise CheckException(report['fatal'])

    def _report_internal_error(self, message):
        tags = list(self.instance.get('tags') or [])
        self.count('huntress.siem.errors', 1, tags=tags + ['error_type:internal'])
        self.service_check('huntress.siem.can_connect', AgentCheck.CRITICAL, tags=tags, message=message)


# pydantic tags the errors of each member of a union with the member's type (`int`, `str`, a model's name).
_UNION_MEMBER_TAGS = frozenset({'int', 'str', 'float', 'bool', 'none'})
_LIST_ERRORS = frozenset({'tuple_type', 'list_type', 'set_type', 'frozen_set_type'})
_MAPPING_ERRORS = frozenset({'model_type', 'dict_type', 'model_attributes_type'})


def _is_union_member_tag(part):
    return isinstance(part, str) and (part in _UNION_MEMBER_TAGS or '[' in part or part[:1].isupper())


def option_key(loc):
    """`('log_queries', 0, 'name')` as the core names it: `log_queries[0].name` (indexes from 0)."""
    key = ''
    for part in loc:
        if isinstance(part, int):
            key += f'[{part}]'
        else:
            key += f'.{part}' if key else str(part)
    return key


def _problem(error):
    if error['type'] in _LIST_ERRORS:
        return 'Input should be a list: one `- item` line per entry, or [item, ...]'
    if error['type'] in _MAPPING_ERRORS:
        return 'Input should be a mapping: `key: value` lines'
    return error['msg']


def _expected_type(error):
    # 'Input should be a valid integer, got a number with a fractional part' -> 'integer'
    text = _problem(error).split(',')[0]
    for prefix in ('Input should be a valid ', 'Input should be an ', 'Input should be a '):
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def describe_model_errors(errors, section=''):
    """One line per mistake, as the core words its configuration errors. A value that fits no member of a union
    (`organizations.include: [{id: 1}]`: neither an id nor a name) is one mistake, not one per member."""
    grouped = {}
    for error in errors:
        loc = tuple(error['loc'])
        if loc and _is_union_member_tag(loc[-1]):
            loc = loc[:-1]
        grouped.setdefault(loc, []).append(error)
    lines = []
    for loc, group in grouped.items():
        if len(group) == 1 and tuple(group[0]['loc']) == loc:
            problem = _problem(group[0])
        else:
            expected = []
            for error in group:
                kind = _expected_type(error)
                if kind not in expected:
                    expected.append(kind)
            problem = 'Input should be a valid ' + ' or '.join(expected)
        lines.append(f'configuration error in `{section}{option_key(loc)}`: {problem}')
    return '\n'.join(lines)
