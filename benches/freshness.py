"""Freshness of a live SIEM feed through the real check, in real time.

    .venv/bin/python benches/freshness.py [--minutes 15] [--rate 2] [--interval 60]
        [--stats both|served|refused] [--time-filters served|refused]
        [--lag-mix 90:0-10,8:10-120,2:120-600] [--long-tail 0.5] [--long-tail-hours 1-3]
        [--drain-minutes 20] [--set key=value ...] [--query ESQL] [--seed N] [--assert]

A feed adds `--rate` events a second to the Huntress simulator for `--minutes`.
Each event's @timestamp is the moment it is made; the SIEM indexes it after a lag
drawn from `--lag-mix` (percent:low-high seconds, uniform within each part), so it
is invisible to queries until then. `--long-tail P` makes P percent of the events
arrive hours late instead: their @timestamp lies `--long-tail-hours` in the past
and they are visible at once. The check (the real HuntressCheck, with the
simulator at the real 60 requests a minute and the intake sink on loopback) runs
every `--interval` seconds with the instance below and the `--set` overrides
(YAML values; a dotted key sets a nested one). When the feed stops, the check
keeps running until every event is delivered or `--drain-minutes` have passed.

`--stats served` serves ES|QL STATS, `refused` answers 422 to it (an API that
does not allow it); `both` (the default) runs the two side by side in two
processes, each with its own simulator, sink and check, from the same events.

Per mode it prints: events sent, delivered, lost, duplicated (by uuid at the
sink); freshness = the time the sink accepted an event minus the time it became
visible in the simulator (p50, p90, p99, max); the Huntress requests, per
minute and per run, split into STATS queries, re-reads (a WHERE on @timestamp)
and other SIEM queries, plus other API calls and 429s; and the runs.
`--assert` exits 1 when a mode lost or duplicated an event.
"""

import argparse
import json
import os
import random
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta, timezone
from multiprocessing import get_context

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DEFAULT_QUERY = 'FROM logs | KEEP @timestamp, uuid, organization_id, message, host.hostname, event.*, user.name'
DEFAULT_LAG_MIX = '90:0-10,8:10-120,2:120-600'
SIEM_KINDS = ('stats', 'reread', 'query')


def parse_range(text, what):
    low, sep, high = text.partition('-')
    try:
        low, high = float(low), float(high)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{what}: expected LOW-HIGH, got {text!r}') from None
    if not sep or low < 0 or high < low:
        raise argparse.ArgumentTypeError(f'{what}: expected 0 <= LOW <= HIGH, got {text!r}')
    return low, high


def parse_lag_mix(text):
    """'90:0-10,8:10-120' -> [(weight, low_s, high_s), ...]."""
    parts = []
    for item in text.split(','):
        weight, sep, bounds = item.strip().partition(':')
        try:
            weight = float(weight)
        except ValueError:
            weight = -1
        if not sep or weight <= 0:
            raise argparse.ArgumentTypeError(f'--lag-mix: expected PERCENT:LOW-HIGH items, got {item!r}')
        parts.append((weight, *parse_range(bounds, '--lag-mix')))
    return parts


def parse_override(text):
    import yaml

    key, sep, value = text.partition('=')
    if not sep or not key:
        raise argparse.ArgumentTypeError(f'--set: expected key=value, got {text!r}')
    return key, yaml.safe_load(value)


def apply_overrides(instance, overrides):
    for key, value in overrides:
        *parents, leaf = key.split('.')
        node = instance
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return instance


class Feed:
    """Makes events in real time and hands them to the simulator with their visibility times."""

    def __init__(self, sim, args):
        from tests.sim import fixtures

        self.fixtures = fixtures
        self.sim = sim
        self.rate = args.rate
        self.mix = args.lag_mix
        self.long_tail = args.long_tail / 100
        self.long_tail_hours = args.long_tail_hours
        self.rng = random.Random(args.seed)
        self.visible_at = {}  # uuid -> epoch seconds it becomes visible
        self.indexed_late = {}  # uuid -> seconds from @timestamp to visible
        self.long_tail_ids = set()
        self.stop = threading.Event()

    def lag(self):
        weights = [w for w, _, _ in self.mix]
        _, low, high = self.rng.choices(self.mix, weights)[0]
        return self.rng.uniform(low, high)

    def make(self, n, tick):
        now = datetime.now(timezone.utc)
        rows = self.fixtures.siem_events(n, now - timedelta(seconds=1), now, seed=self.rng.randrange(1 << 30) + tick)
        for row in rows:
            made = time.time()
            row['uuid'] = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
            if self.rng.random() < self.long_tail:
                stamped = made - self.rng.uniform(*self.long_tail_hours) * 3600
                row['_visible_at'] = made
                self.long_tail_ids.add(row['uuid'])
            else:
                stamped = made
                row['_visible_at'] = made + self.lag()
            row['@timestamp'] = format_epoch(stamped)
            self.visible_at[row['uuid']] = row['_visible_at']
            self.indexed_late[row['uuid']] = row['_visible_at'] - stamped
        return rows

    def run(self, seconds):
        started = time.monotonic()
        owed, tick = 0.0, 0
        while not self.stop.is_set() and tick < seconds:
            owed += self.rate
            n = int(owed)
            owed -= n
            if n:
                self.sim.add_events(self.make(n, tick))
            tick += 1
            self.stop.wait(max(0.0, started + tick - time.monotonic()))


def format_epoch(seconds):
    from tests.sim.timeutil import format_ns

    return format_ns(int(seconds * 1_000_000_000))


def base_instance(sim, sink, args):
    return {
        'huntress_api_key': sim.credentials[0],
        'huntress_secret_key': sim.credentials[1],
        'huntress_base_url': sim.url,
        'logs_intake_url': sink.url,
        'dd_api_key': sink.api_key,
        'min_collection_interval': args.interval,
        'request_timeout': 10,
        'log_queries': [{'name': 'fresh', 'esql_query': args.query}],
    }


def percentile(sorted_values, fraction):
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, int(-(-fraction * len(sorted_values) // 1)))
    return sorted_values[rank - 1]


def run_mode(mode, args):
    """One simulator, one sink, one check: the feed, then the drain. Returns the figures."""
    from datadog_checks.base.stubs import datadog_agent

    from datadog_checks.huntress import HuntressCheck
    from tests.sim import HuntressSimulator, IntakeSink

    datadog_agent.reset()
    with HuntressSimulator(rate_limit=60, page_size=200) as sim, IntakeSink() as sink:
        sim.stats_refused = mode == 'refused'
        sim.time_filters_refused = args.time_filters == 'refused'
        instance = apply_overrides(base_instance(sim, sink, args), args.set)
        check = HuntressCheck('huntress', {}, [instance])
        feed = Feed(sim, args)
        feeder = threading.Thread(target=feed.run, args=(args.minutes * 60,), daemon=True)
        started = time.monotonic()
        feeder.start()
        runs, failed = drive(check, feed, sink, feeder, started, mode, args)
        feed.stop.set()
        feeder.join()
        wall = time.monotonic() - started
        return figures(mode, feed, sim, sink, runs, failed, wall)


def drive(check, feed, sink, feeder, started, mode, args):
    """Runs the check every interval while the feed lasts, then until all is delivered or the drain limit."""
    runs, failed = 0, 0
    drain_until = None
    while True:
        if not feeder.is_alive() and drain_until is None:
            drain_until = time.monotonic() + args.drain_minutes * 60
        if drain_until is not None and (time.monotonic() >= drain_until or set(feed.visible_at) <= set(sink.uuids())):
            return runs, failed
        error = check.run()
        runs += 1
        failed += bool(error)
        delivered = len(set(feed.visible_at) & set(sink.uuids()))
        note = f' (run failed: {error[:200]})' if error else ''
        print(f'[{mode}] run {runs} at {time.monotonic() - started:5.0f} s: {delivered}/{len(feed.visible_at)} delivered{note}',
              file=sys.stderr, flush=True)
        next_run = started + runs * args.interval
        while time.monotonic() < next_run:
            if drain_until is None and not feeder.is_alive():
                drain_until = time.monotonic() + args.drain_minutes * 60
            time.sleep(min(1.0, max(0.0, next_run - time.monotonic())))


def figures(mode, feed, sim, sink, runs, failed, wall):
    counts = sink.uuids()
    sent = set(feed.visible_at)
    delivered = sent & set(counts)
    first = sink.first_accepted()
    freshness = sorted(first[u] - feed.visible_at[u] for u in delivered)
    kinds = Counter(entry['kind'] for entry in sim.siem_log)
    siem_total = len(sim.siem_log)
    requests = {kind: kinds.get(kind, 0) for kind in SIEM_KINDS}
    requests['invalid'] = kinds.get('invalid', 0)
    requests['api'] = sim.stats['total'] - siem_total
    return {
        'mode': mode,
        'sent': len(sent),
        'delivered': len(delivered),
        'lost': len(sent - delivered),
        # For each lost event: how late it was indexed, and how long before the end it became visible.
        'lost_detail': sorted((feed.indexed_late[u], time.time() - feed.visible_at[u]) for u in sent - delivered),
        'duplicated': sum(c - 1 for c in counts.values()) + len(set(counts) - sent),
        'long_tail': len(feed.long_tail_ids),
        'long_tail_delivered': len(feed.long_tail_ids & delivered),
        'freshness': {name: percentile(freshness, q) for name, q in (('p50', .5), ('p90', .9), ('p99', .99), ('max', 1))},
        'requests': requests,
        'statuses': Counter(entry['status'] for entry in sim.siem_log),
        'throttled': sim.stats['throttled'],
        'runs': runs,
        'failed_runs': failed,
        'wall': wall,
    }


def seconds(value):
    return '-' if value is None else f'{value:.1f}'


def report(results):
    print(f'{"mode":<8} {"sent":>6} {"delivered":>9} {"lost":>5} {"dup":>4} {"p50 s":>7} {"p90 s":>7} {"p99 s":>7} '
          f'{"max s":>7} {"runs":>5} {"failed":>6} {"wall min":>8}')
    for r in results:
        f = r['freshness']
        print(f'{r["mode"]:<8} {r["sent"]:>6} {r["delivered"]:>9} {r["lost"]:>5} {r["duplicated"]:>4} {seconds(f["p50"]):>7} '
              f'{seconds(f["p90"]):>7} {seconds(f["p99"]):>7} {seconds(f["max"]):>7} {r["runs"]:>5} {r["failed_runs"]:>6} '
              f'{r["wall"] / 60:>8.1f}')
    print()
    print(f'{"mode":<8} {"Huntress requests":<17} {"stats":>7} {"re-read":>7} {"other":>7} {"api":>5} {"total":>7}')
    for r in results:
        req = r['requests']
        other = req['query'] + req['invalid']
        total = req['stats'] + req['reread'] + other + req['api']
        minutes = r['wall'] / 60
        runs = max(r['runs'], 1)
        for label, divisor, fmt in (('per run', runs, '.1f'), ('per minute', minutes, '.1f'), ('in all', 1, '.0f')):
            print(f'{r["mode"]:<8} {label:<17} {req["stats"] / divisor:>7{fmt}} {req["reread"] / divisor:>7{fmt}} '
                  f'{other / divisor:>7{fmt}} {req["api"] / divisor:>5{fmt}} {total / divisor:>7{fmt}}')
        statuses = ', '.join(f'{code}: {n}' for code, n in sorted(r['statuses'].items()))
        tail = f'; long tail {r["long_tail_delivered"]}/{r["long_tail"]} delivered' if r['long_tail'] else ''
        print(f'{r["mode"]:<8} SIEM statuses {statuses}; 429s {r["throttled"]}{tail}')
        for indexed_late, visible_for in r['lost_detail'][:10]:
            print(f'{r["mode"]:<8} lost: indexed {indexed_late:.0f} s after its @timestamp, visible {visible_for:.0f} s before the end')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--minutes', type=float, default=15, help='how long the feed runs (default 15)')
    parser.add_argument('--rate', type=float, default=2, help='events a second (default 2)')
    parser.add_argument('--interval', type=int, default=60, help='seconds between check runs (default 60)')
    parser.add_argument('--stats', choices=('both', 'served', 'refused'), default='both')
    parser.add_argument('--time-filters', choices=('served', 'refused'), default='served',
                        help='whether a WHERE on @timestamp is answered (default served)')
    parser.add_argument('--lag-mix', type=parse_lag_mix, default=parse_lag_mix(DEFAULT_LAG_MIX),
                        help=f'indexing lags, PERCENT:LOW-HIGH seconds, comma-separated (default {DEFAULT_LAG_MIX})')
    parser.add_argument('--long-tail', type=float, default=0.0, help='percent of events that arrive hours late (default 0)')
    parser.add_argument('--long-tail-hours', type=lambda t: parse_range(t, '--long-tail-hours'), default=(1.0, 3.0),
                        help='how late the long tail is, LOW-HIGH hours (default 1-3)')
    parser.add_argument('--drain-minutes', type=float, default=20, help='longest wait after the feed stops (default 20)')
    parser.add_argument('--set', type=parse_override, action='append', default=[], metavar='KEY=VALUE',
                        help='instance setting (YAML value), e.g. --set collection_delay_seconds=10')
    parser.add_argument('--query', default=DEFAULT_QUERY)
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--assert', dest='assert_', action='store_true', help='exit 1 if an event was lost or duplicated')
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.minutes <= 0 or args.interval <= 0:
        parser.error('--rate, --minutes and --interval must be positive')
    return args


def main(argv=None):
    args = parse_args(argv)
    modes = ('served', 'refused') if args.stats == 'both' else (args.stats,)
    if len(modes) == 1:
        results = [run_mode(modes[0], args)]
    else:
        # Separate processes: each check has its own Agent stubs and native core.
        with ProcessPoolExecutor(len(modes), mp_context=get_context('spawn')) as pool:
            results = list(pool.map(run_mode, modes, [args] * len(modes)))
    overrides = ' '.join(f'{k}={json.dumps(v)}' for k, v in args.set) or 'none'
    print(f'\n{args.rate:g} events/s for {args.minutes:g} min, runs every {args.interval} s, lag mix '
          f'{",".join(f"{w:g}:{lo:g}-{hi:g}" for w, lo, hi in args.lag_mix)}, long tail {args.long_tail:g}%, '
          f'overrides: {overrides}\n')
    report(results)
    bad = any(r['lost'] or r['duplicated'] for r in results)
    return 1 if bad and args.assert_ else 0


if __name__ == '__main__':
    sys.exit(main())
