"""The REST feeds against an API that is hostile or broken in the ways a
listing can be, through the real check and the simulator: a page of millions of
tiny values, a listing that ignores the sort order asked for, an item served once
with a time in the future, and a signal backlog larger than one run can read.
Expected values are computed here from the fixtures, not read back from the check."""

import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from datadog_checks.base import AgentCheck
from tests.sim import fixtures
from tests.sim.timeutil import iso_seconds

from .conftest import now_utc, recent_events
from .test_hostile_transport import MB, PeakRss
from .test_inventory import logs_of
from .test_soc import events_with_key, recent_escalations, recent_signals

API = 'huntress.api.can_connect'

# ---------------------------------------------------------------------------
# A page of tiny values
# ---------------------------------------------------------------------------

TINY_PAGE_BYTES = 24 * MB  # under the 32 MiB body cap


def tiny_object_page(plural):
    """A well-formed page of about 24 MiB: one list of millions of one-member objects."""
    item = b'{"a":1}'
    count = TINY_PAGE_BYTES // (len(item) + 1)
    return b'{"' + plural.encode() + b'":[' + b','.join([item] * count) + b'],"pagination":{}}'


REST_LISTS = {
    '/v1/signals': 'signals',
    '/v1/escalations': 'escalations',
    '/v1/incident_reports': 'incident_reports',
    '/v1/agents': 'agents',
    '/v1/organizations': 'organizations',
}
ONE_PAGE = 'HUNTRESS_TEST_TINY_PAGE_PATH'


@pytest.mark.parametrize('path', sorted(REST_LISTS))
def test_a_rest_page_of_millions_of_tiny_objects_is_refused_in_bounded_memory(path):
    # Each answer in a fresh process: memory freed by an earlier test would hide a peak.
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', f'{__file__}::test_one_page_of_tiny_objects', '-q', '-p', 'no:cacheprovider'],
        cwd=Path(__file__).resolve().parents[1],
        env=dict(os.environ, **{ONE_PAGE: path}),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0 and re.search(r'^1 passed', result.stdout, re.M), result.stdout[-4000:] + result.stderr[-2000:]


@pytest.mark.skipif(ONE_PAGE not in os.environ, reason='run in its own process by the test above')
def test_one_page_of_tiny_objects(make_check, dd_run_check, aggregator, huntress, sink, instance):
    path = os.environ[ONE_PAGE]
    orgs = fixtures.organizations(2, seed=201)
    huntress.set_organizations(orgs)
    huntress.add_events(recent_events(20, seed=202))
    instance.update({
        'signals': {'enabled': True},
        'escalations': {'enabled': True},
        'incidents': {'enabled': True},
        'metrics': {'agents': {'enabled': True}},
    })
    check = make_check(instance)
    huntress.rest_raw_pages[path] = tiny_object_page(REST_LISTS[path])
    with PeakRss() as rss:
        dd_run_check(check)
    assert rss.growth < 100 * MB, f'peak RSS grew by {rss.growth / MB:.0f} MB on {path}'
    (api,) = aggregator.service_checks(API)
    assert api.status != AgentCheck.OK
    assert 'too many values' in api.message and path in api.message
    assert len(sink.uuids()) == 20, 'the SIEM logs still go out'


# ---------------------------------------------------------------------------
# A listing that ignores sort_direction
# ---------------------------------------------------------------------------


def stale_then_new(items, key='updated_at'):
    """All but the last item changed two hours ago (before the look-back), the
    last a minute ago with the highest id: oldest first by id, it comes last."""
    now = now_utc()
    items = sorted(items, key=lambda i: i['id'])
    for item in items[:-1]:
        item[key] = iso_seconds(now - timedelta(hours=2))
    items[-1][key] = iso_seconds(now - timedelta(seconds=60))
    items[-1]['severity'] = 'critical'
    return items


@pytest.mark.parametrize('feed', ['incidents', 'escalations'])
def test_a_listing_that_ignores_the_sort_order_still_yields_the_new_critical_item(
    make_check, dd_run_check, aggregator, huntress, sink, instance, feed
):
    orgs = fixtures.organizations(3, seed=211)
    agents = fixtures.agents(10, orgs, seed=212)
    huntress.set_organizations(orgs)
    if feed == 'incidents':
        items = stale_then_new(fixtures.incident_reports(30, orgs, agents, seed=213, now=now_utc()))
        huntress.set_incident_reports(items)
        service, prefix = 'huntress-incidents', 'huntress-incident-'
    else:
        items = stale_then_new(fixtures.escalations(30, orgs, seed=214, now=now_utc()))
        huntress.set_escalations(items)
        service, prefix = 'huntress-escalations', 'huntress-escalation-'
    huntress.ignore_sort = True
    instance[feed] = {'enabled': True}
    dd_run_check(make_check(instance))
    new = items[-1]
    assert [log['id'] for log in logs_of(sink, service)] == [new['id']]
    assert [e['aggregation_key'] for e in events_with_key(aggregator, prefix)] == [f"{prefix}{new['id']}"]


# ---------------------------------------------------------------------------
# A version from the future
# ---------------------------------------------------------------------------


def test_an_incident_once_dated_in_the_future_still_has_its_resolution_forwarded(
    make_check, dd_run_check, aggregator, huntress, sink, instance
):
    orgs = fixtures.organizations(2, seed=221)
    agents = fixtures.agents(6, orgs, seed=222)
    report = dict(fixtures.incident_reports(1, orgs, agents, seed=223, now=now_utc())[0], status='sent')
    report['updated_at'] = '2099-01-01T00:00:00Z'
    huntress.set_organizations(orgs)
    huntress.set_incident_reports([report])
    instance['incidents'] = {'enabled': True}
    dd_run_check(make_check(instance))
    assert [log['incident_status'] for log in logs_of(sink, 'huntress-incidents')] == ['sent']

    huntress.update_incident_report(report['id'], status='closed', updated_at=iso_seconds(now_utc() - timedelta(seconds=30)))
    aggregator.reset()
    dd_run_check(make_check(instance))
    assert [log['incident_status'] for log in logs_of(sink, 'huntress-incidents')] == ['sent', 'closed']
    (event,) = events_with_key(aggregator, 'huntress-incident-')
    assert event['alert_type'] == 'success'

    aggregator.reset()
    dd_run_check(make_check(instance))
    assert len(logs_of(sink, 'huntress-incidents')) == 2, 'each version once'


def test_an_escalation_once_dated_in_the_future_still_has_its_resolution_forwarded(
    make_check, dd_run_check, aggregator, huntress, sink, instance
):
    orgs = fixtures.organizations(2, seed=231)
    item = dict(recent_escalations(1, orgs, seed=232)[0], status='open', resolved_at=None)
    item['updated_at'] = '2099-01-01T00:00:00Z'
    huntress.set_organizations(orgs)
    huntress.set_escalations([item])
    instance['escalations'] = {'enabled': True}
    dd_run_check(make_check(instance))
    assert [log['escalation_status'] for log in logs_of(sink, 'huntress-escalations')] == ['open']

    now = iso_seconds(now_utc() - timedelta(seconds=30))
    huntress.update_escalation(item['id'], status='resolved', resolved_at=now, updated_at=now)
    dd_run_check(make_check(instance))
    assert [log['escalation_status'] for log in logs_of(sink, 'huntress-escalations')] == ['open', 'resolved']


# ---------------------------------------------------------------------------
# A signal backlog larger than one run
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('max_pages, backlog', [(2, 2_600), (12, 6_600)])
def test_a_signal_backlog_larger_than_a_run_drains_exactly_once(
    make_check, dd_run_check, aggregator, huntress, sink, instance, max_pages, backlog
):
    orgs = fixtures.organizations(3, seed=241)
    agents = fixtures.agents(20, orgs, seed=242)
    huntress.set_organizations(orgs)
    signals = recent_signals(backlog, orgs, agents, seed=243, newest_seconds_ago=30)
    for i, signal in enumerate(signals):
        # An Agent down for most of the look-back: the backlog spans the last 50 minutes.
        signal['id'] = 500_000 + i
        signal['investigated_at'] = iso_seconds(now_utc() - timedelta(seconds=30 + (i * 3000) // backlog))
    huntress.set_signals(signals)
    instance['signals'] = {'enabled': True, 'max_pages': max_pages}
    runs = 0
    while len(logs_of(sink, 'huntress-signals')) < backlog and runs < 12:
        dd_run_check(make_check(instance))
        runs += 1
    ids = [log['id'] for log in logs_of(sink, 'huntress-signals')]
    assert len(set(ids)) == backlog, f'{len(set(ids))} of {backlog} after {runs} runs'
    assert len(ids) == backlog, 'none twice'
    # Caught up: later runs read one page and send nothing again.
    dd_run_check(make_check(instance))
    assert len(logs_of(sink, 'huntress-signals')) == backlog
