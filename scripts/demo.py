"""One collection cycle of the Huntress check against the bundled Huntress
simulator and a local Datadog intake sink, printed the way
`datadog-agent check huntress` shows a run. No credentials are needed.

    scripts/demo.sh [--events N] [--runs N]
"""

import argparse
import json
import os
import sys
import time
from datetime import datetime, timedelta, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from datadog_checks.base.stubs import aggregator, datadog_agent  # noqa: E402

from datadog_checks.huntress import HuntressCheck  # noqa: E402
from tests.sim import HuntressSimulator, IntakeSink, fixtures  # noqa: E402

STATUS = {0: 'OK', 1: 'WARNING', 2: 'CRITICAL', 3: 'UNKNOWN'}
KEEP = 'KEEP @timestamp, uuid, organization_id, message, log.original, host.hostname, event.*, user.name, source.ip'


def demo_instance(huntress, sink):
    return {
        'huntress_api_key': huntress.credentials[0],
        'huntress_secret_key': huntress.credentials[1],
        'huntress_base_url': huntress.url,
        'logs_intake_url': sink.url,
        'dd_api_key': 'dd-demo-key',
        'min_collection_interval': 900,
        'initial_lookback_seconds': 1800,
        'tags': ['env_name:demo'],
        'log_queries': [
            {
                'name': 'windows-security',
                'esql_query': f'FROM logs | WHERE event.provider == "Microsoft-Windows-Security-Auditing" | {KEEP}',
                'tags': ['log_type:windows'],
            },
            {
                'name': 'sentinelone',
                'esql_query': f'FROM logs | WHERE event.provider == "Syslog-SentinelOne" | {KEEP}',
                'tags': ['log_type:sentinelone'],
            },
            {
                'name': 'cloudtrail',
                'esql_query': f'FROM logs | WHERE event.provider == "GenericHEC" | {KEEP}',
                'tags': ['log_type:cloudtrail'],
            },
        ],
    }


def print_run(check, error, seconds):
    print('=== Series ===')
    for name in sorted(aggregator.metric_names):
        for metric in aggregator.metrics(name):
            kind = {0: 'gauge', 2: 'count', 1: 'rate', 3: 'monotonic_count'}.get(metric.type, metric.type)
            print(f'  {name:<42} {kind:<6} {metric.value:>12.2f}  {",".join(metric.tags)}')
    print('=== Service Checks ===')
    for name in sorted(aggregator._service_checks):
        for sc in aggregator.service_checks(name):
            message = f'  ({sc.message})' if sc.message else ''
            print(f'  {name:<30} {STATUS[sc.status]:<8} {",".join(sc.tags)}{message}')
    print('=== Check summary ===')
    print(f'  Instance ID: {check.check_id or "huntress"} [{"ERROR" if error else "OK"}]')
    print(f'  Total Runs: 1   Metric Samples: {sum(len(aggregator.metrics(n)) for n in aggregator.metric_names)}')
    print(f'  Service Checks: {sum(len(aggregator.service_checks(n)) for n in aggregator._service_checks)}')
    print(f'  Average Execution Time : {seconds * 1000:.0f}ms')
    if error:
        print('  Error:', json.loads(error)[0]['message'])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--events', type=int, default=2000, help='SIEM events in the simulator (last 15 minutes)')
    parser.add_argument('--runs', type=int, default=1, help='check runs (the second finds nothing new)')
    args = parser.parse_args()

    with HuntressSimulator() as huntress, IntakeSink(api_key='dd-demo-key') as sink:
        end = datetime.now(timezone.utc) - timedelta(minutes=6)
        orgs = fixtures.organizations(25, seed=42)
        huntress.set_account(fixtures.account())
        huntress.set_organizations(orgs)
        org_ids = [org['id'] for org in orgs]
        huntress.add_events(fixtures.siem_events(args.events, end - timedelta(minutes=15), end, seed=42, org_ids=org_ids))
        print(f'Huntress simulator at {huntress.url} with {args.events} events from {len(orgs)} organizations;')
        print(f'intake sink at {sink.url}\n')
        datadog_agent.reset()
        check = HuntressCheck('huntress', {}, [demo_instance(huntress, sink)])
        for run in range(1, args.runs + 1):
            aggregator.reset()
            started = time.perf_counter()
            error = check.run()
            seconds = time.perf_counter() - started
            print(f'--- run {run} ---')
            print_run(check, error, seconds)
        print('\n=== Forwarded logs (intake sink) ===')
        counts = sink.uuids()
        print(f'  accepted: {len(sink.logs)} logs in {len(sink.requests)} requests; '
              f'distinct uuids: {len(counts)}; duplicates: {sum(c - 1 for c in counts.values())}')
        for log in sink.logs[:3]:
            keys = ('date', 'hostname', 'service', 'ddsource', 'ddtags', 'event.provider', 'huntress_org_name', 'uuid')
            sample = {k: log[k] for k in keys if k in log}
            sample['message'] = str(log.get('message', ''))[:80]
            print('  ' + json.dumps(sample))
    return 1 if error else 0


if __name__ == '__main__':
    sys.exit(main())
