"""Guaranteed progress: no state in the persistent cache, and no page-token
lifetime, run budget or paging loop of the API, stops a query for good. Each
test runs the real check against the simulator, with the cache edited the way a
clock step, a restored backup or a hand edit would leave it."""

import json
import re
import time
from datetime import datetime, timedelta, timezone

from datadog_checks.base import AgentCheck

from tests.sim import fixtures

from .conftest import recent_events, run_until_caught_up
from .test_delivery import assert_exactly_once, position_keys

SIEM_PATH = '/v1/siem/query'


def edit_position(datadog_agent, edit):
    """Applies `edit` to the one stored SIEM position (a dict) and saves it."""
    (key, text), = position_keys(datadog_agent).items()
    position = json.loads(text)
    edit(position)
    datadog_agent._cache[key] = json.dumps(position)
    return position


def stored_position(datadog_agent):
    (text,) = position_keys(datadog_agent).values()
    return json.loads(text)


def siem_check_messages(aggregator):
    return [c.message or '' for c in aggregator.service_checks('huntress.siem.can_connect')]


def iso(t):
    return t.strftime('%Y-%m-%dT%H:%M:%SZ')


def caught_up_once(make_check, dd_run_check, instance):
    """One run on an empty store: leaves a position to edit."""
    dd_run_check(make_check(instance))


# Checkpoints are checked when loaded
def test_future_checkpoint_warns_and_collection_resumes(make_check, dd_run_check, aggregator, datadog_agent, huntress, sink, instance):
    instance.update(max_window_seconds=3600)
    caught_up_once(make_check, dd_run_check, instance)
    edit_position(datadog_agent, lambda p: p.update(checkpoint='2099-01-01T00:00:00Z', cursor=None))
    aggregator.reset()
    check = make_check(instance)
    dd_run_check(check)
    aggregator.assert_service_check('huntress.siem.can_connect', AgentCheck.WARNING)
    (message,) = siem_check_messages(aggregator)
    assert 'in the future' in message and '2099-01-01' in message and '"all"' in message
    aggregator.assert_metric_has_tag('huntress.siem.errors', 'error_type:cache')
    assert stored_position(datadog_agent)['checkpoint'] < '2099'
    # Collection goes on from now minus the delay: events from now on arrive.
    time.sleep(1.5)
    events = fixtures.siem_events(300, datetime.now(timezone.utc) - timedelta(seconds=0.5), datetime.now(timezone.utc), seed=51)
    huntress.add_events(events)
    time.sleep(1.1)  # windows end on whole seconds
    aggregator.reset()
    dd_run_check(check)
    aggregator.assert_service_check('huntress.siem.can_connect', AgentCheck.OK)
    assert_exactly_once(sink, events)


def test_inverted_cursor_is_dropped_with_a_warning(make_check, dd_run_check, aggregator, datadog_agent, huntress, sink, instance):
    events = recent_events(600, seed=52)
    huntress.add_events(events)
    instance.update(max_window_seconds=3600, max_pages_per_run=1)
    dd_run_check(make_check(instance))  # one page delivered, a cursor saved

    def invert(position):
        start = position['cursor']['range_start']
        position['cursor']['range_end'] = iso(datetime.fromisoformat(start.replace('Z', '+00:00')) - timedelta(minutes=5))

    edit_position(datadog_agent, invert)
    aggregator.reset()
    instance.update(max_pages_per_run=100)
    dd_run_check(make_check(instance))
    aggregator.assert_service_check('huntress.siem.can_connect', AgentCheck.WARNING)
    (message,) = siem_check_messages(aggregator)
    assert 'inverted' in message and 'dropped' in message
    assert_exactly_once(sink, events)


def test_unreadable_cursor_keeps_the_checkpoint(make_check, dd_run_check, aggregator, datadog_agent, huntress, sink, instance):
    events = recent_events(600, seed=53)
    huntress.add_events(events)
    instance.update(max_window_seconds=3600, max_pages_per_run=1)
    dd_run_check(make_check(instance))
    before = edit_position(datadog_agent, lambda p: p.update(cursor={'range_start': 'yesterday', 'pages_done': -1}))
    aggregator.reset()
    instance.update(max_pages_per_run=100)
    dd_run_check(make_check(instance))
    aggregator.assert_service_check('huntress.siem.can_connect', AgentCheck.WARNING)
    (message,) = siem_check_messages(aggregator)
    assert 'unreadable cursor' in message
    assert_exactly_once(sink, events)
    assert sum(m.value for m in aggregator.metrics('huntress.siem.logs_deduplicated')) == 200  # replayed from the checkpoint
    assert stored_position(datadog_agent)['checkpoint'] > before['checkpoint']


def test_ancient_checkpoint_moves_to_the_reach_of_the_policy(make_check, dd_run_check, aggregator, datadog_agent, huntress, sink, instance):
    instance.update(stale_log_policy='skip', max_window_seconds=86400)
    caught_up_once(make_check, dd_run_check, instance)
    edit_position(datadog_agent, lambda p: p.update(checkpoint='1970-01-01T00:00:00Z', cursor=None))
    events = recent_events(300, seed=54)
    huntress.add_events(events)
    aggregator.reset()
    dd_run_check(make_check(instance))
    aggregator.assert_service_check('huntress.siem.can_connect', AgentCheck.WARNING)
    (message,) = siem_check_messages(aggregator)
    assert '1970-01-01' in message and 'older than' in message
    assert_exactly_once(sink, events)
    # Under `skip`, nothing older than the intake's 18 h is read: a day of windows at most.
    assert [entry['kind'] for entry in huntress.siem_log].count('query') <= 3


def test_range_the_api_no_longer_holds_is_given_up_with_a_warning(make_check, dd_run_check, aggregator, datadog_agent, huntress, sink, instance):
    """A checkpoint within the check's reach but past the API's retention: every
    first page would be refused with a 400, in every run."""
    caught_up_once(make_check, dd_run_check, instance)
    three_hours_ago = iso(datetime.now(timezone.utc) - timedelta(hours=3))
    edit_position(datadog_agent, lambda p: p.update(checkpoint=three_hours_ago, cursor=None))
    huntress.retention_seconds = 2 * 3600
    events = recent_events(300, seed=61)
    huntress.add_events(events)
    aggregator.reset()
    dd_run_check(make_check(instance))
    aggregator.assert_service_check('huntress.siem.can_connect', AgentCheck.WARNING)
    (message,) = siem_check_messages(aggregator)
    assert 'refused the range from' in message and three_hours_ago in message
    assert_exactly_once(sink, events)


def test_a_refused_query_keeps_its_old_checkpoint(make_check, dd_run_check, aggregator, datadog_agent, huntress, sink, instance):
    """The same 400 on the recent range too: the query is at fault, not the age of
    the range. (The first refusal is asked again once: three 400s in a row.)"""
    caught_up_once(make_check, dd_run_check, instance)
    three_hours_ago = iso(datetime.now(timezone.utc) - timedelta(hours=3))
    edit_position(datadog_agent, lambda p: p.update(checkpoint=three_hours_ago, cursor=None))
    huntress.retention_seconds = 2 * 3600
    huntress.inject('status:400', count=3)
    aggregator.reset()
    try:
        dd_run_check(make_check(instance))
    except Exception as error:
        assert '400' in str(error)
    aggregator.assert_service_check('huntress.siem.can_connect', AgentCheck.CRITICAL)
    assert stored_position(datadog_agent)['checkpoint'] == three_hours_ago


def test_future_incident_checkpoint_warns_and_reports_resume(make_check, dd_run_check, aggregator, datadog_agent, huntress, sink, instance):
    instance.update(incidents={'enabled': True})
    caught_up_once(make_check, dd_run_check, instance)
    (key,) = [k for k in datadog_agent._cache if k.endswith('incidents_state')]
    state = json.loads(datadog_agent._cache[key])
    state['checkpoint'] = '2099-01-01T00:00:00.000Z'
    datadog_agent._cache[key] = json.dumps(state)
    orgs = fixtures.organizations(2, seed=55)
    now = datetime.now(timezone.utc)
    reports = fixtures.incident_reports(3, orgs, fixtures.agents(5, orgs, seed=55), seed=55, now=now)
    for i, report in enumerate(reports):
        report['updated_at'] = iso(now - timedelta(minutes=2 + i))
    huntress.set_incident_reports(reports)
    aggregator.reset()
    dd_run_check(make_check(instance))
    aggregator.assert_service_check('huntress.api.can_connect', AgentCheck.WARNING)
    message = ' '.join(c.message or '' for c in aggregator.service_checks('huntress.api.can_connect'))
    assert 'in the future' in message and '2099-01-01' in message
    incident_logs = [log for log in sink.logs if log.get('service') == 'huntress-incidents']
    assert len(incident_logs) == 3


def test_corrupt_organization_cache_is_dropped_with_a_warning(make_check, dd_run_check, aggregator, datadog_agent, huntress, sink, instance):
    orgs = fixtures.organizations(3, seed=60)
    huntress.set_organizations(orgs)
    caught_up_once(make_check, dd_run_check, instance)
    (key,) = [k for k in datadog_agent._cache if k.endswith('orgs_directory')]
    datadog_agent._cache[key] = '{"v": 1, "orgs": [[1, 2'
    time.sleep(1.1)
    now = datetime.now(timezone.utc)
    events = fixtures.siem_events(100, now - timedelta(seconds=0.5), now, seed=60, org_ids=[o['id'] for o in orgs])
    huntress.add_events(events)
    time.sleep(1.1)  # windows end on whole seconds
    aggregator.reset()
    dd_run_check(make_check(instance))
    aggregator.assert_service_check('huntress.api.can_connect', AgentCheck.WARNING)
    message = ' '.join(c.message or '' for c in aggregator.service_checks('huntress.api.can_connect'))
    assert 'organization cache' in message and 'fetched again' in message
    aggregator.assert_metric_has_tag('huntress.siem.errors', 'error_type:cache')
    assert_exactly_once(sink, events)
    assert all(log.get('huntress_org_name') for log in sink.logs), 'the directory was fetched again'
    assert json.loads(datadog_agent._cache[key])['v'] == 1


# Cycles are detected on SIEM paging
def test_repeated_siem_page_token_stops_the_loop_and_loses_nothing(make_check, dd_run_check, aggregator, datadog_agent, huntress, sink, instance):
    events = recent_events(1000, seed=56)
    huntress.add_events(events)
    instance.update(max_window_seconds=3600)
    huntress.repeat_page_tokens = True
    started = time.monotonic()
    try:
        dd_run_check(make_check(instance))
        raised = None
    except Exception as error:  # the query failed: the check raises with the message
        raised = str(error)
    assert time.monotonic() - started < 10
    assert raised and 'same page token twice' in raised
    aggregator.assert_service_check('huntress.siem.can_connect', AgentCheck.CRITICAL)
    aggregator.assert_metric_has_tag('huntress.siem.errors', 'error_type:malformed_response')
    assert huntress.stats['by_path'][SIEM_PATH] == 2  # page 2 hands out page 1's token again: it stops there
    assert len(sink.logs) == 400
    huntress.repeat_page_tokens = False
    run_until_caught_up(dd_run_check, make_check(instance), sink, len(events), max_runs=5)
    assert_exactly_once(sink, events)


def test_a_siem_api_that_always_loops_still_moves_the_checkpoint(make_check, dd_run_check, datadog_agent, huntress, sink, instance):
    events = recent_events(1000, seed=57)
    huntress.add_events(events)
    instance.update(max_window_seconds=3600)
    huntress.repeat_page_tokens = True
    check = make_check(instance)
    checkpoints = []
    for _ in range(12):
        try:
            dd_run_check(check)
        except Exception as error:
            assert 'same page token twice' in str(error)
        checkpoints.append(stored_position(datadog_agent)['checkpoint'])
    assert len(set(checkpoints)) > 1, 'the checkpoint never moved'
    counts = sink.uuids()
    assert counts and max(counts.values()) == 1


# Guaranteed progress: a window that outlives its page tokens
def test_window_larger_than_a_run_whose_tokens_die_between_runs_is_delivered(make_check, dd_run_check, aggregator, huntress, sink, instance):
    """The shape of a 15-minute window of 70 pages (14,000 events) that one run
    cannot read whole, with page tokens that do not live until the next run,
    scaled down in time: each SIEM request takes 50 ms, a run has 3 s, tokens live
    2 s and runs are 2.5 s apart. Replaying the window from its first page in
    every run would deliver nothing after the second run; every event must
    arrive, once, within 6 runs."""
    events = recent_events(14_000, seed=58, minutes=15, end_offset_seconds=60)
    huntress.add_events(events)
    huntress.token_ttl_seconds = 2.0
    huntress.inject('slow:0.05', count=100_000, path=SIEM_PATH)
    instance.update(max_window_seconds=900, initial_lookback_seconds=16 * 60 + 30, run_deadline_seconds=3, enrich_with_org_tags=False)
    check = make_check(instance)
    delivered_per_run = []
    for run in range(6):
        if run:
            time.sleep(2.5)
        before = len(sink.logs)
        dd_run_check(check)
        delivered_per_run.append(len(sink.logs) - before)
        if set(sink.uuids()) >= {e['uuid'] for e in events}:
            break
    assert_exactly_once(sink, events), delivered_per_run
    assert delivered_per_run[0] < len(events), f'one run read the whole window: the test proves nothing {delivered_per_run}'
    aggregator.assert_metric_has_tag('huntress.siem.errors', 'error_type:token_expired')


def test_learned_density_is_kept_in_the_cache(make_check, dd_run_check, datadog_agent, huntress, sink, instance):
    huntress.add_events(recent_events(1000, seed=59, minutes=10))
    instance.update(max_window_seconds=3600)
    dd_run_check(make_check(instance))
    position = stored_position(datadog_agent)
    assert position['events_per_second'] > 0
    assert re.fullmatch(r'\d{4}-.*', position['checkpoint'])
