"""Detection rules as code: each rule in assets/security/detection_rules/ is checked for the shape the Security
Monitoring API accepts, and evaluated against its sample logs (samples/<rule>/match.json must raise a signal,
samples/<rule>/nomatch.json must not). Sample logs are written as the check sends them and go through the
`huntress` log pipeline model first, so the rules are tested against the attributes they will really see."""

import copy

import pytest
from assets_common import RULES_DIR, SAMPLES_DIR, load_json, rule_paths
from ddsearch import SearchSyntaxError, compile_query
from pipeline_sim import process
from rule_eval import RuleError, compile_condition, evaluate, query_names, strongest

# Values the Security Monitoring API (v2) accepts for these fields.
EVALUATION_WINDOWS = {0, 60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400}
KEEP_ALIVES = {0, 60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400}
MAX_SIGNAL_DURATIONS = {0, 60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400}
SEVERITIES = {'info', 'low', 'medium', 'high', 'critical'}
AGGREGATIONS = {'count', 'cardinality', 'sum', 'max', 'new_value', 'geo_data', 'event_count', 'none'}
DETECTION_METHODS = {'threshold', 'new_value', 'anomaly_detection', 'impossible_travel', 'hardcoded', 'third_party'}
RULE_KEYS = {'name', 'message', 'queries', 'cases', 'options', 'tags', 'type', 'isEnabled', 'filters', 'hasExtendedTitle'}
QUERY_KEYS = {
    'name',
    'query',
    'groupByFields',
    'aggregation',
    'distinctFields',
    'hasOptionalGroupByFields',
    'metric',
    'metrics',
}
CASE_KEYS = {'name', 'status', 'condition', 'notifications'}
OPTION_KEYS = {
    'detectionMethod',
    'evaluationWindow',
    'keepAlive',
    'maxSignalDuration',
    'newValueOptions',
    'impossibleTravelOptions',
    'hardcodedEvaluatorType',
    'decreaseCriticalityBasedOnEnv',
    'complianceRuleOptions',
}

RULES = {path.stem: load_json(path) for path in rule_paths()}
REQUIRED_RULES = {
    'windows_brute_force_logon',
    'huntress_critical_incident',
    'huntress_incident_report',
    'huntress_escalation',
    'aws_root_console_login_generic_hec',
}


def scenarios(kind):
    out = []
    for rule_id in sorted(RULES):
        path = SAMPLES_DIR / rule_id / f'{kind}.json'
        if not path.is_file():
            continue
        for scenario in load_json(path)['scenarios']:
            out.append(pytest.param(rule_id, scenario, id=f'{rule_id}:{scenario["name"]}'))
    return out


def run(rule, logs, pipeline):
    processed = [process(copy.deepcopy(log), pipeline) for log in logs]
    return evaluate(rule, processed)


def test_required_rules_exist():
    assert REQUIRED_RULES <= set(RULES), f'missing rules: {REQUIRED_RULES - set(RULES)}'


@pytest.mark.parametrize('rule_id', sorted(RULES))
def test_rule_shape(rule_id):
    rule = RULES[rule_id]
    assert set(rule) <= RULE_KEYS, f'unknown keys: {set(rule) - RULE_KEYS}'
    assert rule['type'] == 'log_detection'
    assert isinstance(rule['isEnabled'], bool)
    assert isinstance(rule['name'], str) and rule['name'].startswith('Huntress')
    assert isinstance(rule['message'], str) and '## Goal' in rule['message'] and '## Triage' in rule['message']
    assert all(isinstance(t, str) and ':' in t for t in rule['tags'])

    options = rule['options']
    assert set(options) <= OPTION_KEYS
    assert options['detectionMethod'] in DETECTION_METHODS
    assert options['evaluationWindow'] in EVALUATION_WINDOWS
    assert options['keepAlive'] in KEEP_ALIVES
    assert options['maxSignalDuration'] in MAX_SIGNAL_DURATIONS
    assert options['keepAlive'] <= options['maxSignalDuration']

    assert rule['queries'], 'a rule needs at least one query'
    names = query_names(rule)
    assert len(set(names)) == len(names), 'query names must be unique'
    group_bys = set()
    for query in rule['queries']:
        assert set(query) <= QUERY_KEYS, f'unknown query keys: {set(query) - QUERY_KEYS}'
        assert query['aggregation'] in AGGREGATIONS
        assert query['query'].startswith('source:huntress'), 'rules only look at Huntress logs'
        compile_query(query['query'])
        assert all(not f.startswith('@') for f in query['groupByFields']), 'groupByFields take names without @'
        group_bys.add(tuple(query['groupByFields']))
    assert len(group_bys) == 1, 'all queries of a rule group by the same fields'

    assert rule['cases']
    for case in rule['cases']:
        assert set(case) <= CASE_KEYS
        assert case['status'] in SEVERITIES
        compile_condition(case['condition'], set(names))


@pytest.mark.parametrize('rule_id', sorted(RULES))
def test_rule_is_accepted_by_api_client_models(rule_id):
    """The official client's models (from the ddev environment, if installed) deserialize the rule strictly."""
    model_utils = pytest.importorskip('datadog_api_client.model_utils')
    from datadog_api_client.v2.model.security_monitoring_standard_rule_create_payload import (
        SecurityMonitoringStandardRuleCreatePayload,
    )

    payload = model_utils.validate_and_convert_types(
        copy.deepcopy(RULES[rule_id]),
        (SecurityMonitoringStandardRuleCreatePayload,),
        ['rule'],
        True,
        True,
        None,
    )
    assert isinstance(payload, SecurityMonitoringStandardRuleCreatePayload)
    unparsed = list(find_unparsed(payload, model_utils.OpenApiModel, 'rule'))
    assert not unparsed, f'the client could not parse: {unparsed}'


def find_unparsed(value, model_class, path):
    """Paths of the values the client kept as unparsed (an enum value it does not know, for example)."""
    if isinstance(value, model_class):
        store = getattr(value, '_data_store', {}) or {}
        children = [(k, v) for k, v in store.items() if isinstance(v, (model_class, list, tuple))]
        if getattr(value, '_unparsed', False) and not children:
            yield path
        for key, item in children:
            yield from find_unparsed(item, model_class, f'{path}.{key}')
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from find_unparsed(item, model_class, f'{path}[{i}]')


@pytest.mark.parametrize('rule_id', sorted(RULES))
def test_every_rule_has_samples(rule_id):
    for kind in ('match', 'nomatch'):
        path = SAMPLES_DIR / rule_id / f'{kind}.json'
        assert path.is_file(), f'missing {path.relative_to(RULES_DIR)}'
        data = load_json(path)
        assert data['scenarios'], f'{path} has no scenario'
        for scenario in data['scenarios']:
            assert scenario['logs'], f'{scenario["name"]}: no logs'
            for log in scenario['logs']:
                assert log.get('ddsource') == 'huntress', 'samples are logs as the check sends them'


@pytest.mark.parametrize('rule_id, scenario', scenarios('match'))
def test_match_samples_raise_a_signal(rule_id, scenario, pipeline):
    rule = RULES[rule_id]
    signals = run(rule, scenario['logs'], pipeline)
    assert signals, f'{scenario["name"]}: no signal'
    expected = scenario.get('expected_case')
    if expected:
        assert strongest(signals, rule).case == expected


@pytest.mark.parametrize('rule_id, scenario', scenarios('nomatch'))
def test_nomatch_samples_raise_no_signal(rule_id, scenario, pipeline):
    rule = RULES[rule_id]
    signals = run(rule, scenario['logs'], pipeline)
    assert not signals, f'{scenario["name"]}: unexpected signals {signals}'


@pytest.mark.parametrize('rule_id', sorted(RULES))
def test_nomatch_samples_are_close_misses(rule_id, pipeline):
    """A no-match sample proves little if nothing in it looks like Huntress data: at least one log of every
    no-match scenario must pass the `source:huntress` pipeline filter and carry the event provider or service
    the rule looks at."""
    data = load_json(SAMPLES_DIR / rule_id / 'nomatch.json')
    for scenario in data['scenarios']:
        processed = [process(copy.deepcopy(log), pipeline) for log in scenario['logs']]
        assert any(compile_query('source:huntress')(log) for log in processed)


@pytest.mark.parametrize('rule_id', sorted(RULES))
def test_evaluation_can_fail(rule_id, pipeline):
    """The same match samples raise nothing once the rule's queries select nothing, or its thresholds are out of
    reach: the match tests above depend on the rule, not only on the samples."""
    rule = RULES[rule_id]
    logs = [log for s in load_json(SAMPLES_DIR / rule_id / 'match.json')['scenarios'] for log in s['logs']]
    assert run(rule, logs, pipeline)

    unmatched = copy.deepcopy(rule)
    for query in unmatched['queries']:
        query['query'] += ' @huntress_test.no_such_attribute:present'
    assert not run(unmatched, logs, pipeline)

    unreachable = copy.deepcopy(rule)
    for case in unreachable['cases']:
        case['condition'] = ' && '.join(f'{name} > 100000' for name in query_names(rule))
    assert not run(unreachable, logs, pipeline)


def test_search_evaluator_rejects_unknown_syntax():
    with pytest.raises(SearchSyntaxError):
        compile_query('@attr:{a TO b}')
    with pytest.raises(SearchSyntaxError):
        compile_query('(source:huntress')


def test_condition_must_name_rule_queries():
    with pytest.raises(RuleError):
        compile_condition('a > 1 && unknown > 0', {'a'})
    with pytest.raises(RuleError):
        compile_condition('__import__("os")', {'a'})
