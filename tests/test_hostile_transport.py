"""A hostile or broken upstream, through the real check: whatever the Huntress
API or the intake answers (status, headers, body, timing), the Agent's memory
stays bounded, each run ends by its deadline plus one request_timeout, every run
ends with a service check, no panic reaches Python, and no secret leaks."""

import base64
import json
import resource
import time

import pytest

from datadog_checks.base import AgentCheck
from datadog_checks.huntress import _core

from .conftest import DD_API_KEY, HUNTRESS_KEY, HUNTRESS_SECRET, recent_events
from tests.sim import fixtures

SIEM = 'huntress.siem.can_connect'
API = 'huntress.api.can_connect'
QUERY_TAGS = ['team:secops', 'query_name:all']
MB = 1024 * 1024


def run(dd_run_check, check):
    """One run; the exception the check raised (a failed run), or None."""
    try:
        dd_run_check(check)
    except Exception as error:  # noqa: BLE001 - the run's failure is what is inspected
        return error
    return None


def error_types(aggregator):
    return {tag for m in aggregator.metrics('huntress.siem.errors') for tag in m.tags if tag.startswith('error_type:')}


def statuses(aggregator, name=SIEM):
    return [c.status for c in aggregator.service_checks(name)]


class PeakRss:
    """Peak resident memory of this process during the block, in bytes above the
    level at its start. Linux lets a process reset its high-water mark (VmHWM);
    elsewhere ru_maxrss is used, which only moves when a new peak is reached."""

    def __enter__(self):
        self.reset = _reset_hwm()
        self.start = _current_rss() if self.reset else _max_rss()
        return self

    def __exit__(self, *exc):
        peak = _hwm() if self.reset else _max_rss()
        self.growth = max(0, peak - self.start)
        return False


def _reset_hwm():
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return _hwm() is not None
    except OSError:
        return False


def _status_kb(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024
    return None


def _hwm():
    return _status_kb('VmHWM')


def _current_rss():
    return _status_kb('VmRSS')


def _max_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------------------
# Bodies: streamed up to a cap
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('fault', ['huge_body', 'endless_body'])
def test_a_huge_huntress_body_fails_clearly_in_bounded_memory(
    make_check, dd_run_check, aggregator, huntress, sink, instance, fault
):
    huntress.add_events(recent_events(50, seed=101))
    check = make_check(instance)
    huntress.inject(fault, count=10)
    with PeakRss() as rss:
        error = run(dd_run_check, check)
    assert rss.growth < 100 * MB, f'peak RSS grew by {rss.growth / MB:.0f} MB'
    assert error is not None and 'larger than 32 MiB' in str(error)
    assert statuses(aggregator) == [AgentCheck.CRITICAL]
    assert 'error_type:malformed_response' in error_types(aggregator)
    assert sink.logs == []

    huntress.clear_faults()
    aggregator.reset()
    assert run(dd_run_check, check) is None
    assert len(sink.uuids()) == 50
    assert statuses(aggregator) == [AgentCheck.OK]


@pytest.mark.parametrize('fault', ['huge_body:503', 'endless_body:500'])
def test_a_huge_intake_answer_is_cut_and_the_logs_are_sent_again(
    make_check, dd_run_check, aggregator, huntress, sink, instance, fault
):
    huntress.add_events(recent_events(50, seed=102))
    check = make_check(instance)
    sink.inject(fault, count=5)  # every attempt of the one batch
    with PeakRss() as rss:
        error = run(dd_run_check, check)
    assert rss.growth < 100 * MB, f'peak RSS grew by {rss.growth / MB:.0f} MB'
    assert error is not None and 'intake answered 50' in str(error)
    assert statuses(aggregator) == [AgentCheck.CRITICAL]
    assert 'error_type:intake_unavailable' in error_types(aggregator)

    aggregator.reset()
    assert run(dd_run_check, check) is None
    assert len(sink.uuids()) == 50 and max(sink.uuids().values()) == 1


# ---------------------------------------------------------------------------
# Headers: clamped, garbage ignored
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('limit,remaining', [('abc', '-5'), ('-1', '1e9'), ('99999999999999999999', '')])
def test_garbage_rate_headers_are_ignored(make_check, dd_run_check, aggregator, huntress, sink, instance, limit, remaining):
    huntress.add_events(recent_events(450, seed=103))
    huntress.inject(f'rate_headers:{limit},{remaining}', count=100, path='*')
    assert run(dd_run_check, make_check(instance)) is None
    assert len(sink.uuids()) == 450
    assert statuses(aggregator) == [AgentCheck.OK]
    assert aggregator.metrics('huntress.siem.api_call_limit') == []


def test_a_huge_rate_limit_header_is_clamped_and_allocates_nothing(
    make_check, dd_run_check, aggregator, huntress, sink, instance, caplog
):
    huntress.add_events(recent_events(50, seed=104))
    instance['run_deadline_seconds'] = 4
    # Thirty million requests "used" by someone else: one entry per request would take ~500 MB.
    huntress.inject('rate_headers:30000000,0', count=100, path='*')
    caplog.set_level('INFO')
    started = time.monotonic()
    with PeakRss() as rss:
        run(dd_run_check, make_check(instance))
    assert rss.growth < 100 * MB, f'peak RSS grew by {rss.growth / MB:.0f} MB'
    assert time.monotonic() - started < 4 + 5
    assert [m.value for m in aggregator.metrics('huntress.siem.api_call_limit')] == [30_000_000]
    assert '(of 1000 per minute)' in caplog.text, 'the pacing uses the clamped limit'
    assert len(statuses(aggregator)) == 1


# ---------------------------------------------------------------------------
# Time: request_timeout on every request, the run deadline on the run
# ---------------------------------------------------------------------------


def test_a_huntress_api_that_never_answers_times_out_within_the_deadline(
    make_check, dd_run_check, aggregator, huntress, sink, instance
):
    huntress.add_events(recent_events(50, seed=105))
    instance.update(request_timeout=1, run_deadline_seconds=6, enrich_with_org_tags=False)
    huntress.inject('hang', count=100)
    started = time.monotonic()
    error = run(dd_run_check, make_check(instance))
    elapsed = time.monotonic() - started
    assert elapsed < 6 + 1 + 1.5, elapsed
    assert error is not None and 'request_timeout' in str(error)
    assert statuses(aggregator) == [AgentCheck.CRITICAL]
    assert 'error_type:timeout' in error_types(aggregator)


def test_a_request_timeout_longer_than_the_deadline_still_reports_the_timeout(
    make_check, dd_run_check, aggregator, huntress, sink, instance
):
    instance.update(request_timeout=60, run_deadline_seconds=3, enrich_with_org_tags=False)
    huntress.inject('hang', count=100)
    started = time.monotonic()
    error = run(dd_run_check, make_check(instance))
    assert time.monotonic() - started < 3 + 1.5
    assert error is not None and 'no answer' in str(error)
    assert statuses(aggregator) == [AgentCheck.CRITICAL]
    assert 'error_type:timeout' in error_types(aggregator)


def test_an_intake_that_never_answers_is_cut_by_request_timeout(
    make_check, dd_run_check, aggregator, huntress, sink, instance
):
    huntress.add_events(recent_events(50, seed=106))
    instance.update(request_timeout=1, run_deadline_seconds=3)
    sink.inject('hang', count=100)
    started = time.monotonic()
    error = run(dd_run_check, make_check(instance))
    assert time.monotonic() - started < 3 + 1 + 1.5
    assert error is not None and 'request_timeout' in str(error)
    assert statuses(aggregator) == [AgentCheck.CRITICAL]
    assert 'error_type:intake_unavailable' in error_types(aggregator)


def test_an_intake_refusing_everything_stops_splitting_at_the_deadline(
    make_check, dd_run_check, aggregator, huntress, sink, instance
):
    events = recent_events(1000, seed=107)
    huntress.add_events(events)
    instance.update(run_deadline_seconds=2, max_window_seconds=3600)
    sink.inject('status:400', count=100_000)
    started = time.monotonic()
    run(dd_run_check, make_check(instance))
    assert time.monotonic() - started < 2 + 5 + 1.5  # deadline + one request_timeout
    refused_requests = len(sink.requests)
    assert refused_requests < 2 * 1000 - 1, 'splitting went on past the deadline'
    forwarded = sum(m.value for m in aggregator.metrics('huntress.siem.logs_forwarded'))
    refused = sum(m.value for m in aggregator.metrics('huntress.siem.logs_refused'))
    assert forwarded == 0, 'refused logs are not forwarded logs'
    assert 0 < refused < 1000
    assert statuses(aggregator) == [AgentCheck.WARNING]

    # The logs that were not tried alone are not checkpointed: the next run sends them.
    sink.clear_faults()
    sink.clear()
    aggregator.reset()
    dd_run_check(make_check(instance))
    delivered = set(sink.uuids())
    assert len(delivered) == 1000 - refused
    assert sum(m.value for m in aggregator.metrics('huntress.siem.logs_forwarded')) == len(delivered)


# ---------------------------------------------------------------------------
# Panics: caught at the boundary
# ---------------------------------------------------------------------------


def test_a_panic_in_a_run_is_a_critical_internal_error_and_the_next_run_works(
    make_check, dd_run_check, aggregator, huntress, sink, instance
):
    huntress.add_events(recent_events(50, seed=108))
    check = make_check(instance)
    _core._inject_panic('run')
    error = run(dd_run_check, check)
    assert error is not None and 'internal error' in str(error) and 'panic injected' in str(error)
    aggregator.assert_service_check(SIEM, AgentCheck.CRITICAL, tags=QUERY_TAGS)
    aggregator.assert_metric('huntress.siem.errors', value=1, tags=['team:secops', 'error_type:internal'])

    aggregator.reset()
    assert run(dd_run_check, check) is None
    assert len(sink.uuids()) == 50
    aggregator.assert_service_check(SIEM, AgentCheck.OK, tags=QUERY_TAGS)


def test_a_panic_in_one_query_fails_that_query_alone(make_check, dd_run_check, aggregator, huntress, sink, instance):
    huntress.add_events(recent_events(50, seed=109))
    instance['log_queries'].append({'name': 'second', 'esql_query': instance['log_queries'][0]['esql_query']})
    check = make_check(instance)
    _core._inject_panic('query')
    assert run(dd_run_check, check) is None, 'one query failing is not a failed run'
    aggregator.assert_service_check(SIEM, AgentCheck.CRITICAL, tags=QUERY_TAGS)
    aggregator.assert_service_check(SIEM, AgentCheck.OK, tags=['team:secops', 'query_name:second'])
    aggregator.assert_metric('huntress.siem.errors', value=1, tags=QUERY_TAGS + ['error_type:internal'])
    aggregator.assert_metric('huntress.siem.logs_forwarded', value=50, tags=['team:secops', 'query_name:second'])
    assert len(sink.uuids()) == 50

    aggregator.reset()
    assert run(dd_run_check, check) is None
    aggregator.assert_service_check(SIEM, AgentCheck.OK, tags=QUERY_TAGS)
    aggregator.assert_metric('huntress.siem.logs_forwarded', value=50, tags=QUERY_TAGS)


def test_a_panic_in_one_feed_fails_that_feed_alone(make_check, dd_run_check, aggregator, huntress, sink, instance):
    huntress.add_events(recent_events(50, seed=110))
    instance['incidents'] = {'enabled': True}
    check = make_check(instance)
    _core._inject_panic('feed')
    assert run(dd_run_check, check) is None
    aggregator.assert_service_check(SIEM, AgentCheck.OK, tags=QUERY_TAGS)
    aggregator.assert_metric('huntress.siem.logs_forwarded', value=50, tags=QUERY_TAGS)
    aggregator.assert_metric('huntress.siem.errors', value=1, tags=['team:secops', 'error_type:internal'])
    checks = aggregator.service_checks(API)
    assert len(checks) == 1 and checks[0].status != AgentCheck.OK and 'internal error' in checks[0].message

    aggregator.reset()
    assert run(dd_run_check, check) is None
    aggregator.assert_service_check(API, AgentCheck.OK)


def test_a_panic_while_the_check_starts_is_reported_on_every_run(make_check, dd_run_check, aggregator, instance):
    _core._inject_panic('new')
    check = make_check(instance)
    for _ in range(2):
        aggregator.reset()
        error = run(dd_run_check, check)
        assert error is not None and 'could not start' in str(error)
        aggregator.assert_service_check(SIEM, AgentCheck.CRITICAL, tags=['team:secops'])
        aggregator.assert_metric('huntress.siem.errors', value=1, tags=['team:secops', 'error_type:internal'])


def test_a_panic_exception_never_escapes_the_check(make_check, dd_run_check, aggregator, instance):
    """Should a PanicException (a BaseException) come out of the core, the check
    turns it into an ordinary failed run with a service check."""
    check = make_check(instance)
    panic_type = type('PanicException', (BaseException,), {})

    class PanickingCollector:
        cache_id = check._collector.cache_id

        def run(self, *_):
            raise panic_type('core panicked')

    check._collector = PanickingCollector()
    error = run(dd_run_check, check)
    assert error is not None and 'core panicked' in str(error)
    aggregator.assert_service_check(SIEM, AgentCheck.CRITICAL)
    aggregator.assert_metric_has_tag('huntress.siem.errors', 'error_type:internal')


# ---------------------------------------------------------------------------
# Secrets: an upstream that echoes the request headers
# ---------------------------------------------------------------------------


def secret_forms():
    forms = {HUNTRESS_KEY, HUNTRESS_SECRET, DD_API_KEY}
    for secret in (f'{HUNTRESS_KEY}:{HUNTRESS_SECRET}', HUNTRESS_KEY, HUNTRESS_SECRET, DD_API_KEY):
        raw = secret.encode()
        for encode in (base64.standard_b64encode, base64.urlsafe_b64encode):
            encoded = encode(raw).decode()
            forms |= {encoded, encoded.rstrip('=')}
    return forms


@pytest.mark.parametrize(
    'feed',
    ['siem', 'organizations', 'agents', 'incident_reports', 'intake_400', 'intake_500'],
)
def test_an_upstream_echoing_headers_leaks_no_secret(
    make_check, dd_run_check, aggregator, datadog_agent, huntress, sink, instance, caplog, feed
):
    orgs = fixtures.organizations(3, seed=109)
    huntress.set_organizations(orgs)
    huntress.set_agents(fixtures.agents(5, orgs, seed=110))
    huntress.add_events(recent_events(20, seed=111))
    instance.update(incidents={'enabled': True}, metrics={'agents': {'enabled': True}})
    if feed.startswith('intake'):
        sink.inject(f'echo_headers:{feed[-3:]}', count=100)
    elif feed == 'siem':
        huntress.inject('echo_headers:400', count=100)
    else:
        huntress.inject('echo_headers:400', count=100, path=f'/v1/{feed}')
    caplog.set_level('DEBUG')
    error = run(dd_run_check, make_check(instance))

    texts = {
        'exception': str(error or ''),
        'agent log': caplog.text,
        'service checks': json.dumps([(c.name, c.message, c.tags) for n in aggregator._service_checks for c in aggregator.service_checks(n)]),
        'metric tags': json.dumps([m.tags for n in aggregator.metric_names for m in aggregator.metrics(n)]),
        'events': json.dumps([e for e in aggregator.events], default=str),
        'persistent cache': json.dumps(datadog_agent._cache),
        'forwarded logs': json.dumps(sink.logs),
    }
    quoted = texts['service checks'] + texts['agent log']
    assert 'credentials' in quoted or 'headers' in quoted, 'the echoed body is quoted, scrubbed'
    for where, text in texts.items():
        for form in secret_forms():
            assert form not in text, f'{form!r} leaked into the {where}'


def test_a_huntress_api_that_never_answers_any_feed_ends_with_non_ok_checks(
    make_check, dd_run_check, aggregator, huntress, sink, instance
):
    """The organization directory is fetched first and uses up the run: the
    query that could not start says so instead of reporting OK."""
    instance.update(request_timeout=1, run_deadline_seconds=4)
    huntress.inject('hang', count=100, path='*')
    started = time.monotonic()
    run(dd_run_check, make_check(instance))
    assert time.monotonic() - started < 4 + 1 + 1.5
    assert statuses(aggregator, API) == [AgentCheck.CRITICAL]
    assert statuses(aggregator) == [AgentCheck.WARNING]
    assert 'error_type:timeout' in error_types(aggregator)
