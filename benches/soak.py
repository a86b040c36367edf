"""Delivery soak: several thousand events per scenario through the real check,
against the Huntress simulator and the intake sink, with faults, restarts and the
real 60 requests/minute limit. Prints one line per scenario:
delivered, lost, duplicated, 429s received and wall time.

    .venv/bin/python benches/soak.py [--events 5000] [--only NAME ...] [--skip-ratelimit]

The ratelimit scenario runs at the real limit (60 requests per minute) for about
three minutes and also prints the sustained events per minute it reached. The
token_lifetime scenario, also at the real limit, is a 15-minute window of 70 pages
(14,000 events) whose page tokens live 30 s, with runs 70 s apart: every event
must arrive within 6 runs (about 3 to 7 minutes); it prints the runs it took.
"""

import argparse
import os
import random
import re
import sys
import time
from datetime import datetime, timedelta, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from datadog_checks.base.stubs import datadog_agent  # noqa: E402

from datadog_checks.huntress import HuntressCheck  # noqa: E402
from tests.sim import HuntressSimulator, IntakeSink, fixtures  # noqa: E402

KEEP = 'FROM logs | KEEP @timestamp, uuid, organization_id, message, host.hostname, event.*, user.name'
HUNTRESS_FAULTS = ['status:500', 'status:503', 'status:408', 'status:429', 'malformed_json', 'truncated_body', 'reset', 'wrong_types']
INTAKE_FAULTS = ['status:500', 'status:503', 'status:429', 'status:408', 'status:413', 'status:400', 'reset']


class CrashingCheck(HuntressCheck):
    """Raises on a position write now and then, after the ids were saved: an Agent
    killed between the intake's answer and the checkpoint write."""

    rng = random.Random(5)

    def write_persistent_cache(self, key, value):
        if re.fullmatch(r'siem_[0-9a-f]{24}', key) and self.rng.random() < 0.2:
            raise RuntimeError('agent killed')
        super().write_persistent_cache(key, value)


def now():
    return datetime.now(timezone.utc)


class Scenario:
    def __init__(self, events, rate_limit=1_000_000, page_size=200):
        self.huntress = HuntressSimulator(rate_limit=rate_limit, page_size=page_size).start()
        self.sink = IntakeSink(api_key='dd-soak-key').start()
        self.expected = set()
        self.events = events
        datadog_agent.reset()

    def add(self, rows):
        self.huntress.add_events(rows)
        self.expected |= {r['uuid'] for r in rows}

    def instance(self, **overrides):
        instance = {
            'huntress_api_key': self.huntress.credentials[0],
            'huntress_secret_key': self.huntress.credentials[1],
            'huntress_base_url': self.huntress.url,
            'logs_intake_url': self.sink.url,
            'dd_api_key': 'dd-soak-key',
            'collection_delay_seconds': 0,
            'max_window_seconds': 3600,
            'initial_lookback_seconds': 3600,
            'request_timeout': 5,
            'log_queries': [{'name': 'soak', 'esql_query': KEEP}],
        }
        instance.update(overrides)
        return instance

    def run_until_done(self, make_check, max_runs=400, between=None):
        for run in range(max_runs):
            if between:
                between(run)
            make_check().run()
            if self.expected <= set(self.sink.uuids()) and not self.huntress.pending_faults():
                return

    def result(self):
        counts = self.sink.uuids()
        delivered = len(self.expected & set(counts))
        extra = set(counts) - self.expected  # rows the simulator adds itself (huge_field), none here
        duplicated = sum(c - 1 for c in counts.values())
        return delivered, len(self.expected) - delivered, duplicated + len(extra), self.huntress.stats['throttled']

    def close(self):
        self.huntress.stop()
        self.sink.stop()


def backlog(n, minutes=30, seed=0, end_offset=60):
    end = now() - timedelta(seconds=end_offset)
    return fixtures.siem_events(n, end - timedelta(minutes=minutes), end, seed=seed)


def scenario_backlog(s):
    s.add(backlog(s.events, seed=1))
    check = HuntressCheck('huntress', {}, [s.instance(max_pages_per_run=5)])
    s.run_until_done(lambda: check)


def scenario_restarts(s):
    s.add(backlog(s.events, seed=2))
    instance = s.instance(max_pages_per_run=4)
    s.run_until_done(lambda: HuntressCheck('huntress', {}, [instance]))


def scenario_huntress_faults(s):
    s.add(backlog(s.events, seed=3))
    rng = random.Random(3)
    instance = s.instance(max_pages_per_run=6)

    def inject(_):
        if rng.random() < 0.5:
            s.huntress.inject(rng.choice(HUNTRESS_FAULTS), count=rng.choice([1, 1, 2, 6]))

    s.run_until_done(lambda: HuntressCheck('huntress', {}, [instance]), between=inject)


def scenario_intake_faults(s):
    s.add(backlog(s.events, seed=4))
    rng = random.Random(4)
    check = HuntressCheck('huntress', {}, [s.instance(max_pages_per_run=6)])

    def inject(_):
        if rng.random() < 0.5:
            s.sink.inject(rng.choice(INTAKE_FAULTS), count=rng.choice([1, 2, 8]))

    s.run_until_done(lambda: check, between=inject)


def scenario_expired_tokens(s):
    s.add(backlog(s.events, seed=5))
    instance = s.instance(max_pages_per_run=3)
    s.run_until_done(lambda: HuntressCheck('huntress', {}, [instance]), between=lambda _: s.huntress.expire_tokens())


def scenario_crashes(s):
    s.add(backlog(s.events, seed=6))
    instance = s.instance(max_pages_per_run=4)
    s.run_until_done(lambda: CrashingCheck('huntress', {}, [instance]))


def scenario_late_indexing(s):
    """Events keep arriving, each indexed up to 3 s after its @timestamp; delay 4 s."""
    instance = s.instance(collection_delay_seconds=4, initial_lookback_seconds=60)
    check = HuntressCheck('huntress', {}, [instance])
    rng = random.Random(7)
    rounds = 12
    per_round = max(1, s.events // rounds)
    for round_ in range(rounds):
        rows = fixtures.siem_events(per_round, now() - timedelta(seconds=1), now(), seed=70 + round_)
        for row in rows:
            stamp = datetime.fromisoformat(row['@timestamp'][:26] + '+00:00').timestamp()
            row['_visible_at'] = stamp + rng.uniform(0, 3)
        s.add(rows)
        check.run()
        time.sleep(1)
    time.sleep(5)
    check.run()


def scenario_intake_outage(s):
    s.add(backlog(s.events, seed=8))
    check = HuntressCheck('huntress', {}, [s.instance()])
    s.sink.inject('status:503', count=10_000)
    for _ in range(3):
        check.run()
    s.sink.clear_faults()
    s.run_until_done(lambda: check)


def scenario_older_than_18h(s):
    end = now() - timedelta(hours=19)
    s.add(fixtures.siem_events(s.events, end - timedelta(minutes=30), end, seed=9))
    check = HuntressCheck('huntress', {}, [s.instance(initial_lookback_seconds=20 * 3600, max_window_seconds=4 * 3600)])
    s.run_until_done(lambda: check)
    assert s.sink.dropped_stale == 0, 'logs sent into the void'


def scenario_ratelimit(s):
    """The real limit, 60 requests per minute: sustained pace with no 429."""
    s.add(backlog(s.events, minutes=60, seed=10))
    check = HuntressCheck('huntress', {}, [s.instance(max_pages_per_run=1000, run_deadline_seconds=600, initial_lookback_seconds=2 * 3600)])
    s.run_until_done(lambda: check, max_runs=20)
    times = sorted(t for t, _, path, status in s.huntress.request_log if path == '/v1/siem/query' and status == 200)
    # The first minute is a burst on an empty window; the sustained pace is what follows it.
    after_burst = times[60:]
    if len(after_burst) > 1:
        minutes = (after_burst[-1] - after_burst[0]) / 60
        rows_after = (len(after_burst) - 1) * s.huntress.page_size
        s.note = f'sustained {rows_after / minutes:,.0f} events/min after the first minute (ceiling 12,000)'


def scenario_token_lifetime(s):
    """One run cannot read the window (its rate budget holds 60 requests), and its
    page tokens are dead by the next run."""
    s.huntress.token_ttl_seconds = 30
    s.add(backlog(s.events, minutes=15, seed=12, end_offset=60))
    instance = s.instance(min_collection_interval=70, max_window_seconds=900, initial_lookback_seconds=990)
    check = HuntressCheck('huntress', {}, [instance])
    delivered = []
    for run in range(6):
        started = time.monotonic()
        before = len(s.sink.logs)
        check.run()
        delivered.append(len(s.sink.logs) - before)
        if s.expected <= set(s.sink.uuids()):
            break
        time.sleep(max(0.0, 70 - (time.monotonic() - started)))
    s.note = f'{len(delivered)} runs, delivered per run: {delivered}'


SCENARIOS = {
    'backlog': scenario_backlog,
    'restarts': scenario_restarts,
    'huntress_faults': scenario_huntress_faults,
    'intake_faults': scenario_intake_faults,
    'expired_tokens': scenario_expired_tokens,
    'crashes': scenario_crashes,
    'late_indexing': scenario_late_indexing,
    'intake_outage': scenario_intake_outage,
    'older_than_18h': scenario_older_than_18h,
    'ratelimit': scenario_ratelimit,
    'token_lifetime': scenario_token_lifetime,
}
# Scenarios at the real rate limit, with their own event counts.
REAL_LIMIT = {'ratelimit': None, 'token_lifetime': 14_000}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--events', type=int, default=5000)
    parser.add_argument('--ratelimit-events', type=int, default=36_000, help='three minutes at the ceiling')
    parser.add_argument('--only', nargs='*')
    parser.add_argument('--skip-ratelimit', action='store_true')
    args = parser.parse_args()
    names = args.only or [n for n in SCENARIOS if not (args.skip_ratelimit and n in REAL_LIMIT)]
    print(f'{"scenario":<16} {"events":>7} {"delivered":>9} {"lost":>5} {"duplicated":>10} {"429s":>5} {"wall s":>7}')
    failed = False
    for name in names:
        events = (REAL_LIMIT[name] or args.ratelimit_events) if name in REAL_LIMIT else args.events
        scenario = Scenario(events, rate_limit=60 if name in REAL_LIMIT else 1_000_000)
        scenario.note = ''
        started = time.monotonic()
        try:
            SCENARIOS[name](scenario)
        finally:
            wall = time.monotonic() - started
            delivered, lost, duplicated, throttled = scenario.result()
            scenario.window_429s = scenario.huntress.stats['rate_limited']
            scenario.close()
        injected = throttled - scenario.window_429s
        if injected:
            scenario.note = f'{injected} of the 429s injected as faults; {scenario.window_429s} from the rate window. {scenario.note}'
        failed |= bool(lost or duplicated or scenario.window_429s)
        print(f'{name:<16} {len(scenario.expected):>7} {delivered:>9} {lost:>5} {duplicated:>10} {throttled:>5} {wall:>7.1f}  {scenario.note}', flush=True)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
