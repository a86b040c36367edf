"""The `huntress` log pipeline (assets/logs/huntress.yaml) and its test file (assets/logs/huntress_tests.yaml),
run through a local model of the Datadog intake and processors (pipeline_sim.py)."""

import copy
import json

import pytest
from assets_common import ASSETS, load_yaml
from ddsearch import compile_query, lookup
from pipeline_sim import SUPPORTED_PROCESSORS, intake, iter_processors, process, run_pipeline

TESTS_FILE = ASSETS / 'logs' / 'huntress_tests.yaml'
RESERVED_TARGETS = {'host', 'message', 'service', 'status', 'date', 'source'}


def attr(log, path):
    values = lookup(log.attributes, path)
    return values[0] if values else None


def windows_failed_logon(**overrides):
    log = {
        '@timestamp': '2026-11-20T10:00:05.123456789Z',
        'uuid': 'u-1',
        'organization_id': 4242,
        'message': 'An account failed to log on.',
        'event.provider': 'Microsoft-Windows-Security-Auditing',
        'event.code': '4625',
        'event.action': 'logon-failed',
        'event.category': ['authentication'],
        'event.outcome': 'failure',
        'host.hostname': 'WS01',
        'user.name': 'alice',
        'source.ip': '203.0.113.50',
        'log.level': 'information',
        'winlog.event_data.LogonType': '10',
        'winlog.event_data.TargetUserName': 'alice',
        'ddsource': 'huntress',
        'service': 'huntress-siem',
        'hostname': 'WS01',
        'ddtags': 'query_name:windows_security,team:secops',
        'date': 1795168805123,
    }
    log.update(overrides)
    return log


CLOUDTRAIL = {
    'eventVersion': '1.08',
    'userIdentity': {'type': 'Root', 'arn': 'arn:aws:iam::111122223333:root', 'accountId': '111122223333'},
    'eventSource': 'signin.amazonaws.com',
    'eventName': 'ConsoleLogin',
    'sourceIPAddress': '198.51.100.7',
    'userAgent': 'Mozilla/5.0',
    'responseElements': {'ConsoleLogin': 'Success'},
    'recipientAccountId': '111122223333',
}


def generic_hec(message):
    return {
        '@timestamp': '2026-11-20T10:00:41Z',
        'uuid': 'u-2',
        'event.provider': 'GenericHEC',
        'message': message,
        'ddsource': 'huntress',
        'service': 'huntress-siem',
        'date': 1795168841000,
    }


# ---------------------------------------------------------------------------------------------------------------
# Shape


def test_pipeline_file_shape(pipeline_file):
    assert pipeline_file['id'] == 'huntress'
    assert pipeline_file['metric_id'] == 'huntress'
    assert pipeline_file['backend_only'] is False
    pipeline = pipeline_file['pipeline']
    assert pipeline['type'] == 'pipeline'
    assert pipeline['enabled'] is True
    assert pipeline['filter']['query'] == 'source:huntress'


def test_processors_are_modeled_and_valid(pipeline):
    for processor in iter_processors(pipeline['processors']):
        assert processor['type'] in SUPPORTED_PROCESSORS
        assert processor.get('enabled') is True
        assert processor.get('name'), f'unnamed {processor["type"]}'
        if processor['type'] == 'pipeline':
            compile_query(processor['filter']['query'])
            assert all(child['type'] != 'pipeline' for child in processor['processors']), 'one nesting level only'
        if processor['type'] == 'attribute-remapper':
            assert processor['target'] not in RESERVED_TARGETS
            assert processor['preserveSource'] is True, 'ECS attributes stay available to users and KEEP clauses'
            assert processor['overrideOnConflict'] is False
        if processor['type'] == 'category-processor':
            for category in processor['categories']:
                compile_query(category['filter']['query'])


def test_facets_point_at_attributes_the_pipeline_produces(pipeline_file):
    tests = load_yaml(TESTS_FILE)['tests']
    for facet in pipeline_file['facets']:
        assert facet['source'] == 'log'
        assert any(
            lookup(test['result']['custom'], facet['path']) for test in tests
        ), f'no test result has the facet path {facet["path"]}'


# ---------------------------------------------------------------------------------------------------------------
# The test file


def pipeline_tests():
    return [pytest.param(test, id=f'test{i}') for i, test in enumerate(load_yaml(TESTS_FILE)['tests'])]


@pytest.mark.parametrize('test', pipeline_tests())
def test_pipeline_test_file(test, pipeline):
    raw = json.loads(test['sample'])
    log = intake(raw, default_source='huntress', extra_tags=['source:LOGS_SOURCE'])
    assert run_pipeline(pipeline, log)
    expected = test['result']
    assert log.attributes == expected['custom']
    assert log.message == expected['message']
    assert log.status == expected['status']
    assert log.timestamp == expected['timestamp']
    assert log.tags == expected['tags']
    if 'service' in expected:
        assert log.service == expected['service']


def test_pipeline_test_file_covers_every_source():
    providers = set()
    services = set()
    for test in load_yaml(TESTS_FILE)['tests']:
        raw = json.loads(test['sample'])
        providers.add(raw.get('event.provider'))
        services.add(raw.get('service'))
    assert {'Microsoft-Windows-Security-Auditing', 'Syslog-SentinelOne', 'GenericHEC'} <= providers
    assert 'huntress-incidents' in services


# ---------------------------------------------------------------------------------------------------------------
# Behaviour


def test_windows_failed_logon(pipeline):
    log = process(windows_failed_logon(), pipeline)
    assert attr(log, 'evt.name') == 'logon-failed'
    assert attr(log, 'evt.outcome') == 'failure'
    assert attr(log, 'evt.category') == ['authentication']
    assert attr(log, 'usr.name') == 'alice'
    assert attr(log, 'network.client.ip') == '203.0.113.50'
    assert attr(log, 'winlog.logon.type') == 'RemoteInteractive'
    assert attr(log, 'event.code') == '4625', 'the ECS source attribute is kept'
    assert log.status == 'info'
    assert log.host == 'WS01'
    assert log.timestamp == 1795168805123
    assert 'query_name:windows_security' in log.tags


def test_target_user_name_is_a_fallback_only(pipeline):
    without_user = windows_failed_logon()
    del without_user['user.name']
    without_user['winlog.event_data.TargetUserName'] = 'bob'
    assert attr(process(without_user, pipeline), 'usr.name') == 'bob'

    both = windows_failed_logon(**{'winlog.event_data.TargetUserName': 'bob'})
    assert attr(process(both, pipeline), 'usr.name') == 'alice'


def test_flat_and_nested_fields_give_the_same_result(pipeline):
    flat = windows_failed_logon()
    nested = {k: v for k, v in flat.items() if '.' not in k or k.startswith('@')}
    nested.update(
        {
            'event': {
                'provider': 'Microsoft-Windows-Security-Auditing',
                'code': '4625',
                'action': 'logon-failed',
                'category': ['authentication'],
                'outcome': 'failure',
            },
            'host': {'hostname': 'WS01'},
            'user': {'name': 'alice'},
            'source': {'ip': '203.0.113.50'},
            'log': {'level': 'information'},
            'winlog': {'event_data': {'LogonType': '10', 'TargetUserName': 'alice'}},
        }
    )
    a, b = process(flat, pipeline), process(nested, pipeline)
    assert a.attributes == b.attributes
    assert (a.status, a.timestamp, a.host) == (b.status, b.timestamp, b.host)


def test_generic_hec_cloudtrail(pipeline):
    log = process(generic_hec(json.dumps(CLOUDTRAIL)), pipeline)
    assert attr(log, 'hec.userIdentity.type') == 'Root'
    assert attr(log, 'usr.type') == 'Root'
    assert attr(log, 'usr.id') == 'arn:aws:iam::111122223333:root'
    assert attr(log, 'evt.name') == 'ConsoleLogin'
    assert attr(log, 'evt.outcome') == 'success'
    assert attr(log, 'network.client.ip') == '198.51.100.7'
    assert attr(log, 'http.useragent') == 'Mozilla/5.0'
    assert log.message == json.dumps(CLOUDTRAIL), 'the raw event stays in the message'


def test_generic_hec_failures(pipeline):
    failed_login = dict(CLOUDTRAIL, responseElements={'ConsoleLogin': 'Failure'})
    assert attr(process(generic_hec(json.dumps(failed_login)), pipeline), 'evt.outcome') == 'failure'
    denied = dict(CLOUDTRAIL, eventName='CreateUser', errorCode='AccessDenied', responseElements=None)
    assert attr(process(generic_hec(json.dumps(denied)), pipeline), 'evt.outcome') == 'failure'


def test_generic_hec_with_a_plain_text_message(pipeline):
    log = process(generic_hec('not json at all'), pipeline)
    assert attr(log, 'hec') is None
    assert attr(log, 'evt.name') is None
    assert log.message == 'not json at all'


def test_cloudtrail_parsing_only_applies_to_generic_hec(pipeline):
    raw = windows_failed_logon(message=json.dumps(CLOUDTRAIL))
    log = process(raw, pipeline)
    assert attr(log, 'hec') is None
    assert attr(log, 'evt.name') == 'logon-failed'


@pytest.mark.parametrize(
    'severity, status',
    [('critical', 'critical'), ('high', 'error'), ('medium', 'warning'), ('low', 'notice')],
)
def test_incident_severity_sets_status(pipeline, severity, status):
    raw = {
        'date': 1795169100000,
        'ddsource': 'huntress',
        'service': 'huntress-incidents',
        'message': 'Incident report',
        'id': 1,
        'severity': severity,
        'organization_id': 4242,
    }
    assert process(raw, pipeline).status == status


@pytest.mark.parametrize('value, status', [('High', 'error'), ('Critical', 'critical'), (3, 'error'), ('warning', 'warning')])
def test_event_severity_sets_status(pipeline, value, status):
    raw = windows_failed_logon(**{'event.severity': value})
    del raw['log.level']
    assert process(raw, pipeline).status == status


def test_log_level_sets_status(pipeline):
    assert process(windows_failed_logon(**{'log.level': 'error'}), pipeline).status == 'error'
    assert process(windows_failed_logon(**{'log.level': 'warning'}), pipeline).status == 'warning'


def test_rewritten_date_is_kept(pipeline):
    """A stale event sent with `stale_log_policy: rewrite_date` has no `@timestamp` (the check moves it to
    `huntress.original_timestamp`); its `date` (the send time) stays the log date."""
    raw = windows_failed_logon()
    original = raw.pop('@timestamp')
    raw['huntress.original_timestamp'] = original
    raw['huntress.date_rewritten'] = True
    raw['date'] = 1795300000000
    log = process(raw, pipeline)
    assert log.timestamp == 1795300000000
    assert attr(log, 'huntress.original_timestamp') == original


def test_other_sources_are_untouched(pipeline):
    raw = windows_failed_logon(ddsource='windows')
    log = intake(copy.deepcopy(raw))
    before = copy.deepcopy(log)
    assert not run_pipeline(pipeline, log)
    assert log == before
