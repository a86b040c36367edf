"""Fault matrix: every scenario ends with each expected event in the sink exactly
once. The real check runs (dd_run_check) against the Huntress simulator and the
intake sink, with injected faults, restarts (new check objects sharing the
persistent cache), page caps, expired tokens, indexing delay and the rate limit."""

import re
import threading
import time
from datetime import timedelta

import pytest

from datadog_checks.base import AgentCheck
from datadog_checks.huntress import HuntressCheck
from tests.sim import HuntressSimulator, fixtures

from .conftest import ALL_QUERY, HUNTRESS_KEY, HUNTRESS_SECRET, now_utc, recent_events, run_until_caught_up, uuids_of


def assert_exactly_once(sink, events):
    counts = sink.uuids()
    missing = uuids_of(events) - set(counts)
    duplicated = {u: c for u, c in counts.items() if c > 1}
    assert not missing, f'{len(missing)} events lost'
    assert not duplicated, f'{len(duplicated)} events duplicated'
    assert set(counts) == uuids_of(events)


def position_keys(datadog_agent):
    return {k: v for k, v in datadog_agent._cache.items() if re.search(r'_siem_[0-9a-f]{24}$', k)}


# 1. A backlog bigger than one run, across restarts
def test_backlog_resumes_across_restarts_without_replay(make_check, dd_run_check, aggregator, huntress, sink, instance):
    events = recent_events(2000, seed=11)
    huntress.add_events(events)
    instance.update(max_pages_per_run=3, max_window_seconds=3600)
    for _ in range(4):  # a restart before every run
        dd_run_check(make_check(instance))
    assert_exactly_once(sink, events)
    assert sum(m.value for m in aggregator.metrics('huntress.siem.logs_deduplicated')) == 0
    # 10 pages, plus at most one for a new second of window; a replay would add more.
    assert sum(m.value for m in aggregator.metrics('huntress.siem.pages_fetched')) in (10, 11)


def test_backlog_that_keeps_growing_never_livelocks(make_check, dd_run_check, huntress, sink, instance):
    instance.update(max_pages_per_run=2, max_window_seconds=3600)
    check = make_check(instance)
    added = []
    forwarded_per_run = []
    for round_ in range(6):
        # 500 new events (2.5 pages) per run against a cap of 2 pages: the backlog grows.
        batch = fixtures.siem_events(500, now_utc() - timedelta(seconds=0.5), now_utc(), seed=100 + round_)
        huntress.add_events(batch)
        added += batch
        before = len(sink.logs)
        dd_run_check(check)
        forwarded_per_run.append(len(sink.logs) - before)
        time.sleep(1.1)
    assert all(n > 0 for n in forwarded_per_run[1:]), forwarded_per_run  # every run makes progress
    run_until_caught_up(dd_run_check, check, sink, len(added))
    assert_exactly_once(sink, added)


# 1 + 3. Expired page tokens replay the range without duplicates
def test_expired_token_restarts_range_without_duplicates(make_check, dd_run_check, aggregator, huntress, sink, instance):
    events = recent_events(1000, seed=12)
    huntress.add_events(events)
    instance.update(max_pages_per_run=2, max_window_seconds=3600)
    dd_run_check(make_check(instance))
    assert len(sink.logs) == 400
    huntress.expire_tokens()
    check = make_check(instance)
    run_until_caught_up(dd_run_check, check, sink, len(events))
    assert_exactly_once(sink, events)
    assert sum(m.value for m in aggregator.metrics('huntress.siem.logs_deduplicated')) == 400
    aggregator.assert_metric_has_tag('huntress.siem.errors', 'error_type:token_expired')


def test_tokens_expiring_before_every_run_never_livelock(make_check, dd_run_check, huntress, sink, instance):
    """A window larger than one run, whose page token never survives to the next
    run: the window shrinks until it fits, instead of replaying its first pages forever."""
    events = recent_events(3000, seed=32, minutes=20)
    huntress.add_events(events)
    instance.update(max_pages_per_run=3, max_window_seconds=3600)
    check = make_check(instance)
    for _ in range(60):
        huntress.expire_tokens()
        dd_run_check(check)
        if set(sink.uuids()) >= uuids_of(events):
            break
    assert_exactly_once(sink, events)


# 2. Late-indexed events
def test_collection_delay_absorbs_indexing_delay(make_check, dd_run_check, huntress, sink, instance):
    indexing_delay = 2.0
    start = now_utc() - timedelta(seconds=3)
    events = fixtures.siem_events(300, start, now_utc(), seed=13)
    for row in events:
        row['_visible_at'] = _epoch(row['@timestamp']) + indexing_delay
    huntress.add_events(events)
    instance.update(collection_delay_seconds=4, initial_lookback_seconds=60)
    check = make_check(instance)
    dd_run_check(check)
    time.sleep(5)
    dd_run_check(check)
    assert_exactly_once(sink, events)


def test_without_collection_delay_late_events_would_be_missed(make_check, dd_run_check, huntress, sink, instance):
    """The reason for the default: a window that ends at "now" passes events not yet indexed."""
    start = now_utc() - timedelta(seconds=2)
    events = fixtures.siem_events(300, start, now_utc(), seed=14)
    for row in events:
        row['_visible_at'] = _epoch(row['@timestamp']) + 30
    huntress.add_events(events)
    instance.update(collection_delay_seconds=0, initial_lookback_seconds=60)
    dd_run_check(make_check(instance))
    assert len(sink.logs) == 0  # none visible yet, and the checkpoint has moved past them


def _epoch(iso):
    from datetime import datetime

    return datetime.fromisoformat(iso.replace('Z', '+00:00')[:26] + '+00:00').timestamp()


# 3. Exactly once across a crash between "intake accepted" and "checkpoint written"
class CrashAfterIdsCheck(HuntressCheck):
    """Dies (raises) on the first position write after the intake accepted a page:
    the ids are saved, the checkpoint is not, as when the Agent is killed."""

    crashed = False

    def write_persistent_cache(self, key, value):
        if re.fullmatch(r'siem_[0-9a-f]{24}', key) and not CrashAfterIdsCheck.crashed:
            CrashAfterIdsCheck.crashed = True
            raise RuntimeError('agent killed')
        super().write_persistent_cache(key, value)


def test_crash_between_accept_and_checkpoint_does_not_resend(dd_run_check, datadog_agent, aggregator, huntress, sink, instance):
    events = recent_events(1600, seed=15)
    huntress.add_events(events)
    instance.update(max_window_seconds=3600)
    CrashAfterIdsCheck.crashed = False
    with pytest.raises(Exception, match='agent killed'):
        dd_run_check(CrashAfterIdsCheck('huntress', {}, [instance]))
    accepted = len(sink.logs)  # the first batch: accepted, its checkpoint lost
    assert 0 < accepted < len(events)
    restarted = HuntressCheck('huntress', {}, [instance])
    dd_run_check(restarted)
    assert_exactly_once(sink, events)
    assert sum(m.value for m in aggregator.metrics('huntress.siem.logs_deduplicated')) == accepted


# 4. Rate limit: pacing, a shared budget per key, and a 429 that still arrives
def test_injected_429_is_retried_after_a_short_derived_wait(make_check, dd_run_check, aggregator, huntress, sink, instance):
    events = recent_events(400, seed=16)
    huntress.add_events(events)
    huntress.inject('status:429', count=1)
    started = time.monotonic()
    dd_run_check(make_check(instance))
    assert time.monotonic() - started < 15  # never a fixed 60 s sleep
    assert_exactly_once(sink, events)
    aggregator.assert_metric_has_tag('huntress.siem.errors', 'error_type:rate_limited')


@pytest.mark.slow
def test_instances_sharing_a_key_share_the_budget_and_get_no_429(dd_run_check, datadog_agent, sink):
    """Two instances, one key, 70 pages in all at 60 requests per minute."""
    with HuntressSimulator(api_key=HUNTRESS_KEY, secret_key=HUNTRESS_SECRET, rate_limit=60) as huntress:
        events = recent_events(14000, seed=17)
        huntress.add_events(events)
        checks = []
        for name, where in (('windows', '=='), ('others', '!=')):
            instance = {
                'huntress_api_key': HUNTRESS_KEY,
                'huntress_secret_key': HUNTRESS_SECRET,
                'huntress_base_url': huntress.url,
                'logs_intake_url': sink.url,
                'dd_api_key': 'dd-test-api-key-0123456789',
                'collection_delay_seconds': 0,
                'max_window_seconds': 3600,
                'run_deadline_seconds': 120,
                'log_queries': [
                    {
                        'name': name,
                        'esql_query': ALL_QUERY.replace(
                            'FROM logs |', f'FROM logs | WHERE event.provider {where} "Microsoft-Windows-Security-Auditing" |'
                        ),
                    }
                ],
            }
            checks.append(HuntressCheck('huntress', {}, [instance]))
        errors = []
        threads = [threading.Thread(target=lambda c=c: errors.append(c.run())) for c in checks]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        elapsed = time.monotonic() - started
        assert errors == ['', '']
        assert huntress.stats['throttled'] == 0
        assert_exactly_once(sink, events)
        assert elapsed >= 59  # 72 requests cannot fit in one minute: pacing waited
        assert _max_requests_in_any_minute(huntress) <= 60


def _max_requests_in_any_minute(huntress):
    times = sorted(t for t, _, _, status in huntress.request_log if status != 429)
    return max(sum(1 for u in times if t <= u < t + 60) for t in times)


# 5. Run deadline
def test_run_deadline_saves_cursor_and_next_run_continues(make_check, dd_run_check, aggregator, huntress, sink, instance):
    events = recent_events(1000, seed=18)
    huntress.add_events(events)
    for _ in range(10):
        huntress.inject('slow:0.6', count=1)
    instance.update(run_deadline_seconds=1.5, max_window_seconds=3600)
    check = make_check(instance)
    started = time.monotonic()
    dd_run_check(check)
    assert time.monotonic() - started < 1.5 + 5  # deadline plus one request in flight
    assert 0 < len(sink.logs) < 1000
    run_until_caught_up(dd_run_check, check, sink, len(events))
    assert_exactly_once(sink, events)


def test_batch_of_several_pages_half_delivered_commits_the_pages_delivered(make_check, dd_run_check, aggregator, huntress, sink, instance):
    """Pages go to the intake together. When only the first half of such a batch
    gets through, the checkpoint moves past exactly the pages delivered in full:
    the next run starts at the first page not fully delivered and sends each
    event once."""
    events = recent_events(1000, seed=41)  # five pages, one batch
    huntress.add_events(events)
    instance.update(max_window_seconds=3600)
    sink.inject('status:413', count=1)  # the batch is split in two halves
    sink.inject('slow:0', count=1)  # the first half is accepted
    sink.inject('status:503', count=5)  # the second half fails every retry
    check = make_check(instance)
    with pytest.raises(Exception):
        dd_run_check(check)
    assert len(sink.logs) == 500
    aggregator.reset()
    dd_run_check(check)
    assert_exactly_once(sink, events)
    # Pages 1-2 were committed; page 3 is fetched again and its first 100 rows dropped.
    assert sum(m.value for m in aggregator.metrics('huntress.siem.logs_deduplicated')) == 100


# 6. Intake outage over several runs, and the 18 h rule
def test_intake_outage_over_several_runs(make_check, dd_run_check, aggregator, huntress, sink, instance, datadog_agent):
    events = recent_events(500, seed=19)
    huntress.add_events(events)
    check = make_check(instance)
    sink.inject('status:500', count=1000)
    for _ in range(3):
        before = dict(position_keys(datadog_agent))
        with pytest.raises(Exception):
            dd_run_check(check)
        assert position_keys(datadog_agent) == before or not before
    assert sink.logs == []
    sink.clear_faults()
    dd_run_check(check)
    assert_exactly_once(sink, events)


@pytest.mark.parametrize('policy', ['rewrite_date', 'skip'])
def test_events_older_than_18h_follow_the_policy(make_check, dd_run_check, aggregator, huntress, sink, instance, policy):
    end = now_utc() - timedelta(hours=19)
    old = fixtures.siem_events(200, end - timedelta(minutes=30), end, seed=20)
    fresh = recent_events(100, seed=21)
    huntress.add_events(old + fresh)
    instance.update(initial_lookback_seconds=20 * 3600, max_window_seconds=86400, stale_log_policy=policy)
    dd_run_check(make_check(instance))
    stale = sum(m.value for m in aggregator.metrics('huntress.siem.logs_stale'))
    assert stale == 200
    assert sink.dropped_stale == 0  # nothing sent into the void
    if policy == 'rewrite_date':
        assert_exactly_once(sink, old + fresh)
        redated = [log for log in sink.logs if log.get('huntress.date_rewritten')]
        assert len(redated) == 200 and all('huntress.original_timestamp' in log for log in redated)
    else:
        assert_exactly_once(sink, fresh)
    aggregator.assert_service_check('huntress.siem.can_connect', AgentCheck.WARNING)


# 7. Huntress faults: recovered by retry, or a clear failure that loses nothing
RECOVERABLE = ['status:500', 'status:502', 'status:503', 'status:408', 'malformed_json', 'truncated_body', 'reset', 'wrong_types']


@pytest.mark.parametrize('fault', RECOVERABLE)
def test_transient_huntress_fault_is_retried(make_check, dd_run_check, aggregator, huntress, sink, instance, fault):
    events = recent_events(600, seed=22)
    huntress.add_events(events)
    instance.update(max_window_seconds=3600, max_pages_per_run=1)
    dd_run_check(make_check(instance))  # page 1, then a restart mid-window
    huntress.inject(fault, count=1)
    instance.update(max_pages_per_run=100)
    dd_run_check(make_check(instance))
    assert_exactly_once(sink, events)
    aggregator.assert_metric('huntress.siem.errors')
    aggregator.assert_service_check('huntress.siem.can_connect', AgentCheck.OK)


ERROR_TYPES = {
    'status:500': 'server_error',
    'status:503': 'server_error',
    'status:408': 'query_timeout',
    'malformed_json': 'malformed_response',
    'truncated_body': 'network',
    'reset': 'network',
    'wrong_types': 'malformed_response',
    'status:429': 'rate_limited',
}


@pytest.mark.parametrize('fault', sorted(ERROR_TYPES))
def test_persistent_huntress_fault_fails_clearly_and_loses_nothing(
    make_check, dd_run_check, aggregator, datadog_agent, huntress, sink, instance, fault
):
    events = recent_events(600, seed=24)
    huntress.add_events(events)
    instance.update(max_window_seconds=3600, max_pages_per_run=1)
    dd_run_check(make_check(instance))  # page 1 delivered, cursor mid-window
    saved = dict(position_keys(datadog_agent))
    huntress.inject(fault, count=100)
    aggregator.reset()
    with pytest.raises(Exception) as error:
        dd_run_check(make_check(instance))
    assert 'Huntress API' in str(error.value)
    aggregator.assert_service_check('huntress.siem.can_connect', AgentCheck.CRITICAL)
    aggregator.assert_metric_has_tag('huntress.siem.errors', f'error_type:{ERROR_TYPES[fault]}')
    assert position_keys(datadog_agent) == saved  # the checkpoint did not move
    huntress.clear_faults()
    run_until_caught_up(dd_run_check, make_check(instance), sink, len(events))
    assert_exactly_once(sink, events)


def test_query_memory_limit_on_a_first_page_shrinks_the_window(make_check, dd_run_check, aggregator, huntress, sink, instance):
    events = recent_events(400, seed=25)
    huntress.add_events(events)
    huntress.inject('status:413', count=2)
    dd_run_check(make_check(instance))
    run_until_caught_up(dd_run_check, make_check(instance), sink, len(events))
    assert_exactly_once(sink, events)
    aggregator.assert_metric_has_tag('huntress.siem.errors', 'error_type:query_too_large')


def test_huge_field_is_truncated_and_delivered(make_check, dd_run_check, aggregator, huntress, sink, instance):
    events = recent_events(50, seed=26)
    huntress.add_events(events)
    huntress.inject('huge_field', count=1)
    dd_run_check(make_check(instance))
    counts = sink.uuids()
    assert uuids_of(events) <= set(counts) and max(counts.values()) == 1
    assert len(counts) == len(events) + 1  # the simulator adds one row with a 2 MB message
    assert sum(m.value for m in aggregator.metrics('huntress.siem.logs_truncated')) == 1
    assert max(len(str(log.get('message', ''))) for log in sink.logs) < 1_000_000


def test_intake_refusing_a_batch_splits_it(make_check, dd_run_check, huntress, sink, instance):
    events = recent_events(200, seed=27)
    huntress.add_events(events)
    sink.inject('status:413', count=1)
    sink.inject('status:400', count=1)
    dd_run_check(make_check(instance))
    assert_exactly_once(sink, events)


def test_intake_redirect_is_not_followed_with_the_api_key(make_check, dd_run_check, huntress, sink, instance):
    from tests.sim import EchoServer

    with EchoServer('127.0.0.1') as elsewhere:
        huntress.add_events(recent_events(20, seed=28))
        sink.inject(f'redirect:{elsewhere.url}', count=1)
        with pytest.raises(Exception, match='redirect'):
            dd_run_check(make_check(instance))
        assert not elsewhere.saw_header('DD-API-KEY')


# 8. Config edits, new keys and moved instances
def test_new_api_key_or_query_name_starts_a_new_checkpoint(make_check, instance):
    base = make_check(instance)
    other_key = make_check({**instance, 'huntress_api_key': 'another-key'})
    retagged = make_check({**instance, 'tags': ['new:tag'], 'request_timeout': 9, 'max_pages_per_run': 7})
    assert base.persistent_cache_id() != other_key.persistent_cache_id()
    assert base.persistent_cache_id() == retagged.persistent_cache_id()


def test_renamed_query_starts_from_the_lookback(make_check, dd_run_check, huntress, sink, instance):
    events = recent_events(100, seed=29)
    huntress.add_events(events)
    dd_run_check(make_check(instance))
    instance['log_queries'][0]['name'] = 'renamed'
    dd_run_check(make_check(instance))
    assert sum(sink.uuids().values()) == 200  # a new query name is a new stream


def test_moved_instance_without_cache_uses_bounded_lookback(make_check, dd_run_check, datadog_agent, huntress, sink, instance):
    old = recent_events(300, seed=30, minutes=60, end_offset_seconds=2 * 3600)
    recent = recent_events(300, seed=31)
    huntress.add_events(old + recent)
    instance.update(initial_lookback_seconds=1800, max_pages_per_run=5)
    datadog_agent.reset()  # the node it moved to has no cache
    dd_run_check(make_check(instance))
    assert_exactly_once(sink, recent)
    # The late-arrival checks count and re-read only what the lookback reached.
    collection = [entry for entry in huntress.siem_log if entry['kind'] == 'query']
    assert len(collection) <= 5 + 1
