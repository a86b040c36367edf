"""SOC backlogs deeper than a run's pages, end to end over HTTP against the
simulator and the intake sink: incident reports and escalations walk the
listing over several runs, each change forwarded exactly once, the checkpoint
moving only when the walk is complete; an expired page token or an unreadable
saved position starts the walk again without sending anything twice; a listing
that ignores the sort order drains too. And the agents' per-organization
gauges group agents by the organization resolved, however an agent names it.
Expected values are computed here from the fixtures, not read back from the check."""

import json
import random
from collections import Counter
from datetime import datetime, timedelta

from datadog_checks.base import AgentCheck
from tests.sim import fixtures
from tests.sim.timeutil import iso_seconds

from .conftest import now_utc
from .test_inventory import gauges, logs_of, norm

API = 'huntress.api.can_connect'
PAGE = 500


def parse_time(text):
    return datetime.fromisoformat(text.replace('Z', '+00:00'))


def change_times(n, seed, now):
    """n times over 50 minutes, newest a minute ago, in no order of id."""
    times = [iso_seconds(now - timedelta(seconds=60 + i * 3000 // n)) for i in range(n)]
    random.Random(seed).shuffle(times)
    return times


def newest_first(items):
    return sorted(items, key=lambda item: item['updated_at'], reverse=True)


def backlog_reports(n, seed):
    """n incident reports changed over 50 minutes, newest a minute ago."""
    orgs = fixtures.organizations(5, seed=seed)
    agents = fixtures.agents(20, orgs, seed=seed)
    now = now_utc()
    reports = fixtures.incident_reports(n, orgs, agents, seed=seed, now=now)
    for report, updated in zip(reports, change_times(n, seed, now)):
        report['updated_at'] = updated
    return orgs, agents, reports


def backlog_escalations(n, seed):
    orgs = fixtures.organizations(5, seed=seed)
    now = now_utc()
    items = fixtures.escalations(n, orgs, seed=seed, now=now)
    for item, updated in zip(items, change_times(n, seed, now)):
        item['updated_at'] = updated
    return orgs, items


def served_backlog(huntress, instance, feed, n, seed, max_pages):
    """Serves n changed items of `feed` (incidents or escalations) over 50
    minutes and turns the feed on at `max_pages` pages a run: the items."""
    if feed == 'incidents':
        orgs, _, items = backlog_reports(n, seed)
        serve = huntress.set_incident_reports
    else:
        orgs, items = backlog_escalations(n, seed)
        serve = huntress.set_escalations
    huntress.set_organizations(orgs)
    serve(items)
    instance.update({feed: {'enabled': True, 'max_pages': max_pages}})
    return items


def saved(datadog_agent, suffix):
    (key,) = [k for k in datadog_agent._cache if k.endswith(suffix)]
    return key, json.loads(datadog_agent._cache[key])


def forwarded_ids(sink, service):
    return Counter(log['id'] for log in logs_of(sink, service))


def warning_text(aggregator):
    return ' '.join(c.message or '' for c in aggregator.service_checks(API))


def assert_each_once(sink, service, items):
    counts = forwarded_ids(sink, service)
    assert set(counts) == {item['id'] for item in items}
    assert max(counts.values()) == 1, [i for i, n in counts.items() if n > 1][:5]


def run(dd_run_check, check, aggregator):
    aggregator.reset()
    dd_run_check(check)


# ---------------------------------------------------------------------------
# Deep backlogs drain over several runs
# ---------------------------------------------------------------------------


def test_an_incident_backlog_of_seven_pages_drains_over_four_runs_exactly_once(
    make_check, dd_run_check, aggregator, datadog_agent, huntress, sink, instance
):
    reports = served_backlog(huntress, instance, 'incidents', 3500, seed=201, max_pages=2)
    check = make_check(instance)

    run(dd_run_check, check, aggregator)
    assert sum(forwarded_ids(sink, 'huntress-incidents').values()) == 2 * PAGE
    aggregator.assert_service_check(API, AgentCheck.WARNING)
    assert 'the next run goes on from there' in warning_text(aggregator)
    _, state = saved(datadog_agent, 'incidents_state')
    start_checkpoint = state['checkpoint']
    assert state['walk']['token']
    assert parse_time(start_checkpoint) < parse_time(min(r['updated_at'] for r in reports))

    run(dd_run_check, check, aggregator)
    assert sum(forwarded_ids(sink, 'huntress-incidents').values()) == 4 * PAGE
    assert saved(datadog_agent, 'incidents_state')[1]['checkpoint'] == start_checkpoint

    # While the walk goes on: a new report, and a change to one already forwarded.
    fresh = dict(reports[0], id=10**9, updated_at=iso_seconds(now_utc()))
    huntress.add_incident_reports([fresh])
    changed = next(r for r in newest_first(reports)[10:] if r['status'] != 'closed')
    huntress.update_incident_report(changed['id'], status='closed')

    run(dd_run_check, check, aggregator)
    assert sum(forwarded_ids(sink, 'huntress-incidents').values()) == 6 * PAGE
    assert saved(datadog_agent, 'incidents_state')[1]['checkpoint'] == start_checkpoint

    run(dd_run_check, check, aggregator)
    assert_each_once(sink, 'huntress-incidents', reports)
    _, state = saved(datadog_agent, 'incidents_state')
    assert 'walk' not in state, 'the walk is complete'
    assert parse_time(state['checkpoint']) == parse_time(max(r['updated_at'] for r in reports))

    run(dd_run_check, check, aggregator)
    counts = forwarded_ids(sink, 'huntress-incidents')
    assert counts[fresh['id']] == 1, 'the report added during the walk'
    assert counts[changed['id']] == 2, 'the change made during the walk'
    last = [log for log in logs_of(sink, 'huntress-incidents') if log['id'] == changed['id']][-1]
    assert last['huntress.incident_change'] == 'status_changed'
    keys = Counter(e['aggregation_key'] for e in aggregator.events)
    assert keys == Counter({f"huntress-incident-{fresh['id']}": 1, f"huntress-incident-{changed['id']}": 1})

    run(dd_run_check, check, aggregator)
    assert sum(forwarded_ids(sink, 'huntress-incidents').values()) == len(reports) + 2, 'nothing more'
    assert 'goes on from there' not in warning_text(aggregator)


def test_an_escalation_backlog_of_six_pages_drains_one_page_a_run_exactly_once(
    make_check, dd_run_check, aggregator, datadog_agent, huntress, sink, instance
):
    escalations = served_backlog(huntress, instance, 'escalations', 3000, seed=211, max_pages=1)
    check = make_check(instance)
    checkpoints = []
    for runs in range(1, 7):
        run(dd_run_check, check, aggregator)
        counts = forwarded_ids(sink, 'huntress-escalations')
        assert sum(counts.values()) == runs * PAGE and max(counts.values()) == 1
        checkpoints.append(saved(datadog_agent, 'escalations_state')[1]['checkpoint'])
    assert len(set(checkpoints[:5])) == 1, 'the checkpoint stays while the walk goes on'
    assert parse_time(checkpoints[5]) == parse_time(max(e['updated_at'] for e in escalations))
    assert_each_once(sink, 'huntress-escalations', escalations)
    assert len(aggregator.events) == PAGE

    run(dd_run_check, check, aggregator)
    assert sum(forwarded_ids(sink, 'huntress-escalations').values()) == len(escalations)


# ---------------------------------------------------------------------------
# An expired token, an unreadable position, a listing out of order
# ---------------------------------------------------------------------------


def test_an_expired_page_token_starts_the_walk_again_without_sending_twice(
    make_check, dd_run_check, aggregator, datadog_agent, huntress, sink, instance
):
    reports = served_backlog(huntress, instance, 'incidents', 2500, seed=221, max_pages=2)
    check = make_check(instance)
    run(dd_run_check, check, aggregator)
    assert sum(forwarded_ids(sink, 'huntress-incidents').values()) == 2 * PAGE
    start_checkpoint = saved(datadog_agent, 'incidents_state')[1]['checkpoint']

    huntress.expire_list_tokens()
    run(dd_run_check, check, aggregator)
    counts = forwarded_ids(sink, 'huntress-incidents')
    assert sum(counts.values()) == 4 * PAGE and max(counts.values()) == 1, 'the first pages again, sending nothing, then two more'
    aggregator.assert_service_check(API, AgentCheck.WARNING)
    assert 'refused the saved page token' in warning_text(aggregator)
    aggregator.assert_metric('huntress.siem.errors', value=1, tags=['team:secops', 'error_type:token_expired'])
    assert saved(datadog_agent, 'incidents_state')[1]['checkpoint'] == start_checkpoint

    for _ in range(2):
        run(dd_run_check, check, aggregator)
    assert_each_once(sink, 'huntress-incidents', reports)
    _, state = saved(datadog_agent, 'incidents_state')
    assert 'walk' not in state
    assert parse_time(state['checkpoint']) == parse_time(max(r['updated_at'] for r in reports))


def test_page_tokens_that_expire_between_every_two_runs_still_let_the_walk_through(
    make_check, dd_run_check, aggregator, datadog_agent, huntress, sink, instance
):
    """Each run finds its saved token refused: it reads again the pages the walk
    had read, sending nothing, and one page further."""
    escalations = served_backlog(huntress, instance, 'escalations', 2500, seed=225, max_pages=1)
    check = make_check(instance)
    for runs in range(1, 6):
        huntress.expire_list_tokens()
        run(dd_run_check, check, aggregator)
        counts = forwarded_ids(sink, 'huntress-escalations')
        assert sum(counts.values()) == runs * PAGE and max(counts.values()) == 1, runs
    assert_each_once(sink, 'huntress-escalations', escalations)
    _, state = saved(datadog_agent, 'escalations_state')
    assert 'walk' not in state
    assert parse_time(state['checkpoint']) == parse_time(max(e['updated_at'] for e in escalations))


def test_an_unreadable_saved_position_warns_counts_a_cache_error_and_walks_afresh(
    make_check, dd_run_check, aggregator, datadog_agent, huntress, sink, instance
):
    escalations = served_backlog(huntress, instance, 'escalations', 2000, seed=231, max_pages=2)
    run(dd_run_check, make_check(instance), aggregator)
    assert sum(forwarded_ids(sink, 'huntress-escalations').values()) == 2 * PAGE

    key, state = saved(datadog_agent, 'escalations_state')
    state['walk'] = {'token': 17, 'started': 'soon'}
    datadog_agent._cache[key] = json.dumps(state)
    check = make_check(instance)
    run(dd_run_check, check, aggregator)
    aggregator.assert_service_check(API, AgentCheck.WARNING)
    assert 'saved position' in warning_text(aggregator)
    aggregator.assert_metric('huntress.siem.errors', value=1, tags=['team:secops', 'error_type:cache'])
    assert sum(forwarded_ids(sink, 'huntress-escalations').values()) == 2 * PAGE, 'what was sent is still known'
    assert saved(datadog_agent, 'escalations_state')[1]['walk']['token']

    run(dd_run_check, check, aggregator)
    assert_each_once(sink, 'huntress-escalations', escalations)
    assert 'walk' not in saved(datadog_agent, 'escalations_state')[1]


def test_a_listing_that_ignores_the_sort_order_drains_page_by_page_without_missing_a_change(
    make_check, dd_run_check, aggregator, datadog_agent, huntress, sink, instance
):
    reports = served_backlog(huntress, instance, 'incidents', 2500, seed=241, max_pages=2)
    huntress.ignore_sort = True
    check = make_check(instance)
    run(dd_run_check, check, aggregator)
    assert sum(forwarded_ids(sink, 'huntress-incidents').values()) == 2 * PAGE
    assert 'not sorted by updated_at' in warning_text(aggregator)

    # Oldest id first: the new report comes last, the changed one was on the first page.
    fresh = dict(reports[0], id=10**9, updated_at=iso_seconds(now_utc()))
    huntress.add_incident_reports([fresh])
    changed = min(reports, key=lambda r: r['id'])
    huntress.update_incident_report(changed['id'], status='dismissed')

    run(dd_run_check, check, aggregator)
    run(dd_run_check, check, aggregator)
    counts = forwarded_ids(sink, 'huntress-incidents')
    assert set(counts) == {r['id'] for r in reports} | {fresh['id']}
    assert max(counts.values()) == 1
    assert 'walk' not in saved(datadog_agent, 'incidents_state')[1], 'six pages read over three runs'

    for _ in range(3):
        run(dd_run_check, check, aggregator)
    counts = forwarded_ids(sink, 'huntress-incidents')
    assert counts[changed['id']] == 2, 'the change behind the walk is read by the next one'
    assert sum(counts.values()) == len(reports) + 2


# ---------------------------------------------------------------------------
# Agents by the organization resolved
# ---------------------------------------------------------------------------


def test_agents_are_counted_by_the_organization_resolved_from_id_nested_id_or_name(
    make_check, dd_run_check, aggregator, huntress, instance
):
    orgs = fixtures.organizations(6, seed=251)
    agents = fixtures.agents(90, orgs, seed=252, now=now_utc())
    by_id = {o['id']: o for o in orgs}
    for i, agent in enumerate(agents):
        org = by_id[agent['organization_id']]
        if i % 3 == 1:
            del agent['organization_id']
            agent['organization'] = {'id': org['id']}
        elif i % 3 == 2:
            del agent['organization_id']
            agent['organization_name'] = f"  {org['name'].upper()} "
    huntress.set_organizations(orgs)
    huntress.set_agents(agents)
    instance['metrics'] = {'agents': {'enabled': True}}
    dd_run_check(make_check(instance))

    per_org = Counter()
    for i, agent in enumerate(agents):
        per_org[agent.get('organization_id') or agent.get('organization', {}).get('id') or next(
            o['id'] for o in orgs if o['name'].upper() == agent['organization_name'].strip()
        )] += 1
    expected = {
        frozenset([f'huntress_org_id:{oid}', f"huntress_org_name:{norm(by_id[oid]['name'])}"]): float(n)
        for oid, n in per_org.items()
    }
    assert gauges(aggregator, 'huntress.agents.by_organization') == expected
