"""The SIEM feed at the edges of what the API answers: a refusal that may be
transient, a second denser than a run can read, and long stretches of empty
time. Each test runs the real check against the simulator."""

import time
from datetime import datetime, timedelta, timezone

from datadog_checks.base import AgentCheck

from tests.sim import fixtures

from .test_delivery import assert_exactly_once
from .test_progress import SIEM_PATH, caught_up_once, edit_position, iso, siem_check_messages, stored_position


def now():
    return datetime.now(timezone.utc)


def given_up(aggregator, reason):
    return sum(m.value for m in aggregator.metrics('huntress.siem.ranges_given_up') if f'reason:{reason}' in m.tags)


# A refusal is given up on only with proof
def test_one_transient_400_on_an_old_range_gives_up_nothing(make_check, dd_run_check, aggregator, datadog_agent, huntress, sink, instance):
    """A checkpoint 3 h old, a look-back of 600 s, and one 400 on the first page:
    the refusal is asked again, and every event since the checkpoint arrives."""
    instance.update(initial_lookback_seconds=600)
    caught_up_once(make_check, dd_run_check, instance)
    edit_position(datadog_agent, lambda p: p.update(checkpoint=iso(now() - timedelta(hours=3)), cursor=None))
    events = fixtures.siem_events(170, now() - timedelta(hours=3) + timedelta(seconds=30), now() - timedelta(seconds=60), seed=91)
    huntress.add_events(events)
    huntress.inject('status:400', count=1)
    aggregator.reset()
    dd_run_check(make_check(instance))
    assert_exactly_once(sink, events)
    aggregator.assert_service_check('huntress.siem.can_connect', AgentCheck.OK)
    assert given_up(aggregator, 'retention') == 0
    aggregator.assert_metric_has_tag('huntress.siem.errors', 'error_type:query_invalid')


def test_a_range_past_retention_is_given_up_only_before_the_oldest_start_served(make_check, dd_run_check, aggregator, datadog_agent, huntress, sink, instance):
    """The API keeps 2 h; the checkpoint is 3 h old and the look-back 600 s. The
    events of the last 2 h are still served: only the time before what the API
    serves is given up, counted, and warned about."""
    instance.update(initial_lookback_seconds=600)
    caught_up_once(make_check, dd_run_check, instance)
    three_hours_ago = iso(now() - timedelta(hours=3))
    edit_position(datadog_agent, lambda p: p.update(checkpoint=three_hours_ago, cursor=None))
    huntress.retention_seconds = 2 * 3600
    events = fixtures.siem_events(200, now() - timedelta(hours=2) + timedelta(minutes=5), now() - timedelta(seconds=60), seed=92)
    huntress.add_events(events)
    aggregator.reset()
    dd_run_check(make_check(instance))
    assert_exactly_once(sink, events)
    aggregator.assert_service_check('huntress.siem.can_connect', AgentCheck.WARNING)
    (message,) = siem_check_messages(aggregator)
    assert 'refused the range from' in message and three_hours_ago in message and 'given up' in message
    assert given_up(aggregator, 'retention') == 1
    # The start found lies within a minute of the API's reach.
    checkpoint = datetime.fromisoformat(stored_position(datadog_agent)['checkpoint'].replace('Z', '+00:00'))
    assert checkpoint > now() - timedelta(hours=2) - timedelta(seconds=5)


# Progress past a dense second
def dense_second_run(make_check, dd_run_check, huntress, sink, instance, events, runs):
    huntress.token_ttl_seconds = 1.0
    instance.update(max_pages_per_run=5, max_window_seconds=900, enrich_with_org_tags=False)
    check = make_check(instance)
    wanted = {e['uuid'] for e in events}
    for run in range(runs):
        if run:
            time.sleep(1.1)  # the page tokens of the last run have expired
        dd_run_check(check)
        if set(sink.uuids()) >= wanted:
            return run + 1
    return runs


def test_a_second_denser_than_a_run_is_read_in_finer_ranges(make_check, dd_run_check, aggregator, huntress, sink, instance):
    """1,500 events in one second, 5 pages (1,000 rows) a run, page tokens that
    live 1 s: the second is cut into ranges below a second, and every event, of
    that second and after it, arrives once within 12 runs."""
    second = (now() - timedelta(minutes=5)).replace(microsecond=0)
    dense = fixtures.siem_events(1500, second, second + timedelta(seconds=1), seed=93)
    after = fixtures.siem_events(40, second + timedelta(seconds=1), now() - timedelta(seconds=30), seed=94)
    huntress.add_events(dense + after)
    instance.update(initial_lookback_seconds=600)
    dense_second_run(make_check, dd_run_check, huntress, sink, instance, dense + after, runs=12)
    assert_exactly_once(sink, dense + after)
    aggregator.assert_metric_has_tag('huntress.siem.errors', 'error_type:token_expired')
    assert given_up(aggregator, 'dense') == 0


def test_a_millisecond_denser_than_a_run_is_given_up_counted_and_warned(make_check, dd_run_check, aggregator, huntress, sink, instance):
    """1,500 events with the same @timestamp: no range can split them. What was
    read is kept, the rest of that millisecond is given up (counted, WARNING),
    and the events after it still arrive, none twice."""
    stamp = (now() - timedelta(minutes=5)).replace(microsecond=0)
    dense = fixtures.siem_events(1500, stamp, stamp + timedelta(seconds=1), seed=95)
    for row in dense:
        row['@timestamp'] = iso(stamp)
    after = fixtures.siem_events(40, stamp + timedelta(seconds=1), now() - timedelta(seconds=30), seed=96)
    huntress.add_events(dense + after)
    instance.update(initial_lookback_seconds=600)
    runs = dense_second_run(make_check, dd_run_check, huntress, sink, instance, after, runs=20)
    counts = sink.uuids()
    assert {e['uuid'] for e in after} <= set(counts), f'events after the dense millisecond not delivered in {runs} runs'
    assert max(counts.values()) == 1, 'an event was delivered twice'
    assert sum(1 for e in dense if e['uuid'] in counts) >= 1000
    assert given_up(aggregator, 'dense') == 1
    messages = siem_check_messages(aggregator)
    assert any('given up' in m and 'millisecond' in m for m in messages), messages


# Empty time costs a few requests
def test_a_checkpoint_moved_to_the_seven_day_limit_reaches_the_present_in_one_run(make_check, dd_run_check, aggregator, datadog_agent, huntress, sink, instance):
    """A corrupt checkpoint (year -200000) is moved to the 7-day limit; seven
    empty days with 900 s windows and 5 pages a run: the new event arrives in the
    first run, in a few requests."""
    instance.update(max_pages_per_run=5, max_window_seconds=900)
    caught_up_once(make_check, dd_run_check, instance)
    edit_position(datadog_agent, lambda p: p.update(checkpoint='-200000-01-01T00:00:00Z', cursor=None))
    events = fixtures.siem_events(3, now() - timedelta(seconds=90), now() - timedelta(seconds=30), seed=97)
    huntress.add_events(events)
    huntress.reset_stats()
    aggregator.reset()
    dd_run_check(make_check(instance))
    assert_exactly_once(sink, events)
    assert huntress.stats['by_path'][SIEM_PATH] <= 5
    checkpoint = datetime.fromisoformat(stored_position(datadog_agent)['checkpoint'].replace('Z', '+00:00'))
    assert checkpoint > now() - timedelta(minutes=1)


def test_a_long_quiet_stretch_is_crossed_in_a_few_requests(make_check, dd_run_check, aggregator, datadog_agent, huntress, sink, instance):
    """Two quiet days since the checkpoint (an outage on a quiet account), 60 s
    windows: the window grows while pages come back empty."""
    instance.update(max_pages_per_run=5, max_window_seconds=60)
    caught_up_once(make_check, dd_run_check, instance)
    edit_position(datadog_agent, lambda p: p.update(checkpoint=iso(now() - timedelta(days=2)), cursor=None))
    events = fixtures.siem_events(5, now() - timedelta(seconds=120), now() - timedelta(seconds=30), seed=98)
    huntress.add_events(events)
    huntress.reset_stats()
    dd_run_check(make_check(instance))
    assert_exactly_once(sink, events)
    assert huntress.stats['by_path'][SIEM_PATH] <= 5


def test_growth_stops_short_of_a_window_the_api_could_not_answer(make_check, dd_run_check, aggregator, datadog_agent, huntress, sink, instance):
    """A 413 (Huntress's memory limit) on the first 900 s window of a day behind:
    that run's windows stay under 900 s, so it does not reach the present; the next
    run grows again and catches up. Nothing is lost or sent twice."""
    instance.update(max_pages_per_run=20, max_window_seconds=900)
    caught_up_once(make_check, dd_run_check, instance)
    edit_position(datadog_agent, lambda p: p.update(checkpoint=iso(now() - timedelta(days=1)), cursor=None))
    events = fixtures.siem_events(50, now() - timedelta(hours=20), now() - timedelta(seconds=30), seed=99)
    huntress.add_events(events)
    huntress.inject('status:413', count=1)
    dd_run_check(make_check(instance))
    checkpoint = datetime.fromisoformat(stored_position(datadog_agent)['checkpoint'].replace('Z', '+00:00'))
    assert checkpoint < now() - timedelta(hours=12), 'windows grew past the length the API refused'
    dd_run_check(make_check(instance))
    assert_exactly_once(sink, events)
