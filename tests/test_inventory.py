"""MSP context end to end: organization enrichment, agent inventory
metrics and incident reports, over HTTP against the simulator and the intake
sink. Expected values are computed here from the fixtures, not read back from
the check."""

import re
import time
from collections import Counter
from datetime import timedelta

import pytest

from datadog_checks.base import AgentCheck
from datadog_checks.dev.utils import get_metadata_metrics
from tests.sim import HuntressSimulator, fixtures
from tests.sim.timeutil import iso_seconds

from .conftest import HUNTRESS_KEY, HUNTRESS_SECRET, now_utc, recent_events

ORG_QUERY = (
    'FROM logs | KEEP @timestamp, uuid, organization_id, organization.id, organization.name, organization, '
    'message, host.hostname'
)
SEVERITY_ALERT = {'critical': 'error', 'high': 'error', 'low': 'warning'}


def norm(value):
    """Datadog tag value normalisation, as documented."""
    value = re.sub(r'[^\w\-:./]', '_', str(value).strip().lower())
    return re.sub(r'_+', '_', value).strip('_')[:200].rstrip('_')


def os_tag(os_name):
    text = (os_name or '').strip().lower()
    if text.startswith('microsoft '):
        text = text[len('microsoft ') :]
    words = ['.'.join(w.split('.')[:2]) if re.fullmatch(r'[\d.]+', w) and '.' in w else w for w in text.split()]
    return norm(' '.join(words)) or 'none'


def value_tag(value):
    if value is None:
        return 'none'
    if isinstance(value, bool):
        return 'true' if value else 'false'
    return norm(value) or 'none'


def org_tags(org, account_id=5):
    return {
        f'huntress_account_id:{account_id}',
        f"huntress_org_id:{org['id']}",
        f"huntress_org_name:{norm(org['name'])}",
        f"huntress_org_key:{norm(org['key'])}",
    }


def gauges(aggregator, name):
    """{frozenset(extra tags): value} of the last run, instance tags left out."""
    return {frozenset(t for t in m.tags if t != 'team:secops'): m.value for m in aggregator.metrics(name)}


def logs_of(sink, service):
    return [log for log in sink.logs if log.get('service') == service]


def with_org_counts(orgs, agents):
    """Organizations whose agents_count matches the agents, as the API reports it."""
    per_org = Counter(a['organization_id'] for a in agents)
    return [dict(o, agents_count=per_org.get(o['id'], 0)) for o in orgs]


# ---------------------------------------------------------------------------
# Organization enrichment
# ---------------------------------------------------------------------------


def test_logs_carry_org_tags_from_1200_organizations(make_check, dd_run_check, aggregator, huntress, sink, instance):
    orgs = fixtures.organizations(1200, seed=41)
    by_id = {o['id']: o for o in orgs}
    by_name = {o['name']: o for o in orgs}
    huntress.set_account(fixtures.account())
    huntress.set_organizations(orgs)
    events = recent_events(400, seed=42, org_ids=[o['id'] for o in orgs])
    # Shapes seen in the field: nested organization object, name only, unknown id, no organization.
    end = now_utc() - timedelta(seconds=90)
    extra = [
        {'uuid': 'nested-1', '@timestamp': iso_seconds(end), 'organization': {'id': orgs[700]['id']}, 'message': 'n'},
        {'uuid': 'name-1', '@timestamp': iso_seconds(end), 'organization.name': orgs[1100]['name'], 'message': 'by name'},
        {'uuid': 'unknown-1', '@timestamp': iso_seconds(end), 'organization_id': 7, 'message': 'unknown org'},
        {'uuid': 'none-1', '@timestamp': iso_seconds(end), 'message': 'no org'},
    ]
    huntress.add_events(events + extra)
    instance['log_queries'] = [{'name': 'all', 'esql_query': ORG_QUERY}]
    instance['max_window_seconds'] = 3600
    check = make_check(instance)
    dd_run_check(check)

    assert len(sink.logs) == 404
    base = {'team:secops', 'query_name:all'}
    for log in sink.logs:
        tags = set(log['ddtags'].split(','))
        uuid = log['uuid']
        if uuid == 'nested-1':
            org = orgs[700]
        elif uuid == 'name-1':
            org = by_name[orgs[1100]['name']]
        elif uuid == 'unknown-1':
            assert tags == base | {'huntress_account_id:5', 'huntress_org_id:7'}
            continue
        elif uuid == 'none-1':
            assert tags == base | {'huntress_account_id:5'}
            continue
        else:
            org = by_id[log.get('organization_id') or log.get('organization.id')]
        assert tags == base | org_tags(org), uuid
        assert log['huntress_org_id'] == org['id']
        assert log['huntress_org_name'] == org['name']
        assert log['huntress_org_key'] == org['key']
        assert log['huntress_account_id'] == 5

    # 1,200 organizations: three pages of 500, and the account.
    assert huntress.stats['by_path']['/v1/organizations'] == 3
    assert huntress.stats['by_path']['/v1/account'] == 1
    aggregator.assert_metric('huntress.organizations.count', value=1200, tags=['team:secops'])
    aggregator.assert_metric('huntress.api.requests', value=4, tags=['team:secops', 'feature:orgs'])
    aggregator.assert_service_check('huntress.api.can_connect', AgentCheck.OK, tags=['team:secops'])

    # Within the TTL the next runs use the cache: no more organization requests.
    aggregator.reset()
    dd_run_check(check)
    dd_run_check(make_check(instance))  # a new check object reads the persistent cache
    assert huntress.stats['by_path']['/v1/organizations'] == 3
    aggregator.assert_metric('huntress.organizations.count', value=1200)
    assert not aggregator.service_checks('huntress.api.can_connect'), 'no REST feature ran'


def test_enrichment_can_be_turned_off(make_check, dd_run_check, huntress, sink, instance):
    huntress.set_organizations(fixtures.organizations(10, seed=43))
    huntress.add_events(recent_events(20, seed=44))
    instance['enrich_with_org_tags'] = False
    dd_run_check(make_check(instance))
    assert len(sink.logs) == 20
    assert all('huntress_org' not in log['ddtags'] and 'huntress_org_id' not in log for log in sink.logs)
    assert '/v1/organizations' not in huntress.stats['by_path']


def test_failed_refresh_keeps_the_stale_cache_and_ttl_zero_refreshes_every_run(
    make_check, dd_run_check, aggregator, huntress, sink, instance, caplog
):
    orgs = fixtures.organizations(30, seed=45)
    huntress.set_organizations(orgs)
    instance['org_cache_ttl_seconds'] = 0
    instance['log_queries'] = [{'name': 'all', 'esql_query': ORG_QUERY}]
    check = make_check(instance)
    target = orgs[3]

    def run_with_one_event(uuid):
        # After the window the previous run closed (it ends at that run's whole second).
        time.sleep(1.1)
        stamp = iso_seconds(now_utc() - timedelta(seconds=1))
        huntress.add_events([{'uuid': uuid, '@timestamp': stamp, 'organization_id': target['id']}])
        aggregator.reset()
        dd_run_check(check)
        return next(log for log in sink.logs if log['uuid'] == uuid)

    first = run_with_one_event('run-1')
    assert f"huntress_org_name:{norm(target['name'])}" in first['ddtags']
    assert huntress.stats['by_path']['/v1/organizations'] == 1

    # The organization is renamed, and the next refresh fails.
    renamed = [dict(o, name=o['name'] + ' Renamed') if o['id'] == target['id'] else o for o in orgs]
    huntress.set_organizations(renamed)
    huntress.inject('status:503', count=4, path='/v1/organizations')
    second = run_with_one_event('run-2')
    assert f"huntress_org_name:{norm(target['name'])}" in second['ddtags'], 'the cached directory still enriches'
    aggregator.assert_service_check('huntress.api.can_connect', AgentCheck.WARNING)
    message = aggregator.service_checks('huntress.api.can_connect')[0].message
    assert 'using the cached one (30 organizations' in message
    assert 'refreshing the organization directory failed' in caplog.text
    aggregator.assert_metric_has_tag('huntress.siem.errors', 'error_type:server_error')

    # TTL 0: the refresh is retried on the next run (after the SIEM queries) ...
    third = run_with_one_event('run-3')
    assert f"huntress_org_name:{norm(target['name'])}" in third['ddtags']
    aggregator.assert_service_check('huntress.api.can_connect', AgentCheck.OK)
    # ... and every run after it.
    fourth = run_with_one_event('run-4')
    assert f"huntress_org_name:{norm(target['name'] + ' Renamed')}" in fourth['ddtags']
    assert huntress.stats['by_path']['/v1/account'] == 4
    assert huntress.stats['by_path']['/v1/organizations'] == 1 + 4 + 1 + 1  # 4 attempts on the failed run


def test_first_run_without_any_directory_still_collects(make_check, dd_run_check, aggregator, huntress, sink, instance):
    huntress.inject('status:403', count=1, path='/v1/account')
    huntress.add_events(recent_events(10, seed=46))
    dd_run_check(make_check(instance))
    assert len(sink.logs) == 10, 'SIEM logs are forwarded without organization names'
    assert all('huntress_org_id:' in log['ddtags'] and 'huntress_org_name' not in log['ddtags'] for log in sink.logs)
    aggregator.assert_service_check('huntress.api.can_connect', AgentCheck.CRITICAL)
    aggregator.assert_service_check('huntress.siem.can_connect', AgentCheck.OK)
    aggregator.assert_metric_has_tag('huntress.siem.errors', 'error_type:forbidden')


# ---------------------------------------------------------------------------
# Agent inventory
# ---------------------------------------------------------------------------


def expected_agent_gauges(agents, orgs, now, stale_after=86400):
    by_id = {o['id']: o for o in orgs}
    stale_before = now - timedelta(seconds=stale_after)
    from tests.sim.timeutil import parse_iso_ns

    def stale(a):
        if not a.get('last_callback_at'):
            return True
        return parse_iso_ns(a['last_callback_at']) < int(stale_before.timestamp() * 1e9)

    def breakdown(tag, key, fn=value_tag):
        return {frozenset([f'{tag}:{v}']): float(n) for v, n in Counter(fn(a.get(key)) for a in agents).items()}

    return {
        'huntress.agents.count': {frozenset(): float(len(agents))},
        'huntress.agents.isolated': {
            frozenset(): float(sum(a['firewall_status'] in ('Isolated', 'Pending Release') for a in agents))
        },
        'huntress.agents.stale': {frozenset(): float(sum(stale(a) for a in agents))},
        'huntress.agents.by_platform': breakdown('platform', 'platform'),
        'huntress.agents.by_os': breakdown('os', 'os', os_tag),
        'huntress.agents.by_version': breakdown('agent_version', 'version'),
        'huntress.agents.by_defender_status': breakdown('defender_status', 'defender_status'),
        'huntress.agents.by_firewall_status': breakdown('firewall_status', 'firewall_status'),
        'huntress.agents.tamper_protection': {
            frozenset([f'tamper_configured:{c}', f'tamper_actual:{t}']): float(n)
            for (c, t), n in Counter(
                (value_tag(a['tamper_protection_configured']), value_tag(a['tamper_protection_actual'])) for a in agents
            ).items()
        },
        'huntress.agents.by_organization': {
            frozenset([f'huntress_org_id:{oid}', f"huntress_org_name:{norm(by_id[oid]['name'])}"]): float(n)
            for oid, n in Counter(a['organization_id'] for a in agents).items()
        },
    }


def test_agent_metrics_match_the_fixtures(make_check, dd_run_check, aggregator, huntress, instance):
    now = now_utc()
    orgs = fixtures.organizations(1200, seed=51)
    agents = fixtures.agents(1300, orgs[:300], seed=52, now=now)
    huntress.set_organizations(with_org_counts(orgs, agents))
    huntress.set_agents(agents)
    instance['metrics'] = {'agents': {'enabled': True}}
    dd_run_check(make_check(instance))

    expected = expected_agent_gauges(agents, orgs, now)
    assert sum(expected['huntress.agents.isolated'].values()) > 0
    assert 0 < sum(expected['huntress.agents.stale'].values()) < 1300
    for name, values in expected.items():
        assert gauges(aggregator, name) == values, name
    assert huntress.stats['by_path']['/v1/agents'] == 3  # 1,300 agents at 500 per page
    aggregator.assert_metric('huntress.api.requests', value=3, tags=['team:secops', 'feature:agents'])
    aggregator.assert_service_check('huntress.api.can_connect', AgentCheck.OK)
    aggregator.assert_metrics_using_metadata(get_metadata_metrics(), check_submission_type=True)


def test_agent_tag_cardinality_is_capped(make_check, dd_run_check, aggregator, huntress, instance):
    orgs = fixtures.organizations(700, seed=53)
    agents = fixtures.agents(1500, orgs, seed=54)
    for i, agent in enumerate(agents):
        agent['version'] = f'1.{i % 160}.0'
        agent['organization_id'] = orgs[i % 700]['id']
    huntress.set_organizations(orgs)
    huntress.set_agents(agents)
    instance['metrics'] = {'agents': {'enabled': True}}
    dd_run_check(make_check(instance))

    versions = gauges(aggregator, 'huntress.agents.by_version')
    assert len(versions) == 100
    assert sum(versions.values()) == 1500
    assert frozenset(['agent_version:other']) in versions
    by_org = gauges(aggregator, 'huntress.agents.by_organization')
    assert len(by_org) == 500
    assert sum(by_org.values()) == 1500
    assert by_org[frozenset(['huntress_org_id:other', 'huntress_org_name:other'])] > 0


def test_agent_page_cap_submits_no_partial_counts(make_check, dd_run_check, aggregator, huntress, instance):
    orgs = fixtures.organizations(5, seed=55)
    huntress.set_organizations(orgs)
    huntress.set_agents(fixtures.agents(1100, orgs, seed=56))
    instance['metrics'] = {'agents': {'enabled': True, 'max_pages': 2}}
    dd_run_check(make_check(instance))
    assert not aggregator.metrics('huntress.agents.count')
    aggregator.assert_service_check('huntress.api.can_connect', AgentCheck.WARNING)
    assert 'metrics.agents.max_pages' in aggregator.service_checks('huntress.api.can_connect')[0].message


# ---------------------------------------------------------------------------
# Incident reports
# ---------------------------------------------------------------------------


def recent_incidents(n, orgs, agents, seed):
    """Fixture reports whose changes are spread over the last 40 minutes."""
    now = now_utc()
    reports = fixtures.incident_reports(n, orgs, agents, seed=seed, now=now)
    for i, report in enumerate(reports):
        report['updated_at'] = iso_seconds(now - timedelta(seconds=60 + i * 2))
    return reports


def test_incident_reports_become_events_and_logs_exactly_once(
    make_check, dd_run_check, aggregator, huntress, sink, instance
):
    orgs = fixtures.organizations(40, seed=61)
    agents = fixtures.agents(300, orgs, seed=62)
    reports = recent_incidents(1100, orgs, agents, seed=63)
    org_names = {o['id']: o['name'] for o in orgs}
    huntress.set_organizations(orgs)
    huntress.set_agents(agents)
    huntress.set_incident_reports(reports)
    instance['incidents'] = {'enabled': True}
    check = make_check(instance)
    dd_run_check(check)

    events = aggregator.events
    assert len(events) == 1100
    assert len({e['aggregation_key'] for e in events}) == 1100
    by_id = {r['id']: r for r in reports}
    for event in events:
        report = by_id[int(event['aggregation_key'].rsplit('-', 1)[1])]
        assert event['alert_type'] == ('success' if report['status'] in ('closed', 'dismissed') else SEVERITY_ALERT[report['severity']])
        assert event['msg_title'] == f"Huntress incident report: {report['subject']}"
        assert len(event['msg_text']) <= 4000
        assert report['summary'] in event['msg_text']
        expected = {
            'team:secops',
            f"huntress_org_id:{report['organization_id']}",
            f"huntress_org_name:{norm(org_names[report['organization_id']])}",
            f"severity:{report['severity']}",
            f"incident_status:{report['status']}",
            f"platform:{report['platform']}",
        } | {f'indicator_type:{t}' for t in report['indicator_types']}
        assert set(event['tags']) == expected

    logs = logs_of(sink, 'huntress-incidents')
    assert len(logs) == 1100 and len({log['id'] for log in logs}) == 1100
    for log in logs[:50]:
        report = by_id[log['id']]
        assert log['ddsource'] == 'huntress'
        assert log['severity'] == report['severity']
        assert log['incident_status'] == report['status']
        assert log['huntress.incident_change'] == 'new'
        assert log['huntress_org_name'] == org_names[report['organization_id']]

    severities = Counter(r['severity'] for r in reports)
    for severity in ('low', 'high', 'critical'):
        aggregator.assert_metric(
            'huntress.incidents.collected', value=severities[severity], tags=['team:secops', f'severity:{severity}']
        )
    open_counts = Counter(r['severity'] for r in reports if r['status'] == 'sent')
    assert gauges(aggregator, 'huntress.incidents.open') == {
        frozenset([f'severity:{s}']): float(open_counts[s]) for s in ('low', 'high', 'critical')
    }
    # Three pages of changes (1,100 at 500 per page), one page of open reports.
    assert huntress.stats['by_path']['/v1/incident_reports'] == 4
    aggregator.assert_metrics_using_metadata(get_metadata_metrics(), check_submission_type=True)

    # The second run sends nothing again.
    aggregator.reset()
    dd_run_check(check)
    assert aggregator.events == []
    assert len(logs_of(sink, 'huntress-incidents')) == 1100
    aggregator.assert_metric('huntress.incidents.collected', value=0, tags=['team:secops', 'severity:critical'])

    # Closing one open report is exactly one new event and one new log.
    target = next(r for r in reports if r['status'] == 'sent' and r['severity'] == 'critical')
    huntress.update_incident_report(target['id'], status='closed')
    aggregator.reset()
    dd_run_check(make_check(instance))  # a new check object: the dedup state is in the persistent cache
    assert len(aggregator.events) == 1
    event = aggregator.events[0]
    assert event['aggregation_key'] == f"huntress-incident-{target['id']}"
    assert event['alert_type'] == 'success'
    assert 'closed' in event['msg_title']
    new_logs = logs_of(sink, 'huntress-incidents')[1100:]
    assert [(log['id'], log['incident_status'], log['huntress.incident_change']) for log in new_logs] == [
        (target['id'], 'closed', 'status_changed')
    ]
    aggregator.assert_metric('huntress.incidents.collected', value=1, tags=['team:secops', 'severity:critical'])
    aggregator.assert_metric(
        'huntress.incidents.open', value=open_counts['critical'] - 1, tags=['team:secops', 'severity:critical']
    )


def test_incident_checkpoint_waits_for_the_intake(make_check, dd_run_check, aggregator, huntress, sink, instance):
    orgs = fixtures.organizations(5, seed=64)
    agents = fixtures.agents(20, orgs, seed=65)
    reports = recent_incidents(30, orgs, agents, seed=66)
    huntress.set_organizations(orgs)
    huntress.set_incident_reports(reports)
    instance['incidents'] = {'enabled': True}
    check = make_check(instance)
    sink.inject('status:503', count=5)  # the incident batch: five attempts
    dd_run_check(check)
    assert aggregator.events == [] and logs_of(sink, 'huntress-incidents') == []
    aggregator.assert_service_check('huntress.api.can_connect', AgentCheck.WARNING)

    aggregator.reset()
    dd_run_check(check)
    assert len(aggregator.events) == 30
    assert len(logs_of(sink, 'huntress-incidents')) == 30


# ---------------------------------------------------------------------------
# Budget
# ---------------------------------------------------------------------------


def test_small_rate_limit_serves_siem_first(make_check, dd_run_check, aggregator, sink, instance, caplog):
    """10 requests per minute: organizations bootstrap (2), incidents (2, read
    before SIEM within their share) and SIEM (5 pages) fit; agents (2 pages + 1
    kept for SIEM) are deferred, and no request is throttled."""
    with HuntressSimulator(api_key=HUNTRESS_KEY, secret_key=HUNTRESS_SECRET, rate_limit=10) as small:
        orgs = fixtures.organizations(20, seed=71)
        agents = fixtures.agents(600, orgs, seed=72)
        small.set_organizations(with_org_counts(orgs, agents))
        small.set_agents(agents)
        small.set_incident_reports(recent_incidents(40, orgs, agents, seed=73))
        events = recent_events(1000, seed=74, org_ids=[o['id'] for o in orgs])
        small.add_events(events)
        instance.update(
            huntress_base_url=small.url,
            max_window_seconds=3600,
            incidents={'enabled': True},
            metrics={'agents': {'enabled': True}},
        )
        caplog.set_level('INFO')
        dd_run_check(make_check(instance))

        siem_logs = [log for log in sink.logs if log.get('service') == 'huntress-siem']
        assert len({log['uuid'] for log in siem_logs}) == 1000, 'every SIEM page was read'
        assert all('huntress_org_name:' in log['ddtags'] for log in siem_logs)
        assert len(logs_of(sink, 'huntress-incidents')) == 40
        assert not aggregator.metrics('huntress.agents.count')
        assert small.stats['by_path'].get('/v1/agents', 0) == 0
        assert small.stats['rate_limited'] == 0 and small.stats['throttled'] == 0
        assert 'agents deferred to a later run' in caplog.text
        summary = next(line for line in caplog.text.splitlines() if 'Huntress requests:' in line)
        assert 'siem=5 incidents=2 agents=0 orgs=2 (of 10 per minute), deferred: agents' in summary
        for feature, value in (('siem', 5), ('incidents', 2), ('agents', 0), ('orgs', 2)):
            aggregator.assert_metric('huntress.api.requests', value=value, tags=['team:secops', f'feature:{feature}'])
        aggregator.assert_service_check('huntress.api.can_connect', AgentCheck.OK)
        aggregator.assert_service_check('huntress.siem.can_connect', AgentCheck.OK)


@pytest.mark.parametrize('path', ['/v1/agents', '/v1/incident_reports'])
def test_a_failing_rest_feature_warns_without_stopping_the_rest(
    make_check, dd_run_check, aggregator, huntress, sink, instance, path
):
    orgs = fixtures.organizations(5, seed=81)
    agents = fixtures.agents(50, orgs, seed=82)
    huntress.set_organizations(orgs)
    huntress.set_agents(agents)
    huntress.set_incident_reports(recent_incidents(10, orgs, agents, seed=83))
    huntress.add_events(recent_events(10, seed=84))
    huntress.inject('status:403', count=1, path=path)
    instance.update(incidents={'enabled': True}, metrics={'agents': {'enabled': True}})
    dd_run_check(make_check(instance))
    aggregator.assert_service_check('huntress.api.can_connect', AgentCheck.WARNING)
    assert path in aggregator.service_checks('huntress.api.can_connect')[0].message
    aggregator.assert_service_check('huntress.siem.can_connect', AgentCheck.OK)
    assert len([log for log in sink.logs if log.get('service') == 'huntress-siem']) == 10
    aggregator.assert_metric_has_tag('huntress.siem.errors', 'error_type:forbidden')
    if path == '/v1/agents':
        assert len(aggregator.events) == 10
    else:
        aggregator.assert_metric('huntress.agents.count', value=50)
