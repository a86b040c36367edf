"""Throughput, CPU and memory of the check on a SIEM backlog.

    .venv/bin/python benches/bench.py [--sizes 20000 100000] [--page-size 200] [--query ESQL]

The default query keeps a wide set of columns (`event.*` and more), so rows carry
about 1 KB, half of it the raw message; `--query` measures another, such as
the README's example query.

For each backlog size, a server process runs the Huntress simulator and the
intake sink with N events over the last 15 minutes, and a fresh check process
runs the real HuntressCheck until the backlog is delivered. Only the check
process is measured:
  events/s          events delivered / wall time of the check runs
  CPU us/event      user+system CPU of the check process during its runs / events
  peak RSS          the check process's maximum resident set size
  requests          Huntress requests (pages) and intake requests
  wire B/log        gzip bytes sent to the intake per log
It also verifies delivery: lost and duplicated events, counted by the sink's
uuids (or by whole logs, for a query that does not keep `uuid`).
"""

import argparse
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def delivered_counts(sink):
    """How often each event arrived: by `uuid`, or by the whole log for a query that does not keep it."""
    from collections import Counter

    return Counter(log['uuid'] if 'uuid' in log else json.dumps(log, sort_keys=True) for log in sink.logs)


def serve(size, page_size, conn):
    from tests.sim import HuntressSimulator, IntakeSink, fixtures

    with HuntressSimulator(rate_limit=1_000_000, page_size=page_size) as huntress, IntakeSink() as sink:
        end = datetime.now(timezone.utc) - timedelta(seconds=30)
        huntress.add_events(fixtures.siem_events(size, end - timedelta(minutes=15), end, seed=7))
        conn.send({'huntress': huntress.url, 'intake': sink.url, 'credentials': huntress.credentials})
        conn.recv()  # the check is done
        counts = delivered_counts(sink)
        conn.send(
            {
                'delivered': len(counts),
                'duplicated': sum(c - 1 for c in counts.values()),
                'huntress_requests': huntress.stats['total'],
                'intake_requests': len(sink.requests),
                'raw_bytes': sum(r.get('raw_bytes', 0) for r in sink.requests),
            }
        )


DEFAULT_QUERY = 'FROM logs | KEEP @timestamp, uuid, organization_id, message, host.hostname, event.*, user.name, source.ip'


def run_check(urls, size, page_size, query):
    """Runs in a fresh process: the measured side."""
    from datadog_checks.base.stubs import datadog_agent

    from datadog_checks.huntress import HuntressCheck

    instance = {
        'huntress_api_key': urls['credentials'][0],
        'huntress_secret_key': urls['credentials'][1],
        'huntress_base_url': urls['huntress'],
        'logs_intake_url': urls['intake'],
        'dd_api_key': 'dd-demo-key',
        'collection_delay_seconds': 0,
        'initial_lookback_seconds': 1200,
        'max_window_seconds': 1200,
        'max_pages_per_run': 100,
        'dedup_cache_size': int(os.environ.get('BENCH_DEDUP', 50000)),
        'min_collection_interval': 900,
        'log_queries': [{'name': 'all', 'esql_query': query}],
    }
    datadog_agent.reset()
    check = HuntressCheck('huntress', {}, [instance])
    # One-time work of a check's first run (config models, imports) is not per event: measured apart.
    init_before = resource.getrusage(resource.RUSAGE_SELF)
    while check.check_initializations:
        check.check_initializations.popleft()()
    init_after = resource.getrusage(resource.RUSAGE_SELF)
    init_cpu = (init_after.ru_utime - init_before.ru_utime) + (init_after.ru_stime - init_before.ru_stime)
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    runs = 0
    expected_pages = size // page_size + 2
    while runs < expected_pages // 100 + 3:
        error = check.run()
        runs += 1
        if error:
            raise SystemExit(f'check failed: {error}')
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(json.dumps({'wall': wall, 'cpu': cpu, 'user': after.ru_utime - before.ru_utime, 'init_cpu': init_cpu, 'maxrss_kb': after.ru_maxrss, 'runs': runs}))


def measure(size, page_size, query):
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=serve, args=(size, page_size, child), daemon=True)
    server.start()
    urls = parent.recv()
    out = subprocess.run(
        [sys.executable, __file__, '--run-check', json.dumps(urls), '--size', str(size), '--page-size', str(page_size), '--query', query],
        check=True,
        capture_output=True,
        text=True,
    )
    check = json.loads(out.stdout.strip().splitlines()[-1])
    parent.send('done')
    sink = parent.recv()
    server.join(timeout=30)
    print('  (check process: user %.2fs, total CPU %.2fs, first-run init %.2fs)' % (check['user'], check['cpu'], check['init_cpu']), file=sys.stderr)
    return check, sink


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sizes', type=int, nargs='+', default=[20_000, 100_000])
    parser.add_argument('--page-size', type=int, default=200)
    parser.add_argument('--run-check')
    parser.add_argument('--size', type=int)
    parser.add_argument('--query', default=DEFAULT_QUERY)
    args = parser.parse_args()
    if args.run_check:
        run_check(json.loads(args.run_check), args.size, args.page_size, args.query)
        return
    print(f'{"backlog":>8} {"events/s":>10} {"CPU us/event":>13} {"peak RSS MB":>12} {"huntress req":>13} {"intake req":>11} {"lost":>5} {"dup":>5} {"wire B/log":>10}')
    for size in args.sizes:
        check, sink = measure(size, args.page_size, args.query)
        delivered = sink['delivered']
        print(
            f'{size:>8} {delivered / check["wall"]:>10.0f} {check["cpu"] * 1e6 / delivered:>13.2f} '
            f'{check["maxrss_kb"] / 1024:>12.1f} {sink["huntress_requests"]:>13} {sink["intake_requests"]:>11} '
            f'{size - delivered:>5} {sink["duplicated"]:>5} {sink["raw_bytes"] / max(delivered, 1):>10.0f}'
        )


if __name__ == '__main__':
    main()
