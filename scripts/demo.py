"""The whole Huntress check against the bundled Huntress simulator and a local
Datadog intake sink, with no credentials: SIEM queries, incident reports,
escalations, signals, agent metrics and organization enrichment, each run shown
the way `datadog-agent check huntress` shows it, then a summary of what reached
the intake per feed, the service checks, and what to do next.

    scripts/demo.sh [--events N] [--runs N]
    scripts/demo.sh --config conf.yaml [--instance I]

With --config, the instance of your conf.yaml (the first, or --instance I)
runs against the simulator: its Huntress URL and logs intake URL are pointed at
the simulator and the sink, and its keys are replaced by the demo's, so your
queries, tags, scope and options run as written, on demo data.
"""

import argparse
import copy
import json
import os
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from datadog_checks.base.stubs import aggregator, datadog_agent  # noqa: E402

from datadog_checks.huntress import HuntressCheck  # noqa: E402
from datadog_checks.huntress.__about__ import __version__  # noqa: E402
from tests.sim import HuntressSimulator, IntakeSink, fixtures  # noqa: E402
from tests.sim.timeutil import iso_seconds  # noqa: E402

STATUS = {0: 'OK', 1: 'WARNING', 2: 'CRITICAL', 3: 'UNKNOWN'}
KINDS = {0: 'gauge', 1: 'rate', 2: 'count', 3: 'monotonic_count'}
KEEP = 'KEEP @timestamp, uuid, organization_id, organization.id, message, log.original, host.hostname, event.*, user.name, source.ip'
DEMO_API_KEY = 'dd-demo-key'
SOC_SERVICES = {
    'huntress-incidents': 'incident reports',
    'huntress-escalations': 'escalations',
    'huntress-signals': 'signals',
}
# The options of a user's instance the demo replaces: where it connects, and with which keys.
REPLACED = ('huntress_api_key', 'huntress_secret_key', 'huntress_base_url', 'logs_intake_url', 'dd_api_key')
# Certificates for the real endpoints mean nothing to the simulator's plain http on loopback.
DROPPED = ('tls_ca_cert', 'intake_tls_ca_cert', 'tls_verify', 'intake_tls_verify', 'skip_proxy')


def demo_instance():
    return {
        'min_collection_interval': 900,
        'initial_lookback_seconds': 1800,
        'tags': ['env_name:demo'],
        'enrich_with_org_tags': True,
        'metrics': {'agents': {'enabled': True}},
        'incidents': {'enabled': True},
        'escalations': {'enabled': True},
        'signals': {'enabled': True},
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


def user_instance(path, index):
    """The instance (and init_config) of a conf.yaml, and the names of the options the demo replaced or dropped."""
    import yaml

    with open(path, encoding='utf-8') as f:
        config = yaml.safe_load(f) or {}
    instances = config.get('instances') or []
    if not isinstance(instances, list) or not 0 <= index < len(instances) or not isinstance(instances[index], dict):
        raise SystemExit(f'demo: {path} has no instance {index} under `instances:`')
    instance = copy.deepcopy(instances[index])
    replaced = [key for key in REPLACED if key in instance]
    dropped = [key for key in DROPPED if instance.pop(key, None) is not None]
    return instance, config.get('init_config') or {}, replaced, dropped


def load_simulator(huntress, events):
    """Demo data for every feed, recent enough for a first run's look-back. Returns what was loaded."""
    now = datetime.now(timezone.utc)
    orgs = fixtures.organizations(25, seed=42)
    agents = fixtures.agents(60, orgs, seed=42, now=now)
    incidents = fixtures.incident_reports(30, orgs, agents, seed=42, now=now)
    for i, report in enumerate(incidents):
        report['updated_at'] = iso_seconds(now - timedelta(seconds=60 + 20 * i))
    escalations = fixtures.escalations(12, orgs, seed=42, now=now)
    for i, escalation in enumerate(escalations):
        escalation['updated_at'] = iso_seconds(now - timedelta(seconds=90 + 30 * i))
    signals = fixtures.signals(20, orgs, agents, seed=42, now=now)
    for i, signal in enumerate(signals):
        signal['investigated_at'] = iso_seconds(now - timedelta(seconds=120 + 30 * i))
    end = now - timedelta(minutes=6)
    rows = fixtures.siem_events(events, end - timedelta(minutes=15), end, seed=42, org_ids=[o['id'] for o in orgs])
    huntress.set_account(fixtures.account())
    huntress.set_organizations(orgs)
    huntress.set_agents(agents)
    huntress.set_incident_reports(incidents)
    huntress.set_escalations(escalations)
    huntress.set_signals(signals)
    huntress.add_events(rows)
    return {'organizations': orgs, 'agents': agents, 'incidents': incidents, 'escalations': escalations,
            'signals': signals, 'siem': rows}


def print_run(number, check, error, seconds):
    print(f'--- run {number} ---')
    print('=== Series ===')
    for name in sorted(aggregator.metric_names):
        samples = aggregator.metrics(name)
        kind = KINDS.get(samples[0].type, samples[0].type)
        tags = ','.join(samples[0].tags)
        more = f'  (+{len(samples) - 1} more tag sets)' if len(samples) > 1 else ''
        print(f'  {name:<40} {kind:<6} {samples[0].value:>10.2f}  {tags}{more}')
    print('=== Service Checks ===')
    for name in sorted(aggregator._service_checks):
        for sc in aggregator.service_checks(name):
            message = f'  ({sc.message})' if sc.message else ''
            print(f'  {name:<28} {STATUS[sc.status]:<8} {",".join(sc.tags)}{message}')
    print(f'=== Events === {len(aggregator.events)}')
    print('=== Check summary ===')
    print(f'  Instance ID: {check.check_id or "huntress"} [{"ERROR" if error else "OK"}]')
    print(f'  Metric Samples: {sum(len(aggregator.metrics(n)) for n in aggregator.metric_names)}, '
          f'Service Checks: {sum(len(aggregator.service_checks(n)) for n in aggregator._service_checks)}, '
          f'Events: {len(aggregator.events)}, Execution Time: {seconds * 1000:.0f}ms')
    if error:
        print('  Error:', json.loads(error)[0]['message'])
    print()


FEATURE_SWITCHES = {
    'incidents': ('incidents',),
    'escalations': ('escalations',),
    'signals': ('signals',),
    'agents': ('metrics', 'agents'),
}


def delivered(instance, feed, count):
    """The count, or `off` when the instance leaves the feed off (every optional feed is off by default)."""
    section = instance
    for key in FEATURE_SWITCHES[feed]:
        section = section.get(key) if isinstance(section, dict) else None
    if isinstance(section, dict) and section.get('enabled'):
        return f'{count:>10}'
    return f'{"off":>10}'


def last_gauge(name, runs):
    for metrics in reversed(runs):
        samples = metrics.get(name)
        if samples:
            return samples
    return []


def summary(instance, sink, loaded, runs, events, service_checks, errors):
    """The closing summary: what reached the intake per feed, the service checks of the last run, next steps."""
    by_service = Counter(log.get('service') for log in sink.logs)
    siem_logs = [log for log in sink.logs if log.get('service') not in SOC_SERVICES]
    counts = Counter(log['uuid'] for log in siem_logs if 'uuid' in log)
    duplicates = sum(c - 1 for c in counts.values())
    enriched = sum(1 for log in siem_logs if log.get('huntress_org_name'))
    event_keys = Counter(e['aggregation_key'].rsplit('-', 1)[0] for e in events)

    print('=== Forwarded logs: one of each service ===')
    for service in sorted(by_service):
        log = next(log for log in sink.logs if log.get('service') == service)
        tags = [t for t in log.get('ddtags', '').split(',') if not t.startswith(('huntress_org_key', 'huntress_account'))]
        print(f'  {service:<21} ddsource:{log.get("ddsource")} {",".join(tags)}')
        print(f'  {"":<21} message: {" ".join(str(log.get("message", "")).split())[:90]}')
    print()
    print('=== Summary: delivered to the intake sink ===')
    print(f'  {"feed":<18} {"loaded":>7} {"delivered":>10}  details')
    print(f'  {"SIEM logs":<18} {len(loaded["siem"]):>7} {len(counts):>10}  '
          f'{len(siem_logs)} logs, {duplicates} duplicates, {enriched} with organization tags')
    for service, label in SOC_SERVICES.items():
        feed = 'incidents' if label == 'incident reports' else label
        key = {'huntress-incidents': 'huntress-incident', 'huntress-escalations': 'huntress-escalation'}.get(service)
        extra = f'service:{service}' + (f', {event_keys.get(key, 0)} Datadog events' if key else '')
        print(f'  {label:<18} {len(loaded[feed]):>7} {delivered(instance, feed, by_service.get(service, 0))}  {extra}')
    agents = sum(m.value for m in last_gauge('huntress.agents.count', runs))
    stale = sum(m.value for m in last_gauge('huntress.agents.stale', runs))
    print(f'  {"agents":<18} {len(loaded["agents"]):>7} {delivered(instance, "agents", int(agents))}  '
          f'huntress.agents.* metrics, {int(stale)} stale')
    orgs = sum(m.value for m in last_gauge('huntress.organizations.count', runs))
    print(f'  {"organizations":<18} {len(loaded["organizations"]):>7} {int(orgs):>10}  '
          'huntress.organizations.count (in scope), organization tags on logs')
    print()
    print('=== Summary: service checks (last run) ===')
    for name, status, tags, message in service_checks:
        print(f'  {name:<28} {STATUS[status]:<8} {",".join(tags)}' + (f'  ({message})' if message else ''))
    if errors:
        print(f'  run errors: {len(errors)}; last: {errors[-1]}')
    off = [f'{".".join(FEATURE_SWITCHES[f])}.enabled' for f in FEATURE_SWITCHES if delivered(instance, f, 0).strip() == 'off']
    if off:
        print(f'  off in this instance: {", ".join(off)} (set to true to collect them)')
    print()
    print('=== Next steps ===')
    print('  1. Install the wheel on each Agent host (docs/installation.md lists the wheels and the Windows command):')
    print(f'       sudo -u dd-agent datadog-agent integration install -w datadog_huntress-{__version__}-<TAGS>.whl')
    print('  2. Configure: edit huntress.d/conf.yaml in the Agent\'s conf.d/ (start from conf.yaml.example), set')
    print('     huntress_api_key, huntress_secret_key and your log_queries; try it here first, on demo data:')
    print('       scripts/demo.sh --config /etc/datadog-agent/conf.d/huntress.d/conf.yaml')
    print('  3. Validate: restart the Agent, then check `datadog-agent status` (Checks: huntress), or run it once:')
    print('       sudo -u dd-agent -- datadog-agent check huntress')
    print('     In Datadog: logs `source:huntress`, metrics `huntress.*`, service check `huntress.siem.can_connect`.')

def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--events', type=int, default=2000, help='SIEM events in the simulator (15 minutes of them)')
    parser.add_argument('--runs', type=int, default=2, help='check runs (the second finds nothing new)')
    parser.add_argument('--config', help="run this conf.yaml's instance against the simulator")
    parser.add_argument('--instance', type=int, default=0, help='which instance of --config (from 0)')
    args = parser.parse_args()

    with HuntressSimulator() as huntress, IntakeSink(api_key=DEMO_API_KEY) as sink:
        loaded = load_simulator(huntress, args.events)
        if args.config:
            instance, init_config, replaced, dropped = user_instance(args.config, args.instance)
            print(f'Your instance {args.instance} of {args.config}, on demo data.')
            print(f'  replaced: {", ".join(replaced) or "nothing"} (pointed at the simulator and the sink, demo keys)')
            if dropped:
                print(f'  dropped: {", ".join(dropped)} (the simulator and the sink speak plain http on loopback)')
        else:
            instance, init_config = demo_instance(), {}
        instance.update(
            huntress_api_key=huntress.credentials[0],
            huntress_secret_key=huntress.credentials[1],
            huntress_base_url=huntress.url,
            logs_intake_url=sink.url,
            dd_api_key=DEMO_API_KEY,
        )
        print(f'Huntress simulator at {huntress.url}: {args.events} SIEM events, {len(loaded["organizations"])} '
              f'organizations, {len(loaded["agents"])} agents, {len(loaded["incidents"])} incident reports, '
              f'{len(loaded["escalations"])} escalations, {len(loaded["signals"])} signals')
        print(f'Intake sink at {sink.url}\n')

        datadog_agent.reset()
        try:
            check = HuntressCheck('huntress', init_config, [instance])
        except Exception as e:  # a configuration error: the demo says it as the Agent would
            print(f'Configuration error: {e}')
            return 2
        runs, events, errors, service_checks = [], [], [], []
        for number in range(1, args.runs + 1):
            aggregator.reset()
            started = time.perf_counter()
            error = check.run()
            print_run(number, check, error, time.perf_counter() - started)
            runs.append({name: aggregator.metrics(name) for name in aggregator.metric_names})
            events.extend(aggregator.events)
            service_checks = [
                (name, sc.status, sc.tags, sc.message)
                for name in sorted(aggregator._service_checks)
                for sc in aggregator.service_checks(name)
            ]
            if error:
                errors.append(json.loads(error)[0]['message'])
        summary(instance, sink, loaded, runs, events, service_checks, errors)
    return 1 if errors else 0


if __name__ == '__main__':
    sys.exit(main())
