"""The SOC feeds end to end, over HTTP against the simulator and the intake
sink: incident reports and escalations ahead of a SIEM backlog, escalations and
signals delivered exactly once across restarts and intake outages, and the
organization scope applied to every feed. Expected values are computed here
from the fixtures, not read back from the check."""

import re
from collections import Counter
from datetime import timedelta

import pytest

from datadog_checks.base import AgentCheck
from datadog_checks.dev.utils import get_metadata_metrics
from tests.sim import fixtures
from tests.sim.timeutil import iso_seconds

from .conftest import now_utc, recent_events
from .test_inventory import gauges, logs_of, norm, recent_incidents

SEVERITY_ALERT = {'critical': 'error', 'high': 'error', 'low': 'warning'}


def recent_escalations(n, orgs, seed):
    """Fixture escalations whose changes are spread over the last 30 minutes."""
    now = now_utc()
    items = fixtures.escalations(n, orgs, seed=seed, now=now)
    for i, item in enumerate(items):
        item['updated_at'] = iso_seconds(now - timedelta(seconds=60 + i * 3))
    return items


def recent_signals(n, orgs, agents, seed, newest_seconds_ago=60):
    """Fixture signals investigated over the last half hour."""
    now = now_utc()
    items = fixtures.signals(n, orgs, agents, seed=seed, now=now)
    for i, item in enumerate(items):
        item['investigated_at'] = iso_seconds(now - timedelta(seconds=newest_seconds_ago + i * 5))
    return items


def events_with_key(aggregator, prefix):
    return [e for e in aggregator.events if e['aggregation_key'].startswith(prefix)]


def summary_line(caplog):
    return next(line for line in reversed(caplog.text.splitlines()) if 'Huntress requests:' in line)


# ---------------------------------------------------------------------------
# Incidents first
# ---------------------------------------------------------------------------


def test_a_critical_incident_overtakes_a_20000_event_backlog(
    make_check, dd_run_check, aggregator, huntress, sink, instance, caplog
):
    orgs = fixtures.organizations(5, seed=101)
    agents = fixtures.agents(20, orgs, seed=102)
    huntress.set_organizations(orgs)
    huntress.set_agents(agents)
    huntress.add_events(recent_events(20_000, minutes=50, seed=103, org_ids=[o['id'] for o in orgs]))
    instance.update(
        max_window_seconds=3600,
        max_pages_per_run=20,
        incidents={'enabled': True},
        escalations={'enabled': True},
    )
    caplog.set_level('INFO')
    check = make_check(instance)
    dd_run_check(check)
    assert len(sink.uuids()) == 4_000, 'the backlog is draining: 20 pages of 200'

    report = fixtures.incident_reports(1, orgs, agents, seed=104, now=now_utc())[0]
    report.update(severity='critical', status='sent', updated_at=iso_seconds(now_utc() - timedelta(seconds=5)))
    huntress.set_incident_reports([report])
    escalation = fixtures.escalations(1, orgs, seed=105, now=now_utc())[0]
    escalation.update(severity='critical', status='open', updated_at=iso_seconds(now_utc() - timedelta(seconds=5)))
    huntress.set_escalations([escalation])
    aggregator.reset()
    sink_before = len(sink.logs)
    dd_run_check(check)

    assert 4_000 < len(sink.uuids()) < 20_000, 'the backlog is still pending'
    new_logs = sink.logs[sink_before:]
    services = [log.get('service') for log in new_logs]
    incident_at = services.index('huntress-incidents')
    escalation_at = services.index('huntress-escalations')
    assert incident_at < escalation_at < services.index('huntress-siem'), 'SOC logs go out before the SIEM pages'
    assert new_logs[incident_at]['id'] == report['id'] and new_logs[incident_at]['severity'] == 'critical'
    (event,) = events_with_key(aggregator, 'huntress-incident-')
    assert event['aggregation_key'] == f"huntress-incident-{report['id']}" and event['alert_type'] == 'error'
    (event,) = events_with_key(aggregator, 'huntress-escalation-')
    assert event['aggregation_key'] == f"huntress-escalation-{escalation['id']}" and event['alert_type'] == 'error'
    # Each SOC feed: one page of changes and its counts, well inside its share.
    summary = summary_line(caplog)
    assert re.search(r'siem=20 incidents=2 orgs=0 escalations=3 ', summary), summary


def test_the_soc_share_of_the_budget_is_bounded(make_check, dd_run_check, aggregator, sink, instance, caplog):
    """10 requests a minute: the SOC feeds may use two (a fifth) before SIEM;
    escalations wait for a later run rather than take SIEM's pages."""
    from tests.sim import HuntressSimulator

    from .conftest import HUNTRESS_KEY, HUNTRESS_SECRET

    with HuntressSimulator(api_key=HUNTRESS_KEY, secret_key=HUNTRESS_SECRET, rate_limit=10) as small:
        orgs = fixtures.organizations(3, seed=111)
        small.set_organizations(orgs)
        small.set_incident_reports(recent_incidents(5, orgs, [], seed=112))
        small.set_escalations(recent_escalations(5, orgs, seed=113))
        small.add_events(recent_events(1000, seed=114, org_ids=[o['id'] for o in orgs]))
        instance.update(
            huntress_base_url=small.url,
            max_window_seconds=3600,
            incidents={'enabled': True},
            escalations={'enabled': True},
        )
        caplog.set_level('INFO')
        dd_run_check(make_check(instance))
        summary = summary_line(caplog)
        assert 'siem=5 incidents=2 orgs=2 escalations=0 (of 10 per minute), deferred: escalations' in summary
        assert len(logs_of(sink, 'huntress-incidents')) == 5
        assert len({log['uuid'] for log in logs_of(sink, 'huntress-siem')}) == 1000
        assert 'escalations deferred to a later run: the SOC share of the rate budget was spent' in caplog.text
        assert small.stats['rate_limited'] == 0


# ---------------------------------------------------------------------------
# Escalations
# ---------------------------------------------------------------------------


def test_escalations_are_delivered_exactly_once_across_restarts_and_outages(
    make_check, dd_run_check, aggregator, huntress, sink, instance
):
    orgs = fixtures.organizations(6, seed=121)
    names = {o['id']: o['name'] for o in orgs}
    items = recent_escalations(40, orgs, seed=122)
    huntress.set_organizations(orgs)
    huntress.set_escalations(items)
    instance['escalations'] = {'enabled': True}
    sink.inject('status:503', count=5)  # the escalation batch: five attempts
    dd_run_check(make_check(instance))
    assert events_with_key(aggregator, 'huntress-escalation-') == [] and logs_of(sink, 'huntress-escalations') == []
    aggregator.assert_service_check('huntress.api.can_connect', AgentCheck.WARNING)

    aggregator.reset()
    dd_run_check(make_check(instance))  # a restart: the state is in the persistent cache
    events = events_with_key(aggregator, 'huntress-escalation-')
    assert sorted(int(e['aggregation_key'].rsplit('-', 1)[1]) for e in events) == sorted(i['id'] for i in items)
    by_id = {i['id']: i for i in items}
    for event in events:
        item = by_id[int(event['aggregation_key'].rsplit('-', 1)[1])]
        resolved = item['status'] == 'resolved'
        assert event['alert_type'] == ('success' if resolved else SEVERITY_ALERT[item['severity']])
        org = item['organizations'][0]['id']
        assert {f'huntress_org_id:{org}', f'huntress_org_name:{norm(names[org])}', f"severity:{item['severity']}",
                f"escalation_status:{item['status']}"} <= set(event['tags'])
    logs = logs_of(sink, 'huntress-escalations')
    assert sorted(log['id'] for log in logs) == sorted(by_id)
    for log in logs:
        assert log['escalation_status'] == by_id[log['id']]['status']
        assert log['huntress.escalation_change'] == 'new'
        assert log['huntress_org_id'] == by_id[log['id']]['organizations'][0]['id']
    now = iso_seconds(now_utc())
    open_ = [i for i in items if i['status'] != 'resolved']
    for metric, chosen in (('open', open_), ('overdue', [i for i in open_ if i['due_at'] < now])):
        counts = Counter(i['severity'] for i in chosen)
        assert gauges(aggregator, f'huntress.escalations.{metric}') == {
            frozenset([f'severity:{s}']): float(counts[s]) for s in ('low', 'high', 'critical')
        }
    aggregator.assert_metrics_using_metadata(get_metadata_metrics(), check_submission_type=True)

    aggregator.reset()
    dd_run_check(make_check(instance))
    assert events_with_key(aggregator, 'huntress-escalation-') == [], 'nothing twice'
    assert len(logs_of(sink, 'huntress-escalations')) == 40

    target = next(i for i in items if i['status'] == 'open')
    huntress.update_escalation(target['id'], status='resolved')
    sink.inject('status:503', count=5)
    aggregator.reset()
    dd_run_check(make_check(instance))
    assert events_with_key(aggregator, 'huntress-escalation-') == [], 'the intake refused it: no event yet'
    aggregator.reset()
    dd_run_check(make_check(instance))
    (event,) = events_with_key(aggregator, 'huntress-escalation-')
    assert event['alert_type'] == 'success' and 'resolved' in event['msg_title']
    assert [(log['id'], log['escalation_status'], log['huntress.escalation_change'])
            for log in logs_of(sink, 'huntress-escalations')[40:]] == [(target['id'], 'resolved', 'status_changed')]


# ---------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------


def test_signals_are_delivered_exactly_once_across_restarts_and_outages(
    make_check, dd_run_check, aggregator, huntress, sink, instance
):
    orgs = fixtures.organizations(4, seed=131)
    agents = fixtures.agents(30, orgs, seed=132)
    first = recent_signals(60, orgs, agents, seed=133, newest_seconds_ago=120)
    huntress.set_organizations(orgs)
    huntress.set_signals(first)
    instance['signals'] = {'enabled': True}
    sink.inject('status:503', count=5)
    dd_run_check(make_check(instance))
    assert logs_of(sink, 'huntress-signals') == []
    aggregator.assert_service_check('huntress.api.can_connect', AgentCheck.WARNING)

    dd_run_check(make_check(instance))
    logs = logs_of(sink, 'huntress-signals')
    assert sorted(log['id'] for log in logs) == sorted(s['id'] for s in first)
    by_id = {s['id']: s for s in first}
    for log in logs:
        signal = by_id[log['id']]
        assert (log['signal_type'], log['signal_status']) == (signal['type'], signal['status'])
        assert log['entity'] == signal['entity'] and log['organization'] == signal['organization']
        tags = set(log['ddtags'].split(','))
        assert {f"signal_type:{norm(signal['type'])}", f"signal_status:{signal['status']}", 'entity_type:agent',
                f"huntress_org_id:{signal['organization']['id']}"} <= tags

    # Later signals: only they go out; those at the checkpoint are read again and dropped by id.
    later = fixtures.signals(5, orgs, agents, seed=134, now=now_utc())
    for i, signal in enumerate(later):
        signal['id'] = 990_000 + i
        signal['investigated_at'] = iso_seconds(now_utc() - timedelta(seconds=30 - i))
    huntress.add_signals(later)
    dd_run_check(make_check(instance))
    dd_run_check(make_check(instance))
    logs = logs_of(sink, 'huntress-signals')
    assert len(logs) == 65 and len({log['id'] for log in logs}) == 65


# ---------------------------------------------------------------------------
# Organization scope
# ---------------------------------------------------------------------------


def scoped_world(huntress):
    """Two organizations (A kept, B left out) with data in every feed."""
    orgs = fixtures.organizations(2, seed=141)
    a, b = orgs
    agents = fixtures.agents(40, orgs, seed=142)
    huntress.set_organizations(orgs)
    huntress.set_agents(agents)
    huntress.add_events(recent_events(400, seed=143, org_ids=[a['id'], b['id']]))
    huntress.set_incident_reports(recent_incidents(20, orgs, agents, seed=144))
    huntress.set_escalations(recent_escalations(20, orgs, seed=145))
    huntress.set_signals(recent_signals(20, orgs, agents, seed=146))
    return a, b, agents


def everything_on(instance):
    instance.update(
        incidents={'enabled': True},
        escalations={'enabled': True},
        signals={'enabled': True},
        metrics={'agents': {'enabled': True}},
        max_window_seconds=3600,
    )


def org_of_log(log):
    if log.get('service') == 'huntress-escalations':
        return log['organizations'][0]['id']
    if log.get('service') == 'huntress-signals':
        return log['organization']['id']
    return log.get('huntress_org_id')


def assert_only(aggregator, sink, kept, left_out, agents, api_filtered=False):
    services = Counter(log.get('service') for log in sink.logs)
    for service in ('huntress-siem', 'huntress-incidents', 'huntress-escalations', 'huntress-signals'):
        assert services[service] > 0, f'{service} forwarded nothing of the kept organization'
    assert {org_of_log(log) for log in sink.logs} == {kept['id']}
    assert not any(f"huntress_org_id:{left_out['id']}" in log['ddtags'] for log in sink.logs)
    assert aggregator.events and all(f"huntress_org_id:{kept['id']}" in e['tags'] for e in aggregator.events)
    for metric in aggregator.metric_names:
        for m in aggregator.metrics(metric):
            assert f"huntress_org_id:{left_out['id']}" not in m.tags, metric
    kept_agents = sum(1 for agent in agents if agent['organization_id'] == kept['id'])
    aggregator.assert_metric('huntress.agents.count', value=kept_agents)
    aggregator.assert_metric('huntress.organizations.count', value=1)
    aggregator.assert_metric('huntress.scope.filtered', tags=['team:secops', 'feed:siem'])
    for feed in ('incidents', 'escalations', 'signals', 'agents'):
        filtered = [m for m in aggregator.metrics('huntress.scope.filtered') if f'feed:{feed}' in m.tags]
        if api_filtered:
            # One included organization: the REST lists are asked for it only, so nothing comes back to drop.
            assert filtered == [], feed
        else:
            assert filtered and filtered[0].value > 0, feed


def test_an_instance_scoped_to_one_organization_by_id_forwards_nothing_of_another(
    make_check, dd_run_check, aggregator, huntress, sink, instance
):
    a, b, agents = scoped_world(huntress)
    everything_on(instance)
    instance['organizations'] = {'include': [a['id']]}
    dd_run_check(make_check(instance))
    assert_only(aggregator, sink, a, b, agents, api_filtered=True)
    aggregator.assert_metrics_using_metadata(get_metadata_metrics(), check_submission_type=True)


@pytest.mark.parametrize('scope_by_name', [lambda a, b: {'exclude': [b['name']]}, lambda a, b: {'include': [a['name']]}], ids=['exclude', 'include'])
def test_an_instance_scoped_by_organization_name_forwards_nothing_of_another(
    make_check, dd_run_check, aggregator, huntress, sink, instance, scope_by_name
):
    a, b, agents = scoped_world(huntress)
    everything_on(instance)
    instance['organizations'] = scope_by_name(a, b)
    dd_run_check(make_check(instance))
    # One included name resolves to one id, which the REST lists are asked for.
    assert_only(aggregator, sink, a, b, agents, api_filtered='include' in instance['organizations'])


def test_rows_of_unknown_organizations_follow_the_policy_and_are_counted(
    make_check, dd_run_check, aggregator, huntress, sink, instance
):
    orgs = fixtures.organizations(2, seed=151)
    huntress.set_organizations(orgs)
    rows = recent_events(50, seed=152, org_ids=[orgs[0]['id']])
    for row in rows[:10]:
        row.pop('organization_id', None)
        row.pop('organization.id', None)
    huntress.add_events(rows)
    instance.update(organizations={'include': [orgs[0]['name']]}, max_window_seconds=3600)
    dd_run_check(make_check(instance))
    assert len(logs_of(sink, 'huntress-siem')) == 50, 'forwarded by default'
    aggregator.assert_metric('huntress.scope.unknown_organization', value=10,
                             tags=['team:secops', 'feed:siem', 'action:forward'])

    aggregator.reset()
    instance['unknown_organization'] = 'drop'
    instance['log_queries'] = [dict(instance['log_queries'][0], name='again')]  # its own checkpoint and dedup
    dd_run_check(make_check(instance))
    assert len(logs_of(sink, 'huntress-siem')) == 90, 'the 10 rows without an organization were dropped'
    aggregator.assert_metric('huntress.scope.unknown_organization', value=10,
                             tags=['team:secops', 'feed:siem', 'action:drop'])
