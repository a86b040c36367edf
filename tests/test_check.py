"""End to end: the real check, over HTTP on loopback, against the Huntress
simulator and the intake sink."""

import json

import pytest

from datadog_checks.base import AgentCheck, ConfigurationError
from datadog_checks.dev.utils import get_metadata_metrics
from datadog_checks.huntress import HuntressCheck

from .conftest import (
    DD_API_KEY,
    HUNTRESS_KEY,
    HUNTRESS_SECRET,
    WINDOWS_QUERY,
    recent_events,
    run_until_caught_up,
    uuids_of,
)


def test_every_event_arrives_exactly_once_across_runs(make_check, dd_run_check, aggregator, huntress, sink, instance):
    events = recent_events(1000, seed=1)
    huntress.add_events(events)
    instance['max_pages_per_run'] = 2
    instance['max_window_seconds'] = 3600  # one window: the page cap alone decides the runs
    check = make_check(instance)

    runs = run_until_caught_up(dd_run_check, check, sink, len(events))
    dd_run_check(check)  # one more: nothing new may be sent

    counts = sink.uuids()
    assert set(counts) == uuids_of(events)
    assert max(counts.values()) == 1
    assert runs == 3  # 5 pages of 200 at 2 pages per run
    forwarded = aggregator.metrics('huntress.siem.logs_forwarded')
    assert sum(m.value for m in forwarded) == 1000
    assert all(m.tags == ['team:secops', 'query_name:all'] for m in forwarded)
    aggregator.assert_service_check('huntress.siem.can_connect', AgentCheck.OK, tags=['team:secops', 'query_name:all'])


def test_logs_have_datadog_shape_and_keep_ecs_fields(make_check, dd_run_check, huntress, sink, instance):
    events = recent_events(50, seed=2, providers=('windows',))
    huntress.add_events(events)
    instance['log_queries'] = [{'name': 'windows-security', 'esql_query': WINDOWS_QUERY, 'tags': ['log_type:windows']}]
    dd_run_check(make_check(instance))

    assert len(sink.logs) == 50
    by_uuid = {row['uuid']: row for row in events}
    for log in sink.logs:
        source = by_uuid[log['uuid']]
        assert log['ddsource'] == 'huntress'
        assert log['service'] == 'huntress-siem'
        # Organization enrichment is on by default (see test_inventory.py); the simulator's
        # organization list is empty here, so only the account and the row's org id are added.
        org_id = source.get('organization_id') or source.get('organization.id')
        assert set(log['ddtags'].split(',')) == {
            'team:secops',
            'query_name:windows-security',
            'log_type:windows',
            'huntress_account_id:5',
            f'huntress_org_id:{org_id}',
        }
        assert log['hostname'] == source['host.hostname']
        assert log['event.code'] == source['event.code']
        assert log['message'] == source.get('log.original') or source['message']
        assert isinstance(log['date'], int) and abs(log['date'] - _epoch_ms(source['@timestamp'])) <= 1


def _epoch_ms(iso):
    from datetime import datetime

    seconds, _, fraction = iso.rstrip('Z').partition('.')
    whole = datetime.fromisoformat(seconds + '+00:00').timestamp()
    return int(whole * 1000) + int((fraction + '000')[:3])


def test_checkpoint_survives_a_new_check_object(make_check, dd_run_check, huntress, sink, instance):
    events = recent_events(600, seed=3)
    huntress.add_events(events)
    instance['max_pages_per_run'] = 1
    instance['max_window_seconds'] = 3600
    dd_run_check(make_check(instance))
    assert len(sink.logs) == 200

    # An Agent restart: a new object, the same persistent cache, and an edited tag.
    instance['tags'] = ['team:secops', 'edited:yes']
    second = make_check(instance)
    dd_run_check(second)
    dd_run_check(second)
    counts = sink.uuids()
    assert set(counts) == uuids_of(events)
    assert max(counts.values()) == 1
    siem_bodies = [r for r in huntress.request_log if r[2] == '/v1/siem/query']
    # Three pages, plus at most one for the new second of window since; a replay would add more.
    assert 3 <= len(siem_bodies) <= 4


def test_intake_outage_keeps_checkpoint_and_next_run_delivers(make_check, dd_run_check, aggregator, huntress, sink, instance):
    events = recent_events(300, seed=4)
    huntress.add_events(events)
    check = make_check(instance)
    sink.inject('status:503', count=50)

    with pytest.raises(Exception, match='intake'):
        dd_run_check(check)
    assert sink.logs == []
    aggregator.assert_service_check('huntress.siem.can_connect', AgentCheck.CRITICAL)
    aggregator.assert_metric_has_tag('huntress.siem.errors', 'error_type:intake_unavailable')

    sink.clear_faults()
    sink.clear()
    aggregator.reset()
    dd_run_check(check)
    counts = sink.uuids()
    assert set(counts) == uuids_of(events) and max(counts.values()) == 1
    aggregator.assert_service_check('huntress.siem.can_connect', AgentCheck.OK)


def test_metrics_match_metadata(make_check, dd_run_check, aggregator, huntress, instance):
    huntress.add_events(recent_events(20, seed=5))
    dd_run_check(make_check(instance))
    for name in (
        'huntress.siem.logs_collected',
        'huntress.siem.pages_fetched',
        'huntress.siem.run_duration_seconds',
        'huntress.siem.api_call_limit',
        'huntress.siem.api_call_remaining',
        'huntress.siem.checkpoint_lag_seconds',
        'huntress.api.requests',
    ):
        aggregator.assert_metric(name)
    aggregator.assert_metrics_using_metadata(get_metadata_metrics(), check_submission_type=True)


def test_rate_limit_headers_become_gauges(make_check, dd_run_check, aggregator, huntress, instance):
    huntress.add_events(recent_events(10, seed=6))
    dd_run_check(make_check(instance))
    aggregator.assert_metric('huntress.siem.api_call_limit', value=10_000)
    remaining = aggregator.metrics('huntress.siem.api_call_remaining')[0].value
    assert remaining == huntress.remaining()


def test_query_without_keep_warns(make_check, dd_run_check, aggregator, huntress, sink, instance, caplog):
    huntress.add_events(recent_events(10, seed=7))
    instance['log_queries'] = [{'name': 'bare', 'esql_query': 'FROM logs'}]
    dd_run_check(make_check(instance))
    aggregator.assert_service_check('huntress.siem.can_connect', AgentCheck.WARNING)
    message = aggregator.service_checks('huntress.siem.can_connect')[0].message
    assert 'KEEP' in message
    assert len(sink.logs) == 10  # still forwarded: the ids are data too


@pytest.mark.parametrize(
    'edit, key',
    [
        (lambda i: i.update(huntress_secret_key=''), 'huntress_secret_key'),
        (lambda i: i.update(log_queries=[]), 'log_queries'),
        (lambda i: i.update(log_queries=[{'name': 'x', 'esql_query': 'FROM metrics'}]), 'log_queries[0].esql_query'),
        (
            lambda i: i.update(log_queries=[{'name': 'x', 'esql_query': 'FROM logs | WHERE @timestamp > "2026-01-01"'}]),
            'log_queries[0].esql_query',
        ),
        (lambda i: i.update(huntress_base_url='ftp://x'), 'huntress_base_url'),
    ],
)
def test_bad_config_names_the_key(make_check, instance, edit, key):
    edit(instance)
    with pytest.raises(ConfigurationError) as error:
        make_check(instance)
    assert f'`{key}`' in str(error.value)


@pytest.mark.parametrize(
    'edit, key, problem',
    [
        (lambda i: i.pop('huntress_api_key'), 'huntress_api_key', 'Field required'),
        # Indexes count from 0, as in the core's own errors (`log_queries[0].esql_query`).
        (lambda i: i.update(log_queries=[{'esql_query': 'FROM logs'}]), 'log_queries[0].name', 'Field required'),
        (lambda i: i.update(max_pages_per_run=0), 'max_pages_per_run', 'greater than or equal to 1'),
        (lambda i: i.update(tls_verify='maybe'), 'tls_verify', 'valid boolean'),
        # YAML has lists, not tuples.
        (lambda i: i.update(tags='env:prod'), 'tags', 'Input should be a list'),
        (lambda i: i['log_queries'][0].update(tags='a:b'), 'log_queries[0].tags', 'Input should be a list'),
        (lambda i: i.update(organizations='Acme'), 'organizations', 'Input should be a mapping'),
        # Neither an id nor a name: one mistake, one error (not one per member of the id-or-name union).
        (lambda i: i.update(organizations={'include': [{'id': 1}]}), 'organizations.include[0]', 'valid integer or string'),
    ],
)
def test_wrong_type_is_reported_by_the_config_model(make_check, instance, edit, key, problem):
    """config_models/ (generated from spec.yaml) validates the instance before the core sees it; its errors name
    the option the way the core's do, one line per mistake."""
    edit(instance)
    with pytest.raises(ConfigurationError) as error:
        make_check(instance)
    (line,) = str(error.value).splitlines()
    assert line.startswith(f'configuration error in `{key}`: ')
    assert problem in line
    assert 'tuple' not in line and ' -> ' not in line


def test_every_mistake_has_its_own_line(make_check, instance):
    instance.update(tags='env:prod', max_pages_per_run=0, log_queries=[{'name': 'x', 'esql_query': 'FROM logs'}, {}])
    with pytest.raises(ConfigurationError) as error:
        make_check(instance)
    keys = sorted(line.split('`')[1] for line in str(error.value).splitlines())
    assert keys == ['log_queries[1].esql_query', 'log_queries[1].name', 'max_pages_per_run', 'tags']


def test_dd_api_key_defaults_to_the_agent_key(make_check, dd_run_check, datadog_agent, huntress, sink, instance):
    instance.pop('dd_api_key')
    datadog_agent._config['api_key'] = DD_API_KEY
    huntress.add_events(recent_events(5, seed=8))
    dd_run_check(make_check(instance))
    assert len(sink.logs) == 5


def test_bad_credentials_fail_clearly_without_leaking_secrets(
    make_check, dd_run_check, aggregator, datadog_agent, huntress, sink, instance, caplog
):
    instance['huntress_secret_key'] = 'wrong-secret-value-123'
    with pytest.raises(Exception) as error:
        dd_run_check(make_check(instance))
    assert '401' in str(error.value) and 'huntress_secret_key' in str(error.value)
    aggregator.assert_service_check('huntress.siem.can_connect', AgentCheck.CRITICAL)
    aggregator.assert_metric_has_tag('huntress.siem.errors', 'error_type:auth')
    leaked = [HUNTRESS_KEY, 'wrong-secret-value-123', DD_API_KEY]
    texts = [str(error.value), caplog.text, json.dumps(datadog_agent._cache)]
    texts += [sc.message or '' for sc in aggregator.service_checks('huntress.siem.can_connect')]
    for text in texts:
        for secret in leaked:
            assert secret not in text


def test_secrets_never_reach_cache_or_forwarded_logs(make_check, dd_run_check, datadog_agent, huntress, sink, instance):
    huntress.add_events(recent_events(30, seed=9))
    dd_run_check(make_check(instance))
    forwarded = json.dumps(sink.logs)
    cache = json.dumps(datadog_agent._cache)
    assert datadog_agent._cache, 'the checkpoint was written'
    for secret in (HUNTRESS_KEY, HUNTRESS_SECRET, DD_API_KEY):
        assert secret not in forwarded and secret not in cache
    for request in sink.requests:
        assert request['compressed']


def test_check_class_is_importable_with_example_config():
    import os

    import yaml

    import datadog_checks.huntress as package

    example = os.path.join(os.path.dirname(package.__file__), 'data', 'conf.yaml.example')
    with open(example) as f:
        config = yaml.safe_load(f)
    assert config['instances'][0]['log_queries']
    assert HuntressCheck.__name__ == 'HuntressCheck'
