"""SIEM backlog drain rate with the SOC feeds read first, at the real Huntress rate limit.

    .venv/bin/python benches/soc_drain.py [--backlog 100000] [--runs 4] [--interval 60]

The simulator enforces 60 requests per minute per key (sliding window) and holds a
SIEM backlog; the check runs every `--interval` seconds, as the Agent would with
that `min_collection_interval`, with incident reports and escalations enabled.
After the first run a critical incident report and a critical escalation appear.
It prints, per run, the Huntress requests by path, the SIEM events delivered and
whether the new incident and escalation had arrived; then the drain rate over the
runs after the first (events delivered / the (runs - 1) intervals they had) against the 12,000 events/minute ceiling (60 pages of 200).
This takes about `--runs` × `--interval` seconds.
"""

import argparse
import os
import sys
import time
from datetime import datetime, timedelta, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CEILING_PER_MINUTE = 60 * 200


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--backlog', type=int, default=100_000)
    parser.add_argument('--runs', type=int, default=4)
    parser.add_argument('--interval', type=float, default=60.0)
    args = parser.parse_args()

    from datadog_checks.base.stubs import datadog_agent

    from datadog_checks.huntress import HuntressCheck
    from tests.sim import HuntressSimulator, IntakeSink, fixtures
    from tests.sim.timeutil import iso_seconds

    now = datetime.now(timezone.utc)
    with HuntressSimulator(rate_limit=60) as huntress, IntakeSink() as sink:
        orgs = fixtures.organizations(5, seed=1)
        huntress.set_organizations(orgs)
        end = now - timedelta(seconds=30)
        huntress.add_events(fixtures.siem_events(args.backlog, end - timedelta(minutes=50), end, seed=2, org_ids=[o['id'] for o in orgs]))
        key, secret = huntress.credentials
        instance = {
            'huntress_api_key': key,
            'huntress_secret_key': secret,
            'huntress_base_url': huntress.url,
            'logs_intake_url': sink.url,
            'dd_api_key': 'dd-demo-key',
            'collection_delay_seconds': 0,
            'initial_lookback_seconds': 3600,
            'max_window_seconds': 3600,
            'max_pages_per_run': 1000,
            'min_collection_interval': args.interval,
            'incidents': {'enabled': True},
            'escalations': {'enabled': True},
            'log_queries': [{'name': 'all', 'esql_query': 'FROM logs | KEEP @timestamp, uuid, organization_id, message'}],
        }
        datadog_agent.reset()
        check = HuntressCheck('huntress', {}, [instance])
        incident = escalation = None
        delivered_before = 0
        second_run_started = None
        for run in range(1, args.runs + 1):
            started = time.monotonic()
            if run == 2:
                second_run_started = started
            before = dict(huntress.stats['by_path'])
            error = check.run()
            if error:
                raise SystemExit(f'check failed: {error}')
            delivered = len(sink.uuids())
            requests = {p: n - before.get(p, 0) for p, n in huntress.stats['by_path'].items() if n - before.get(p, 0)}
            arrived = ''
            if incident is not None:
                services = {(log.get('service'), log.get('id')) for log in sink.logs}
                arrived = ' incident %s escalation %s' % (
                    'delivered' if ('huntress-incidents', incident['id']) in services else 'missing',
                    'delivered' if ('huntress-escalations', escalation['id']) in services else 'missing',
                )
            print(f'run {run}: {time.monotonic() - started:5.1f}s, SIEM events +{delivered - delivered_before}, requests {requests}{arrived}')
            delivered_before = delivered
            if run == 1:
                first_delivered = delivered
                at = iso_seconds(datetime.now(timezone.utc))
                incident = dict(fixtures.incident_reports(1, orgs, [], seed=3)[0], severity='critical', status='sent', updated_at=at)
                escalation = dict(fixtures.escalations(1, orgs, seed=4)[0], severity='critical', status='open', updated_at=at)
                huntress.set_incident_reports([incident])
                huntress.set_escalations([escalation])
            if run < args.runs:
                time.sleep(max(0.0, args.interval - (time.monotonic() - started)))
        if second_run_started is None:
            return
        # The runs after the first are scheduled `interval` apart: the time they had.
        minutes = max(time.monotonic() - second_run_started, (args.runs - 1) * args.interval) / 60
        rate = (delivered_before - first_delivered) / minutes
        print(f'drain rate after the first run: {rate:,.0f} events/minute = {100 * rate / CEILING_PER_MINUTE:.1f}% of {CEILING_PER_MINUTE:,}')
        print(f'backlog left: {args.backlog - delivered_before:,} of {args.backlog:,}')


if __name__ == '__main__':
    main()
