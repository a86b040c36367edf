"""Throughput, CPU and memory of the check on a SIEM backlog.

    .venv/bin/python benches/bench.py [--sizes 20000 100000] [--page-size 200] [--query ESQL]
        [--encodings gzip:1,zstd:1] [--core LABEL=PATH.so ...] [--repeat N]

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
  wire B/log        compressed bytes sent to the intake per log
It also verifies delivery: lost and duplicated events, counted by the sink's
uuids (or by whole logs, for a query that does not keep `uuid`).

Variants run side by side in one table, in alternating check processes
(`--repeat` rounds; the table shows each variant's median round):
  --encodings gzip:1,zstd:1   the Agent's compression settings (kind:level, or none), sent
                              to the sink as logs_config.logs_dd_url, where zstd is used
  --core LABEL=PATH.so        another build of the native module, e.g. one built from an
                              older commit; it sends to the sink as logs_intake_url
                              (gzip level 1 in every build), as does the default variant
  --rules JSON                 each variant again with these log_processing_rules
  --message-bytes N            every message is N digits: what a mask on numbers costs at worst
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


def serve(size, page_size, conn, message_bytes=0):
    from tests.sim import HuntressSimulator, IntakeSink, fixtures

    with HuntressSimulator(rate_limit=1_000_000, page_size=page_size) as huntress, IntakeSink() as sink:
        end = datetime.now(timezone.utc) - timedelta(seconds=30)
        events = fixtures.siem_events(size, end - timedelta(minutes=15), end, seed=7)
        if message_bytes:
            # Digits only: the worst case for a mask on numbers.
            for i, event in enumerate(events):
                event['message'] = str(i).rjust(message_bytes, '7')
        huntress.add_events(events)
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


def load_core(path):
    """Makes `path` the package's native module, before the check imports it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location('datadog_checks.huntress._core', path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)


def run_check(urls, size, page_size, query, variant):
    """Runs in a fresh process: the measured side."""
    if variant.get('core'):
        load_core(variant['core'])
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
    if variant.get('encoding'):
        kind, _, level = variant['encoding'].partition(':')
        del instance['logs_intake_url']
        datadog_agent._config['logs_config.logs_dd_url'] = urls['intake'].rsplit('/api/v2/logs', 1)[0]
        if kind == 'none':
            datadog_agent._config['logs_config.use_compression'] = False
        else:
            datadog_agent._config['logs_config.compression_kind'] = kind
        if level:
            datadog_agent._config['logs_config.zstd_compression_level' if kind == 'zstd' else 'logs_config.compression_level'] = int(level)
    if variant.get('rules'):
        instance['log_processing_rules'] = variant['rules']
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


def measure(size, page_size, query, variant, message_bytes=0):
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=serve, args=(size, page_size, child, message_bytes), daemon=True)
    server.start()
    urls = parent.recv()
    out = subprocess.run(
        [
            sys.executable, __file__, '--run-check', json.dumps(urls), '--size', str(size), '--page-size', str(page_size),
            '--query', query, '--variant', json.dumps(variant),
        ],
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


def variants(args):
    found = [{'label': spec, 'encoding': spec} for spec in args.encodings.split(',') if spec]
    for entry in args.core:
        label, _, path = entry.partition('=')
        found.append({'label': label, 'core': os.path.abspath(path)})
    found = found or [{'label': 'this build'}]
    if args.rules:
        rules = json.loads(args.rules)
        found += [dict(variant, label=variant['label'] + '+rules', rules=rules) for variant in found]
    return found


def median_round(rounds):
    """The round with the median CPU per event."""
    ordered = sorted(rounds, key=lambda r: r[0]['cpu'] / max(r[1]['delivered'], 1))
    return ordered[len(ordered) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sizes', type=int, nargs='+', default=[20_000, 100_000])
    parser.add_argument('--page-size', type=int, default=200)
    parser.add_argument('--run-check')
    parser.add_argument('--size', type=int)
    parser.add_argument('--query', default=DEFAULT_QUERY)
    parser.add_argument('--encodings', default='', help='comma-separated kind:level, e.g. gzip:1,zstd:1')
    parser.add_argument('--core', action='append', default=[], help='LABEL=PATH.so: another build of the native module')
    parser.add_argument('--repeat', type=int, default=1)
    parser.add_argument('--rules', help='JSON list of log_processing_rules: each variant also runs with them (LABEL+rules)')
    parser.add_argument('--variant', default='{}')
    parser.add_argument('--message-bytes', type=int, default=0, help='each event\'s message: this many digits (mask memory)')
    args = parser.parse_args()
    if args.run_check:
        run_check(json.loads(args.run_check), args.size, args.page_size, args.query, json.loads(args.variant))
        return
    print(f'{"variant":>14} {"backlog":>8} {"events/s":>10} {"CPU us/event":>13} {"peak RSS MB":>12} {"huntress req":>13} {"intake req":>11} {"lost":>5} {"dup":>5} {"wire B/log":>10}')
    for size in args.sizes:
        rounds = {variant['label']: [] for variant in variants(args)}
        for _ in range(args.repeat):
            for variant in variants(args):
                rounds[variant['label']].append(measure(size, args.page_size, args.query, variant, args.message_bytes))
        for label, measured in rounds.items():
            check, sink = median_round(measured)
            delivered = sink['delivered']
            print(
                f'{label:>14} {size:>8} {delivered / check["wall"]:>10.0f} {check["cpu"] * 1e6 / delivered:>13.2f} '
                f'{check["maxrss_kb"] / 1024:>12.1f} {sink["huntress_requests"]:>13} {sink["intake_requests"]:>11} '
                f'{size - delivered:>5} {sink["duplicated"]:>5} {sink["raw_bytes"] / max(delivered, 1):>10.1f}'
            )


if __name__ == '__main__':
    main()
