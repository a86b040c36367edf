import copy
from datetime import datetime, timedelta, timezone

import pytest

from datadog_checks.huntress import HuntressCheck
from tests.sim import HuntressSimulator, IntakeSink, fixtures


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: takes about a minute (a real rate-limit window)')


DD_API_KEY = 'dd-test-api-key-0123456789'
HUNTRESS_KEY = 'hk-public-key-abcdef'
HUNTRESS_SECRET = 'hs-private-secret-0987654321'

KEEP = 'KEEP @timestamp, uuid, organization_id, organization.id, message, log.original, host.hostname, event.*, user.name, source.ip'
WINDOWS_QUERY = f'FROM logs | WHERE event.provider == "Microsoft-Windows-Security-Auditing" | {KEEP}'
ALL_QUERY = f'FROM logs | {KEEP}'


@pytest.fixture
def huntress():
    # A generous limit: tests that are not about the rate limit should not wait for it.
    with HuntressSimulator(api_key=HUNTRESS_KEY, secret_key=HUNTRESS_SECRET, rate_limit=10_000) as sim:
        yield sim


@pytest.fixture
def sink():
    with IntakeSink(api_key=DD_API_KEY) as intake:
        yield intake


@pytest.fixture
def instance(huntress, sink):
    return {
        'huntress_api_key': HUNTRESS_KEY,
        'huntress_secret_key': HUNTRESS_SECRET,
        'huntress_base_url': huntress.url,
        'logs_intake_url': sink.url,
        'dd_api_key': DD_API_KEY,
        'collection_delay_seconds': 0,
        'initial_lookback_seconds': 3600,
        'request_timeout': 5,
        'min_collection_interval': 900,
        'tags': ['team:secops'],
        'log_queries': [{'name': 'all', 'esql_query': ALL_QUERY, 'tags': ['log_type:mixed']}],
    }


@pytest.fixture
def make_check(datadog_agent):
    """Builds a check object; several objects share the stubbed persistent cache,
    as the same instance does across Agent restarts."""

    def make(instance, init_config=None):
        return HuntressCheck('huntress', init_config or {}, [copy.deepcopy(instance)])

    return make


def now_utc():
    return datetime.now(timezone.utc)


def recent_events(n, minutes=15, seed=0, end_offset_seconds=60, **kwargs):
    """n events spread over the last `minutes`, ending `end_offset_seconds` ago."""
    end = now_utc() - timedelta(seconds=end_offset_seconds)
    return fixtures.siem_events(n, end - timedelta(minutes=minutes), end, seed=seed, **kwargs)


def run_until_caught_up(dd_run_check, check, sink, expected, max_runs=50):
    """Runs the check until the sink holds `expected` distinct uuids (or max_runs)."""
    runs = 0
    while len(sink.uuids()) < expected and runs < max_runs:
        dd_run_check(check)
        runs += 1
    return runs


def uuids_of(rows):
    return {row['uuid'] for row in rows}
