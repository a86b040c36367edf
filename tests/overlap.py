"""Two processes collecting one Huntress account from one on-disk persistent cache.

The Agent keeps the persistent cache in files under its `run_path`; the test stub
of datadog_checks_base keeps it in memory, per process. A worker of this module
backs `read_persistent_cache` / `write_persistent_cache` with files laid out as
the Agent lays them out (`<run_path>/<check>/<key>`, written in place), and sets
`run_path`, so that separate processes share checkpoints as the Agent and
`datadog-agent check huntress` do.

    python -m tests.overlap            # the scenario, with the run lease
    python -m tests.overlap --no-lease # the same, with the lease bypassed in both workers

The scenario: one long-lived worker runs on an interval like the Agent; short-lived
workers (one run each, like a manual `datadog-agent check`) start both during its
runs and between them, against a simulator with a live stream of events and slow
SIEM pages. It prints what the intake sink received: lost and duplicated events.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HUNTRESS_KEY = 'hk-overlap-key'
HUNTRESS_SECRET = 'hs-overlap-secret-4711'
DD_API_KEY = 'dd-overlap-api-key'
CHECK_ID = 'huntress:0123456789abcdef'
QUERY = 'FROM logs | KEEP @timestamp, uuid, organization_id, message, host.hostname, event.*'
SKIPPED = 'skipped this run'


class AgentFileCache:
    """The Agent's persistent cache on disk (datadog-agent pkg/util/persistentcache): the part of the key
    before the first `:` names a directory of `run_path`, the rest the file, both stripped of characters
    other than letters, digits, `_` and `-`; a value is written in place, and a missing one reads as ''."""

    _invalid = re.compile(r'[^a-zA-Z0-9_-]')

    def __init__(self, run_path):
        self.run_path = run_path

    def _file(self, key):
        head, sep, tail = key.partition(':')
        if not sep:
            return os.path.join(self.run_path, self._invalid.sub('', head))
        directory = os.path.join(self.run_path, self._invalid.sub('', head))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        return os.path.join(directory, self._invalid.sub('', tail))

    def read(self, key):
        try:
            with open(self._file(key), encoding='utf-8') as f:
                return f.read()
        except FileNotFoundError:
            return ''

    def write(self, key, value):
        with open(self._file(key), 'w', encoding='utf-8') as f:
            f.write(value)


def instance(huntress_url, sink_url):
    return {
        'huntress_api_key': HUNTRESS_KEY,
        'huntress_secret_key': HUNTRESS_SECRET,
        'huntress_base_url': huntress_url,
        'logs_intake_url': sink_url,
        'dd_api_key': DD_API_KEY,
        'collection_delay_seconds': 2,
        'initial_lookback_seconds': 3600,
        'request_timeout': 10,
        'min_collection_interval': 15,
        'enrich_with_org_tags': False,
        'tags': ['team:secops'],
        'log_queries': [{'name': 'all', 'esql_query': QUERY}],
    }


# ---------------------------------------------------------------- worker (a child process)


def _emit(**record):
    sys.stdout.write(json.dumps(record) + '\n')
    sys.stdout.flush()


def worker(args):
    from datadog_checks.base.stubs import aggregator, datadog_agent

    import datadog_checks.huntress.check as check_module
    from datadog_checks.huntress import HuntressCheck
    from datadog_checks.huntress.lease import Outcome

    cache = AgentFileCache(args.run_path)
    datadog_agent.reset()
    datadog_agent._config['run_path'] = args.run_path
    datadog_agent.read_persistent_cache = cache.read
    datadog_agent.write_persistent_cache = cache.write
    if args.no_lease:

        class NoLease:
            def __init__(self, *_, **__):
                pass

            def acquire(self, **_):
                return Outcome(True)

            def release(self):
                pass

        check_module.RunLease = NoLease

    check = HuntressCheck('huntress', {}, [instance(args.huntress_url, args.sink_url)])
    check.check_id = CHECK_ID  # the Agent and `datadog-agent check` give one instance the same id

    def one_run():
        aggregator.reset()
        started = time.time()
        error = check.run()
        skipped = [
            sc.message for sc in aggregator.service_checks('huntress.siem.can_connect') if SKIPPED in (sc.message or '')
        ]
        forwarded = sum(m.value for m in aggregator.metrics('huntress.siem.logs_forwarded'))
        _emit(event='run', pid=os.getpid(), start=started, end=time.time(), skipped=skipped[0] if skipped else None,
              forwarded=forwarded, error=json.loads(error)[0]['message'] if error else None)

    if args.mode == 'manual':
        _emit(event='ready', pid=os.getpid())
        if sys.stdin.readline().strip() != 'go':
            return
        one_run()
        return
    # The Agent: a run every `interval` seconds until the stop file appears, then `final_runs` more.
    _emit(event='ready', pid=os.getpid())
    while not os.path.exists(args.stop_file):
        _emit(event='start', pid=os.getpid(), t=time.time())
        one_run()
        time.sleep(args.interval)
    for _ in range(args.final_runs):
        one_run()


# ---------------------------------------------------------------- scenario (the parent)


def _spawn(mode, common):
    command = [sys.executable, '-m', 'tests.overlap', 'worker', '--mode', mode] + common
    return subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)


def _records(process):
    for line in process.stdout:
        line = line.strip()
        if line.startswith('{'):
            yield json.loads(line)


def run_scenario(lease=True, rounds=4, workdir=None, slow_page_seconds=0.25, rate_per_second=40):
    """Returns {'expected': set of uuids, 'counts': Counter at the sink, 'agent': [...], 'manual': [...]}."""
    sys.path.insert(0, ROOT)
    from tests.sim import HuntressSimulator, IntakeSink, fixtures

    workdir = workdir or tempfile.mkdtemp(prefix='huntress-overlap-')
    run_path = os.path.join(workdir, 'run')
    stop_file = os.path.join(workdir, 'stop')
    expected = set()
    with HuntressSimulator(api_key=HUNTRESS_KEY, secret_key=HUNTRESS_SECRET, rate_limit=100_000, page_size=25) as sim, \
            IntakeSink(api_key=DD_API_KEY) as sink:
        now = datetime.now(timezone.utc)
        backlog = fixtures.siem_events(300, now - timedelta(minutes=5), now - timedelta(seconds=3), seed=7)
        sim.add_events(backlog)
        expected.update(row['uuid'] for row in backlog)
        # Every SIEM page is slow, so that a run lasts long enough to be overlapped for certain.
        sim.inject(f'slow:{slow_page_seconds}', count=100_000, path='/v1/siem/query')

        stream_stop = threading.Event()

        def live_stream():
            tick = 0
            while not stream_stop.wait(0.1):
                tick += 1
                t = datetime.now(timezone.utc)
                rows = fixtures.siem_events(max(1, rate_per_second // 10), t - timedelta(milliseconds=100), t,
                                            seed=10_000 + tick)
                sim.add_events(rows)
                expected.update(row['uuid'] for row in rows)

        common = ['--run-path', run_path, '--huntress-url', sim.url, '--sink-url', sink.url, '--stop-file', stop_file]
        if not lease:
            common.append('--no-lease')
        manual = [_spawn('manual', common) for _ in range(2 * rounds)]
        for process in manual:
            assert next(_records(process))['event'] == 'ready'
        agent = _spawn('agent', common + ['--interval', '1.0', '--final-runs', '3'])
        agent_records = []
        streamer = threading.Thread(target=live_stream, daemon=True)
        streamer.start()

        pending = list(manual)

        def go(process):
            process.stdin.write('go\n')
            process.stdin.flush()

        for record in _records(agent):
            agent_records.append(record)
            if record['event'] == 'start' and pending:
                time.sleep(0.3)  # into the Agent's run: its first slow page
                go(pending.pop(0))
            elif record['event'] == 'run' and pending:
                go(pending.pop(0))  # between two of the Agent's runs
            if not pending and not os.path.exists(stop_file) and record['event'] == 'run':
                # Every manual run started: end the stream, let the window close behind the last event.
                stream_stop.set()
                streamer.join()
                time.sleep(3)
                open(stop_file, 'w').close()
        agent.wait(timeout=120)
        manual_records = []
        for process in manual:
            manual_records.extend(r for r in _records(process) if r['event'] == 'run')
            process.wait(timeout=60)
        return {
            'expected': expected,
            'counts': sink.uuids(),
            'agent': [r for r in agent_records if r['event'] == 'run'],
            'agent_pid': agent.pid,
            'manual': manual_records,
        }


def summarize(result):
    counts = result['counts']
    lost = len(result['expected'] - set(counts))
    duplicated = sum(c - 1 for c in counts.values() if c > 1)
    runs = result['agent'] + result['manual']
    return {
        'events': len(result['expected']),
        'delivered': len(counts),
        'lost': lost,
        'duplicated': duplicated,
        'agent_runs': len(result['agent']),
        'manual_runs': len(result['manual']),
        'skipped_runs': sum(1 for r in runs if r['skipped']),
        'errors': [r['error'] for r in runs if r['error']],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(prog='python -m tests.overlap', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command')
    w = sub.add_parser('worker')
    w.add_argument('--mode', choices=('agent', 'manual'), required=True)
    w.add_argument('--run-path', required=True)
    w.add_argument('--huntress-url', required=True)
    w.add_argument('--sink-url', required=True)
    w.add_argument('--stop-file', required=True)
    w.add_argument('--interval', type=float, default=1.0)
    w.add_argument('--final-runs', type=int, default=3)
    w.add_argument('--no-lease', action='store_true')
    parser.add_argument('--no-lease', action='store_true', help='bypass the run lease in every worker')
    parser.add_argument('--rounds', type=int, default=4)
    args = parser.parse_args(argv)
    if args.command == 'worker':
        worker(args)
        return 0
    summary = summarize(run_scenario(lease=not args.no_lease, rounds=args.rounds))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
