"""The tile assets agree with the names of docs/development.md and with each other: metadata.csv, service checks, the
configuration spec and example, the manifest, the monitors and the dashboard."""

import csv
import json
import re

import pytest
import yaml
from assets_common import ASSETS, PROJECT, load_json, load_yaml
from ddsearch import compile_query

CONTRACT = (PROJECT / 'docs' / 'development.md').read_text(encoding='utf-8')
MANIFEST = load_json(PROJECT / 'manifest.json')
SPEC = load_yaml(ASSETS / 'configuration' / 'spec.yaml')
EXAMPLE_PATH = PROJECT / 'python' / 'datadog_checks' / 'huntress' / 'data' / 'conf.yaml.example'
DASHBOARD = load_json(ASSETS / 'dashboards' / 'huntress_overview.json')
SERVICE_CHECKS = load_json(ASSETS / 'service_checks.json')

METADATA_HEADER = [
    'metric_name',
    'metric_type',
    'interval',
    'unit_name',
    'per_unit_name',
    'description',
    'orientation',
    'integration',
    'short_name',
    'curated_metric',
    'sample_tags',
]


def contract_table(heading):
    """Rows (lists of cells) of the first table after a `## heading` line of the contract."""
    section = CONTRACT.split(f'## {heading}', 1)[1]
    rows = []
    started = False
    for line in section.splitlines():
        if line.startswith('|'):
            started = True
            cells = [c.strip() for c in line.strip().strip('|').split('|')]
            if set(''.join(cells)) <= set('-: '):
                continue
            rows.append(cells)
        elif started:
            break
    return rows[1:]  # drop the header


CONTRACT_METRICS = {row[0]: row[1] for row in contract_table('Metrics')}
CONTRACT_SERVICE_CHECKS = {row[0] for row in contract_table('Service checks')}
CONTRACT_ERROR_TYPES = set(
    re.findall(r'\b[a-z_]+\b', CONTRACT.split('`error_type` values:', 1)[1].split('\n\n', 1)[0])
)


def contract_options():
    names = set()
    for row in contract_table('Instance options'):
        key = row[0].split()[0]
        names.add(key.split('.')[0])
    return names


def metadata_rows():
    with open(PROJECT / 'metadata.csv', encoding='utf-8', newline='') as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def spec_instance_options():
    instances = next(o for o in SPEC['files'][0]['options'] if o.get('template') == 'instances')
    return instances['options']


# ---------------------------------------------------------------------------------------------------------------
# Contract parsing sanity: an empty parse would make the tests below pass vacuously.


def test_contract_was_parsed():
    assert len(CONTRACT_METRICS) >= 25
    assert CONTRACT_SERVICE_CHECKS == {'huntress.siem.can_connect', 'huntress.api.can_connect'}
    assert {'auth', 'rate_limited', 'intake_auth', 'deadline', 'config'} <= CONTRACT_ERROR_TYPES
    assert {'huntress_api_key', 'log_queries', 'metrics', 'incidents'} <= contract_options()


# ---------------------------------------------------------------------------------------------------------------
# metadata.csv


def test_metadata_header():
    header, _ = metadata_rows()
    assert header == METADATA_HEADER


def test_metadata_lists_every_contract_metric_with_its_type():
    _, rows = metadata_rows()
    by_name = {row['metric_name']: row for row in rows}
    assert len(by_name) == len(rows), 'duplicate metric names'
    assert set(by_name) == set(CONTRACT_METRICS)
    for name, metric_type in CONTRACT_METRICS.items():
        assert by_name[name]['metric_type'] == metric_type, name


def test_metadata_rows():
    _, rows = metadata_rows()
    for row in rows:
        assert row['integration'] == 'huntress'
        assert row['metric_name'].startswith(MANIFEST['assets']['integration']['metrics']['prefix'])
        assert row['orientation'] in ('-1', '0', '1')
        assert row['description'] and '|' not in row['description'] and row['description'].isascii()
        assert len(row['description']) <= 400
        assert row['short_name']


# ---------------------------------------------------------------------------------------------------------------
# Service checks


def test_service_checks_match_contract():
    assert {sc['check'] for sc in SERVICE_CHECKS} == CONTRACT_SERVICE_CHECKS
    for sc in SERVICE_CHECKS:
        assert sc['integration'] == MANIFEST['assets']['integration']['source_type_name']
        assert set(sc['statuses']) == {'ok', 'warning', 'critical'}


# ---------------------------------------------------------------------------------------------------------------
# Configuration spec and example


def test_spec_documents_every_contract_option():
    names = set()
    for option in spec_instance_options():
        if 'name' in option:
            names.add(option['name'])
        if option.get('template') == 'instances/default':
            names.update({'tags', 'service', 'min_collection_interval'})
    missing = contract_options() - names
    assert not missing, f'options missing from spec.yaml: {missing}'


def test_spec_marks_secrets():
    by_name = {o['name']: o for o in spec_instance_options() if 'name' in o}
    for name in ('huntress_api_key', 'huntress_secret_key', 'dd_api_key'):
        assert by_name[name].get('secret') is True, name
    for name, option in by_name.items():
        if name not in ('huntress_api_key', 'huntress_secret_key', 'dd_api_key'):
            assert not option.get('secret'), name
    assert by_name['huntress_api_key']['required'] and by_name['huntress_secret_key']['required']
    assert by_name['log_queries']['required']


def example_instance():
    return yaml.safe_load(EXAMPLE_PATH.read_text(encoding='utf-8'))['instances'][0]


def test_example_config_ships_ready_queries():
    instance = example_instance()
    assert instance['min_collection_interval'] == 60
    queries = instance['log_queries']
    names = [q['name'] for q in queries]
    assert len(set(names)) == len(names)
    providers = set()
    for query in queries:
        esql = query['esql_query']
        assert esql.startswith('FROM logs'), esql
        stages = [s.strip() for s in esql.split('|')]
        keep = [s for s in stages if s.upper().startswith('KEEP ')]
        assert len(keep) == 1, f'{query["name"]}: a KEEP clause is needed, rows carry only ids without it'
        kept = {c.strip() for c in keep[0][5:].split(',')}
        assert {'@timestamp', 'uuid', 'message'} <= kept, query['name']
        assert 'now(' not in esql.lower() and not re.search(r'where[^|]*@timestamp', esql, re.I)
        providers.update(re.findall(r'event\.provider == "([^"]+)"', esql))
    assert providers == {'Microsoft-Windows-Security-Auditing', 'Syslog-SentinelOne', 'GenericHEC'}


def test_example_config_is_in_sync_with_spec():
    """Renders the example from the spec with ddev's own code, when it is importable (the ddev virtualenv);
    scripts/validate.sh runs `ddev validate config` for the same check."""
    core = pytest.importorskip('datadog_checks.dev.tooling.configuration.core', exc_type=ImportError)
    consumers = pytest.importorskip('datadog_checks.dev.tooling.configuration.consumers', exc_type=ImportError)
    about = (PROJECT / 'python' / 'datadog_checks' / 'huntress' / '__about__.py')
    version = None
    if about.is_file():
        match = re.search(r'__version__\s*=\s*[\'"]([^\'"]+)', about.read_text(encoding='utf-8'))
        version = match.group(1) if match else None
    spec = core.ConfigSpec((ASSETS / 'configuration' / 'spec.yaml').read_text(encoding='utf-8'), source='huntress', version=version)
    spec.load()
    assert not spec.errors
    rendered = consumers.ExampleConsumer(spec.data).render()
    contents, errors = rendered['conf.yaml.example']
    assert not errors
    assert contents == EXAMPLE_PATH.read_text(encoding='utf-8'), 'run scripts/validate.sh --sync'


# ---------------------------------------------------------------------------------------------------------------
# Manifest


def test_manifest():
    assert MANIFEST['manifest_version'] == '2.0.0'
    assert MANIFEST['app_id'] == 'huntress'
    assert re.fullmatch(r'[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}', MANIFEST['app_uuid'])
    tile = MANIFEST['tile']
    assert len(tile['description']) <= 80
    assert {'Category::Security', 'Category::Log Collection'} <= set(tile['classifier_tags'])
    integration = MANIFEST['assets']['integration']
    assert integration['source_type_name'] == 'Huntress'
    assert integration['events']['creates_events'] is True
    assert integration['metrics']['prefix'] == 'huntress.'
    assert integration['metrics']['check'] == 'huntress.siem.run_duration_seconds'
    assert integration['metrics']['check'] in CONTRACT_METRICS
    assert MANIFEST['assets']['logs']['source'] == 'huntress'
    for path in (
        integration['configuration']['spec'],
        integration['metrics']['metadata_path'],
        integration['service_checks']['metadata_path'],
        *MANIFEST['assets']['dashboards'].values(),
        *MANIFEST['assets']['monitors'].values(),
    ):
        assert (PROJECT / path).is_file(), path


def test_every_monitor_file_is_declared():
    declared = {p.split('/')[-1] for p in MANIFEST['assets']['monitors'].values()}
    present = {p.name for p in (ASSETS / 'monitors').glob('*.json')}
    assert declared == present


# ---------------------------------------------------------------------------------------------------------------
# Monitors and dashboard


def metric_names_in(text):
    return set(re.findall(r'\bhuntress\.[a-z_]+\.[a-z_]+\b', text))


@pytest.mark.parametrize('path', sorted((ASSETS / 'monitors').glob('*.json')), ids=lambda p: p.stem)
def test_monitor(path):
    monitor = load_json(path)
    assert monitor['version'] == 2
    assert 'integration:huntress' in monitor['tags']
    definition = monitor['definition']
    assert definition['type'] in ('query alert', 'service check', 'log alert')
    query = definition['query']
    known = set(CONTRACT_METRICS) | CONTRACT_SERVICE_CHECKS
    assert metric_names_in(query) <= known, metric_names_in(query) - known
    assert metric_names_in(definition['message']) <= known
    if definition['type'] == 'log alert':
        search = re.match(r'logs\("(.*?)"\)', query).group(1)
        compile_query(search)
        assert 'source:huntress' in search
    else:
        assert metric_names_in(query), 'a metric or service check monitor must name one'
    thresholds = definition['options']['thresholds']
    assert 'critical' in thresholds


def test_monitors_cover_collection_health():
    queries = ' '.join(load_json(p)['definition']['query'] for p in (ASSETS / 'monitors').glob('*.json'))
    for needle in (
        'huntress.siem.can_connect',
        'huntress.siem.errors',
        'huntress.siem.api_call_remaining',
        'huntress.siem.checkpoint_lag_seconds',
        'service:huntress-incidents @severity:critical',
    ):
        assert needle in queries, needle
    assert re.search(r'logs\("source:huntress[^"]*"\).*last\("2h"\) < 1', queries)


def walk_widgets(widgets):
    for widget in widgets:
        yield widget
        yield from walk_widgets(widget['definition'].get('widgets', []))


def dashboard_queries():
    metrics, logs = [], []
    for widget in walk_widgets(DASHBOARD['widgets']):
        definition = widget['definition']
        for request in definition.get('requests', []):
            for query in request.get('queries', []):
                if query['data_source'] == 'metrics':
                    metrics.append(query['query'])
                elif query['data_source'] == 'logs':
                    logs.append((query['search']['query'], [g['facet'] for g in query.get('group_by', [])]))
            if 'query' in request and request['query'].get('data_source') == 'logs_stream':
                logs.append((request['query']['query_string'], []))
        if definition['type'] == 'check_status':
            metrics.append(definition['check'])
    return metrics, logs


def test_dashboard_references_known_metrics_and_valid_searches():
    assert {'title', 'description', 'widgets', 'template_variables', 'layout_type'} <= set(DASHBOARD)
    metrics, logs = dashboard_queries()
    known = set(CONTRACT_METRICS) | CONTRACT_SERVICE_CHECKS
    used = set().union(*(metric_names_in(q) for q in metrics))
    assert used <= known, used - known
    variables = {f'${v["name"]}' for v in DASHBOARD['template_variables']}
    for search, _ in logs:
        for token in re.findall(r'\$\w+', search):
            assert token in variables, token
        compile_query(re.sub(r'\$\w+', '', search))
        assert search.startswith('source:huntress')


def test_dashboard_covers_collection_and_security():
    metrics, logs = dashboard_queries()
    metric_text = ' '.join(metrics)
    for metric in (
        'huntress.siem.logs_forwarded',
        'huntress.siem.pages_fetched',
        'huntress.siem.run_duration_seconds',
        'huntress.siem.errors',
        'huntress.siem.api_call_remaining',
        'huntress.siem.api_call_limit',
        'huntress.siem.checkpoint_lag_seconds',
        'huntress.incidents.open',
        'huntress.incidents.open_by_organization',
        'huntress.escalations.open_by_organization',
        'huntress.escalations.overdue',
        'huntress.agents.count',
        'huntress.agents.by_platform',
    ):
        assert metric in metric_text, metric
    assert 'huntress.siem.errors' in metric_text and 'by {error_type}' in metric_text
    assert 'by {query_name}' in metric_text
    facets = {facet for _, group_by in logs for facet in group_by}
    assert {'@event.provider', '@event.category', '@huntress_org_name', 'host', '@usr.name', '@severity'} <= facets
    searches = ' '.join(search for search, _ in logs)
    assert '@event.code:4625' in searches and '@evt.outcome:failure' in searches
    assert 'service:huntress-incidents' in searches
    assert 'service:huntress-escalations' in searches
    assert 'by {huntress_org_name,severity}' in metric_text, 'open incidents and escalations by organization and severity'


def test_docs_cover_every_error_type_and_service_check():
    """The README (the tile) names the service checks and sends readers to metadata.csv for the metrics (which the
    metadata tests hold equal to the contract) and to docs/troubleshooting.md, which explains every error type."""
    readme = (PROJECT / 'README.md').read_text(encoding='utf-8')
    troubleshooting = (PROJECT / 'docs' / 'troubleshooting.md').read_text(encoding='utf-8')
    assert 'docs/troubleshooting.md' in readme.split('## Troubleshooting', 1)[1]
    for error_type in CONTRACT_ERROR_TYPES:
        assert f'`{error_type}`' in troubleshooting, error_type
    assert 'metadata.csv' in readme.split('### Metrics', 1)[1].split('### ', 1)[0]
    for check in CONTRACT_SERVICE_CHECKS:
        assert check in readme
    assert all(ord(c) <= 256 for c in readme), 'ddev readmes validation rejects non-ASCII'


# ---------------------------------------------------------------------------------------------------------------
# The Rust core accepts what the spec and the example document (skipped when the core is not built).

AGENT_CONTEXT = {'api_key': '0123456789abcdef0123456789abcdef', 'site': 'datadoghq.com', 'proxy': None, 'min_collection_interval': 900}


def core_module():
    return pytest.importorskip('datadog_checks.huntress._core', exc_type=ImportError)


def test_core_accepts_the_example_instance():
    core = core_module()
    core.Collector(json.dumps(example_instance()), AGENT_CONTEXT)


def test_core_accepts_every_spec_example_value():
    """Every option set to the example value the spec documents. The CA files (`tls_ca_cert`,
    `intake_tls_ca_cert`) are left out: the core reads them when it starts, and the examples are placeholder paths."""
    core = core_module()
    instance = {'min_collection_interval': 900}
    for option in spec_instance_options():
        if 'name' in option and 'value' in option and option['name'] not in ('tls_ca_cert', 'intake_tls_ca_cert'):
            instance[option['name']] = option['value']['example']
    assert {'huntress_api_key', 'log_queries', 'stale_log_policy', 'metrics', 'incidents'} <= set(instance)
    core.Collector(json.dumps(instance), AGENT_CONTEXT)
