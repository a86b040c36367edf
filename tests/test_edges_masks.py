"""Processing rules at the intake's limits: a mask whose placeholder is longer
than what it replaces, or a pattern that matches everywhere, never sends a
log over 1 MB or a request over the intake's limits, and what a cut leaves
out is never sent unmasked."""

import json
import os
import subprocess
import sys

import pytest

from tests.sim import fixtures

from .conftest import recent_events
from .test_hostile_transport import MB
from .test_inventory import logs_of
from .test_soc import recent_escalations, recent_signals

MAX_LOG = 1_000_000


@pytest.mark.parametrize(
    'pattern, placeholder, grows',
    [('[0-9]', '[digit]', True), ('[0-9]*', '[number-masked]', False), ('x*', '<>', True)],
    ids=['longer-placeholder', 'star', 'empty-matches'],
)
def test_masks_keep_logs_within_the_intake_limits(
    make_check, dd_run_check, aggregator, huntress, sink, instance, pattern, placeholder, grows
):
    rows = recent_events(6, seed=191)
    for i, row in enumerate(rows):
        row['message'] = f'row {i} ' + '7' * 500_000
    huntress.add_events(rows)
    instance['log_processing_rules'] = [
        {'type': 'mask_sequences', 'name': 'digits', 'pattern': pattern, 'replace_placeholder': placeholder}
    ]
    dd_run_check(make_check(instance))

    logs = logs_of(sink, 'huntress-siem')
    assert len(logs) == len(rows), 'every log is sent (the mask rewrites its uuid too)'
    for log in logs:
        size = len(json.dumps(log, separators=(',', ':')).encode())
        assert size <= MAX_LOG, f'a {size}-byte log left the check'
        if pattern != 'x*':
            assert '7' not in log['message'], 'a digit went out unmasked'
    assert all(r['status'] == 202 for r in sink.requests), [r['status'] for r in sink.requests]
    assert sum(r['truncated'] for r in sink.requests) == 0, 'the intake had to cut a log'
    assert all(r['raw_bytes'] <= 5 * 1024 * 1024 for r in sink.requests)
    grown = sum(1 for log in logs if log.get('huntress.truncated'))
    truncated = sum(m.value for m in aggregator.metrics('huntress.siem.logs_truncated'))
    assert truncated == grown and (grown == len(rows) if grows else grown == 0), (truncated, grown)


def test_a_mask_hides_every_copy_in_logs_tags_and_events(
    make_check, dd_run_check, aggregator, huntress, sink, instance
):
    orgs = fixtures.organizations(2, seed=192)
    orgs[0].update(name='Acme Dental', key='client-one')
    huntress.set_organizations(orgs)
    rows = recent_events(20, seed=193, org_ids=[orgs[0]['id']])
    for row in rows:
        row['user.name'] = 'frontdesk@acme-dental'
        row['message'] = 'logon at Acme Dental front desk'
    huntress.add_events(rows)
    huntress.set_escalations(recent_escalations(6, [orgs[0]], seed=194))
    huntress.set_signals(recent_signals(6, [orgs[0]], [], seed=195))
    instance.update(
        escalations={'enabled': True},
        signals={'enabled': True},
        max_window_seconds=3600,
        log_processing_rules=[
            {'type': 'mask_sequences', 'name': 'client', 'pattern': '(?i)acme[ _-]dental', 'replace_placeholder': '[client]'}
        ],
    )
    dd_run_check(make_check(instance))

    services = {log.get('service') for log in sink.logs}
    assert {'huntress-siem', 'huntress-escalations', 'huntress-signals'} <= services
    for log in sink.logs:
        text = json.dumps(log)
        assert 'acme' not in text.lower(), text[text.lower().find('acme') - 200:][:400]
        assert 'huntress_org_name:[client]' in log['ddtags'], log['ddtags']
    escalation_events = [e for e in aggregator.events if e['aggregation_key'].startswith('huntress-escalation')]
    assert len(escalation_events) == 6
    for event in escalation_events:
        for part in (event['msg_title'], event['msg_text'], ','.join(event['tags'])):
            assert 'acme' not in part.lower(), part
        assert any(tag.startswith('huntress_org_name:[client]') for tag in event['tags']), event['tags']


# The check alone, in a fresh process: the simulator and the sink, which keeps
# every log it accepts, stay in this one.
CHECK_ONE_RUN = """
import json, resource, sys
from datadog_checks.huntress import HuntressCheck
instance = json.loads(sys.argv[1])
check = HuntressCheck('huntress', {}, [instance])
while check.check_initializations:
    check.check_initializations.popleft()()
def rss(field):
    return next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith(field + ':'))
open('/proc/self/clear_refs', 'w').write('5')
start = rss('VmRSS')
error = check.run()
print(json.dumps({'error': error, 'growth': rss('VmHWM') - start}))
"""


@pytest.mark.skipif(not os.path.exists('/proc/self/clear_refs'), reason='needs Linux to reset the peak RSS')
def test_a_page_of_logs_a_mask_makes_larger_is_sent_in_bounded_memory(huntress, sink, instance):
    """One 20 MB page of 100 KB digit messages, each masked into 700 KB: the
    page's logs (140 MB in all) go out batch by batch as they are written,
    never held whole."""
    rows = recent_events(200, seed=193)
    for i, row in enumerate(rows):
        row['message'] = str(i).rjust(100_000, '7')
    huntress.add_events(rows)
    instance['log_processing_rules'] = [{'type': 'mask_sequences', 'name': 'digits', 'pattern': '[0-9]', 'replace_placeholder': '[digit]'}]
    result = subprocess.run(
        [sys.executable, '-c', CHECK_ONE_RUN, json.dumps(instance)], capture_output=True, text=True, timeout=300, check=True
    )
    run = json.loads(result.stdout.strip().splitlines()[-1])
    assert run['error'] == '', run['error']
    assert run['growth'] < 100 * MB, f"peak RSS grew by {run['growth'] / MB:.0f} MB"
    assert len(sink.uuids()) == 200 and max(sink.uuids().values()) == 1
    assert all(r['raw_bytes'] <= 5 * 1024 * 1024 for r in sink.requests)
