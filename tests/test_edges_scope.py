"""The organization scope decides on the organization an item names, however it
names it: a flat or nested id, or only a name (in any case). Two clients have
data in every feed, each item naming its client one way or another; an
instance scoped to one client forwards every item of that client and nothing
of the other, in logs, events and metrics. Expected values come from the
fixtures, not from the check."""

from datetime import timedelta

import pytest

from datadog_checks.dev.utils import get_metadata_metrics
from tests.sim import fixtures
from tests.sim.timeutil import iso_seconds

from .conftest import now_utc, recent_events
from .test_inventory import logs_of, recent_incidents
from .test_soc import recent_escalations, recent_signals

QUERY = 'FROM logs | KEEP @timestamp, uuid, organization_id, organization.id, organization.name, message, event.*'


def odd_case(name):
    """The name as another system might spell it: other case, padded."""
    return f'  {name.swapcase()} '


def siem_namings(org):
    return [
        lambda row: row.update(organization_id=org['id']),
        lambda row: row.update({'organization.id': org['id']}),
        lambda row: row.update({'organization.name': odd_case(org['name'])}),
        lambda row: row.update({'organization.name': org['name']}),
    ]


def object_namings(org):
    """How a REST item (incident, agent, signal) can name its organization."""
    return [
        {'organization_id': org['id']},
        {'organization': {'id': org['id'], 'name': org['name']}},
        {'organization': {'id': org['id']}},
        {'organization': {'name': odd_case(org['name'])}},
    ]


def escalation_namings(org):
    return [
        [{'id': org['id'], 'name': org['name']}],
        [{'id': org['id']}],
        [{'name': odd_case(org['name'])}],
        [odd_case(org['name'])],
        [org['id']],
        [str(org['id'])],
    ]


def renamed(item, naming):
    for key in ('organization_id', 'organization'):
        item.pop(key, None)
    item.update(naming)
    return item


def world(huntress):
    """Clients A and B, each with items in every feed named every way; the
    ids of each client's items by feed."""
    a, b = fixtures.organizations(2, seed=181)
    huntress.set_organizations([a, b])
    agents = fixtures.agents(16, [a, b], seed=182)
    owner = {agent['id']: (a if agent['organization_id'] == a['id'] else b) for agent in agents}
    ids = {'A': {}, 'B': {}}

    def record(client, feed, key):
        ids[client].setdefault(feed, set()).add(key)

    rows = recent_events(80, seed=183, org_ids=[a['id'], b['id']])
    for i, row in enumerate(rows):
        org = a if i % 2 == 0 else b
        row.pop('organization_id', None)
        row.pop('organization.id', None)
        siem_namings(org)[(i // 2) % 4](row)
        record('A' if org is a else 'B', 'siem', row['uuid'])
    huntress.add_events(rows)

    for i, agent in enumerate(agents):
        org = owner[agent['id']]
        renamed(agent, object_namings(org)[i % 4])
        record('A' if org is a else 'B', 'agents', agent['id'])
    huntress.set_agents(agents)

    incidents = recent_incidents(16, [a, b], fixtures.agents(16, [a, b], seed=182), seed=184)
    for i, item in enumerate(incidents):
        org = a if i % 2 == 0 else b
        renamed(item, object_namings(org)[(i // 2) % 4])
        record('A' if org is a else 'B', 'incidents', item['id'])
    huntress.set_incident_reports(incidents)

    escalations = recent_escalations(24, [a], seed=185)
    for i, item in enumerate(escalations):
        org = a if i % 2 == 0 else b
        item['organizations'] = escalation_namings(org)[(i // 2) % 6]
        record('A' if org is a else 'B', 'escalations', item['id'])
    huntress.set_escalations(escalations)

    signals = recent_signals(16, [a], [], seed=186)
    for i, item in enumerate(signals):
        org = a if i % 2 == 0 else b
        item['id'] = 70_000 + i
        item['investigated_at'] = iso_seconds(now_utc() - timedelta(seconds=60 + i))
        renamed(item, object_namings(org)[(i // 2) % 4])
        record('A' if org is a else 'B', 'signals', item['id'])
    huntress.set_signals(signals)
    return a, b, ids


SCOPES = {
    'exclude-id': lambda a, b: {'organizations': {'exclude': [b['id']]}, 'unknown_organization': 'drop'},
    'exclude-name': lambda a, b: {'organizations': {'exclude': [b['name'].lower()]}, 'unknown_organization': 'drop'},
    'include-id': lambda a, b: {'organizations': {'include': [a['id']]}, 'unknown_organization': 'drop'},
    'include-ids': lambda a, b: {'organizations': {'include': [a['id'], 987654]}, 'unknown_organization': 'drop'},
    'include-name': lambda a, b: {'organizations': {'include': [a['name'].upper()]}},
}


@pytest.mark.parametrize('scope', list(SCOPES), ids=list(SCOPES))
def test_a_client_named_any_way_stays_in_or_out_of_scope(
    make_check, dd_run_check, aggregator, huntress, sink, instance, scope
):
    a, b, ids = world(huntress)
    instance.update(
        SCOPES[scope](a, b),
        log_queries=[{'name': 'all', 'esql_query': QUERY}],
        incidents={'enabled': True},
        escalations={'enabled': True},
        signals={'enabled': True},
        metrics={'agents': {'enabled': True}},
        max_window_seconds=3600,
    )
    dd_run_check(make_check(instance))

    sent = {
        'siem': {log['uuid'] for log in logs_of(sink, 'huntress-siem')},
        'incidents': {log['id'] for log in logs_of(sink, 'huntress-incidents')},
        'escalations': {log['id'] for log in logs_of(sink, 'huntress-escalations')},
        'signals': {log['id'] for log in logs_of(sink, 'huntress-signals')},
    }
    for feed, got in sent.items():
        assert not got & ids['B'][feed], f'{feed}: the other client crossed the scope'
        assert got == ids['A'][feed], f'{feed}: items of the client in scope were left out'
    for log in sink.logs:
        assert f"huntress_org_id:{b['id']}" not in log['ddtags'], log['ddtags']
        if log.get('service') == 'huntress-siem':
            assert f"huntress_org_id:{a['id']}" in log['ddtags'], 'a name resolves to the id, as enrichment does'

    b_name_tag = f"huntress_org_name:{b['name'].lower().replace(' ', '_')}"
    b_items = {str(i) for feed in ('incidents', 'escalations') for i in ids['B'][feed]}
    assert aggregator.events
    for event in aggregator.events:
        assert event['aggregation_key'].rsplit('-', 1)[-1] not in b_items, event['aggregation_key']
        assert f"huntress_org_id:{b['id']}" not in event['tags'] and b_name_tag not in event['tags']
    keys = {e['aggregation_key'].rsplit('-', 1)[-1] for e in aggregator.events}
    assert {str(i) for i in ids['A']['escalations']} <= keys

    for metric in aggregator.metric_names:
        for m in aggregator.metrics(metric):
            assert f"huntress_org_id:{b['id']}" not in m.tags and b_name_tag not in m.tags, (metric, m.tags)
    aggregator.assert_metric('huntress.agents.count', value=len(ids['A']['agents']))
    for m in aggregator.metrics('huntress.scope.unknown_organization'):
        assert m.value == 0, f'every organization here can be resolved: {m.tags}'
    aggregator.assert_metrics_using_metadata(get_metadata_metrics(), check_submission_type=True)


def test_one_instance_per_client_on_one_account_each_delivers_its_whole_client(
    make_check, dd_run_check, huntress, sink, instance
):
    """An MSP's usual set-up: the same Huntress key and query in two instances,
    each scoped to one client, run one after the other on one Agent. Neither
    instance's checkpoint or memory of handled items may stand for the other's."""
    a, b, ids = world(huntress)
    common = dict(
        log_queries=[{'name': 'all', 'esql_query': QUERY}],
        incidents={'enabled': True},
        escalations={'enabled': True},
        signals={'enabled': True},
        max_window_seconds=3600,
        unknown_organization='drop',
    )
    for client in (a, b):
        scoped = dict(instance, organizations={'include': [client['id']]}, **common)
        dd_run_check(make_check(scoped))

    services = {'siem': 'uuid', 'incidents': 'id', 'escalations': 'id', 'signals': 'id'}
    for feed, key in services.items():
        sent = [log[key] for log in logs_of(sink, f'huntress-{feed}')]
        assert len(sent) == len(set(sent)), f'{feed}: sent twice'
        for client in ('A', 'B'):
            assert ids[client][feed] <= set(sent), f'{feed}: items of client {client} were never sent'
