"""Events that Huntress makes visible after the window holding their @timestamp
was read: the late-arrival checks find them, by counts per time bucket where the
API serves them and by reading recent time again where it refuses them, and
deliver each exactly once, across restarts, without moving the checkpoint."""

import json
import re
import time
from datetime import timedelta

from datadog_checks.base import AgentCheck

from tests.sim import fixtures

from .conftest import now_utc
from .test_delivery import assert_exactly_once

LATE_KEY = re.compile(r'_siem_[0-9a-f]{24}_late$')


def late_events(n, minutes, seed, lag_seconds, share_late=0.3, end_offset_seconds=5):
    """n events over the last `minutes`, a share of them visible only `lag_seconds` from now."""
    end = now_utc() - timedelta(seconds=end_offset_seconds)
    events = fixtures.siem_events(n, end - timedelta(minutes=minutes), end, seed=seed)
    visible_at = time.time() + lag_seconds
    late = events[:: max(1, round(1 / share_late))]
    for event in late:
        event['_visible_at'] = visible_at
    return events, len(late), visible_at


def kinds(huntress):
    return [entry['kind'] for entry in huntress.siem_log]


def wait_until(epoch):
    time.sleep(max(0.0, epoch - time.time()) + 0.05)


def metric_total(aggregator, name):
    return sum(m.value for m in aggregator.metrics(name))


def late_state(datadog_agent):
    (text,) = [v for k, v in datadog_agent._cache.items() if LATE_KEY.search(k)]
    return json.loads(text)


def set_late_state(datadog_agent, edit):
    (key,) = [k for k in datadog_agent._cache if LATE_KEY.search(k)]
    state = json.loads(datadog_agent._cache[key])
    edit(state)
    datadog_agent._cache[key] = json.dumps(state)


def test_events_indexed_late_are_found_by_counts_and_sent_once(make_check, dd_run_check, aggregator, huntress, sink, instance):
    events, late, visible_at = late_events(300, minutes=8, seed=1, lag_seconds=3)
    huntress.add_events([dict(e) for e in events])
    dd_run_check(make_check(instance))
    assert len(sink.uuids()) == len(events) - late, 'what was visible, and nothing else'
    wait_until(visible_at)
    huntress.siem_log.clear()
    aggregator.reset()
    dd_run_check(make_check(instance))  # a restart: the counts compare with what the cache remembers
    assert_exactly_once(sink, [{k: v for k, v in e.items() if k != '_visible_at'} for e in events])
    assert metric_total(aggregator, 'huntress.siem.logs_late') == late
    assert 'stats' in kinds(huntress) and 'reread' in kinds(huntress)
    assert metric_total(aggregator, 'huntress.siem.late_buckets_grown') > 0
    aggregator.assert_service_check('huntress.siem.can_connect', AgentCheck.OK)
    # Nothing new: the next run counts and reads nothing again.
    huntress.siem_log.clear()
    aggregator.reset()
    dd_run_check(make_check(instance))
    assert 'reread' not in kinds(huntress)
    assert kinds(huntress).count('stats') == 1, kinds(huntress)
    assert metric_total(aggregator, 'huntress.siem.logs_late') == 0
    assert len(sink.logs) == len(events)


def test_refused_counts_fall_back_to_reading_recent_time_again(make_check, dd_run_check, aggregator, huntress, sink, instance, caplog):
    huntress.stats_refused = True
    events, late, visible_at = late_events(200, minutes=5, seed=2, lag_seconds=3)
    huntress.add_events([dict(e) for e in events])
    check = make_check(instance)
    dd_run_check(check)
    wait_until(visible_at)
    aggregator.reset()
    huntress.siem_log.clear()
    dd_run_check(check)
    assert_exactly_once(sink, [{k: v for k, v in e.items() if k != '_visible_at'} for e in events])
    assert metric_total(aggregator, 'huntress.siem.logs_late') == late
    aggregator.assert_service_check('huntress.siem.can_connect', AgentCheck.OK)
    assert caplog.text.count('refused the count of events per time bucket') == 1, 'said once'
    # Still refused: no count is asked for hours, and recent time is read again each run.
    huntress.siem_log.clear()
    dd_run_check(check)
    assert 'stats' not in kinds(huntress) and 'query' in kinds(huntress)
    assert len(sink.logs) == len(events)


def test_time_filters_refused_fall_back_too(make_check, dd_run_check, aggregator, datadog_agent, huntress, sink, instance):
    huntress.time_filters_refused = True
    events, late, visible_at = late_events(200, minutes=5, seed=3, lag_seconds=3)
    huntress.add_events([dict(e) for e in events])
    dd_run_check(make_check(instance))
    wait_until(visible_at)
    dd_run_check(make_check(instance))
    assert_exactly_once(sink, [{k: v for k, v in e.items() if k != '_visible_at'} for e in events])
    assert late_state(datadog_agent)['refused_at'], 'the refusal is remembered across restarts'
    assert 'reread' in kinds(huntress) and 'query' in kinds(huntress), 'a filtered read was tried, then time was read whole' 


def test_an_event_indexed_hours_late_is_found_within_the_reach(make_check, dd_run_check, aggregator, datadog_agent, huntress, sink, instance):
    # Collection starts three hours back: the late checks reach no further back than that.
    instance.update(initial_lookback_seconds=3 * 3600)
    old = fixtures.siem_events(3, now_utc() - timedelta(hours=2, minutes=1), now_utc() - timedelta(hours=2), seed=4)
    visible_at = time.time() + 2
    for event in old:
        event['_visible_at'] = visible_at
    huntress.add_events([dict(e) for e in old])
    dd_run_check(make_check(instance))
    assert not sink.logs
    wait_until(visible_at)
    dd_run_check(make_check(instance))
    assert not sink.logs, 'the hours-old tier is checked every 30 minutes, not every run'
    set_late_state(datadog_agent, lambda s: s.update(checked=[None, None, None]))
    aggregator.reset()
    dd_run_check(make_check(instance))
    assert_exactly_once(sink, [{k: v for k, v in e.items() if k != '_visible_at'} for e in old])
    assert metric_total(aggregator, 'huntress.siem.logs_late') == 3
    # The reach is the window, less for a query that started collecting more recently.
    assert 3 * 3600 - 5 <= aggregator.metrics('huntress.siem.late_reach_seconds')[0].value <= 3 * 3600 + 60


def test_rows_counted_twice_upstream_are_read_again_only_once(make_check, dd_run_check, aggregator, huntress, sink, instance):
    events = fixtures.siem_events(50, now_utc() - timedelta(minutes=3), now_utc() - timedelta(seconds=5), seed=5)
    huntress.add_events([dict(e) for e in events] + [dict(events[0])])  # one event stored twice
    dd_run_check(make_check(instance))
    assert kinds(huntress).count('reread') == 1, 'the bucket with the stored copy is read once more'
    huntress.siem_log.clear()
    dd_run_check(make_check(instance))
    assert 'reread' not in kinds(huntress), 'then its extra row is known'
    assert_exactly_once(sink, events)


def test_late_checks_wait_while_a_backlog_holds_the_budget(make_check, dd_run_check, aggregator, huntress, sink, instance):
    huntress.add_events(fixtures.siem_events(2_000, now_utc() - timedelta(minutes=50), now_utc() - timedelta(minutes=1), seed=6))
    instance.update(max_pages_per_run=2, max_window_seconds=600, lag_warning_seconds=60)
    dd_run_check(make_check(instance))
    assert set(kinds(huntress)) == {'query'}, 'new events first'
    aggregator.assert_service_check('huntress.siem.can_connect', AgentCheck.WARNING)
    (message,) = [c.message for c in aggregator.service_checks('huntress.siem.can_connect')]
    assert 'behind' in message and 'max_pages_per_run' in message and 'lag_warning_seconds' in message
    # Behind is never reported as caught up: an estimate, or none while a window is still being read.
    catch_up = [m.value for m in aggregator.metrics('huntress.siem.catch_up_seconds')]
    if aggregator.metrics('huntress.siem.window_in_progress')[0].value == 1:
        assert catch_up == [] and 'its pace is known once the window being read completes' in message, message
    else:
        assert catch_up[0] != 0


def test_a_backlog_held_by_the_rate_budget_names_the_budget(make_check, dd_run_check, aggregator, sink, instance):
    """10 requests a minute and a window of many pages: the run stops mid-window
    because no rate-limit slot opens before its deadline. The warning names the
    budget, not the deadline, and gives no estimate before its pace is known."""
    from tests.sim import HuntressSimulator

    from .conftest import HUNTRESS_KEY, HUNTRESS_SECRET

    with HuntressSimulator(api_key=HUNTRESS_KEY, secret_key=HUNTRESS_SECRET, rate_limit=10) as small:
        small.add_events(fixtures.siem_events(6_000, now_utc() - timedelta(minutes=50), now_utc() - timedelta(minutes=1), seed=9))
        instance.update(
            huntress_base_url=small.url, max_window_seconds=3600, lag_warning_seconds=60, run_deadline_seconds=8, min_collection_interval=60
        )
        dd_run_check(make_check(instance))
        aggregator.assert_service_check('huntress.siem.can_connect', AgentCheck.WARNING)
        (message,) = [c.message for c in aggregator.service_checks('huntress.siem.can_connect')]
        assert 'behind' in message and 'held back by the Huntress rate budget' in message, message
        assert 'run deadline' not in message, message
        assert 'its pace is known once the window being read completes' in message, message
        assert not aggregator.metrics('huntress.siem.catch_up_seconds'), 'no estimate before the pace is known'
        assert small.stats['rate_limited'] == 0


def test_no_late_checks_when_turned_off(make_check, dd_run_check, aggregator, huntress, sink, instance):
    instance.update(late_arrival_window_seconds=0)
    huntress.add_events(fixtures.siem_events(20, now_utc() - timedelta(minutes=3), now_utc() - timedelta(seconds=5), seed=7))
    dd_run_check(make_check(instance))
    dd_run_check(make_check(instance))
    assert set(kinds(huntress)) == {'query'}
    assert not aggregator.metrics('huntress.siem.logs_late')


def test_delivery_ages_are_reported(make_check, dd_run_check, aggregator, huntress, sink, instance):
    huntress.add_events(fixtures.siem_events(100, now_utc() - timedelta(minutes=10), now_utc() - timedelta(seconds=5), seed=8))
    dd_run_check(make_check(instance))
    p50 = aggregator.metrics('huntress.siem.delivery_age_p50_seconds')[0].value
    p99 = aggregator.metrics('huntress.siem.delivery_age_p99_seconds')[0].value
    assert 5 <= p50 <= p99 <= 10 * 60 + 30
