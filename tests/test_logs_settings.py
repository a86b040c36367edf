"""The Agent's logs settings through the real check: processing rules (the
documentation's examples), logs_dd_url, and compression."""

import copy
import socketserver
import threading

import pytest

from datadog_checks.base import ConfigurationError
from tests.sim import IntakeSink

from .conftest import DD_API_KEY, recent_events

# The mask_sequences example of the Agent's documentation ("Scrub sensitive data from your logs").
CARD_PATTERN = (
    r'(?:4[0-9]{12}(?:[0-9]{3})?|[25][1-7][0-9]{14}|6(?:011|5[0-9][0-9])[0-9]{12}|3[47][0-9]{13}'
    r'|3(?:0[0-5]|[68][0-9])[0-9]{11}|(?:2131|1800|35\d{3})\d{11})'
)
MASK_CARDS = {
    'type': 'mask_sequences',
    'name': 'mask_credit_cards',
    'replace_placeholder': '[masked_credit_card]',
    'pattern': CARD_PATTERN,
}
# The exclude_at_match and include_at_match examples ("Filter logs").
EXCLUDE_DATADOG_USERS = {'type': 'exclude_at_match', 'name': 'exclude_datadoghq_users', 'pattern': r'\w+@datadoghq.com'}
INCLUDE_DATADOG_USERS = {'type': 'include_at_match', 'name': 'include_datadoghq_users', 'pattern': r'\w+@datadoghq.com'}
# The capture-group example: Go's ReplaceAll keeps the group's trailing space and the placeholder's.
MASK_EMAIL = {
    'type': 'mask_sequences',
    'name': 'mask_user_email',
    'replace_placeholder': '$1 masked_user@${2}',
    'pattern': '(User email: )[^@]*@(.*)',
}
EXCLUDE_HEALTH_CHECKS = {'type': 'exclude_at_match', 'name': 'exclude_healthcheck', 'pattern': r'GET /health'}
ONLY_ERRORS = {'type': 'include_at_match', 'name': 'only_errors', 'pattern': r'(?i)\b(error|failed)\b'}

MESSAGES = {
    'card': 'payment approved for card 4111111111111111',
    'amex': 'refund to 378282246310005 issued',
    'datadog_user': 'login by jane@datadoghq.com',
    'other_user': 'login by bob@example.com',
    'health': 'GET /health 200 0.4ms',
    'error': 'ERROR logon failed for bob@example.com',
    'email': 'User email: foo.bar@example.com',
}


def rows_with_messages(messages=MESSAGES):
    """One SIEM row per message, with no log.original, so the message is the row's."""
    rows = recent_events(len(messages), seed=31, providers=('generichec',))
    by_name = {}
    for row, (name, message) in zip(rows, messages.items()):
        row.pop('log.original', None)
        row['message'] = message
        by_name[name] = row
    return by_name


def messages_by_name(sink, rows):
    name_of = {row['uuid']: name for name, row in rows.items()}
    return {name_of[log['uuid']]: log['message'] for log in sink.logs}


def excluded(aggregator):
    counts = {}
    for metric in aggregator.metrics('huntress.siem.logs_excluded'):
        rule = next(t.split(':', 1)[1] for t in metric.tags if t.startswith('rule:'))
        counts[rule] = counts.get(rule, 0) + metric.value
    return {rule: count for rule, count in counts.items() if count}


@pytest.mark.parametrize(
    'global_rules, instance_rules, expected',
    [
        pytest.param(
            [],
            [MASK_CARDS],
            dict(
                MESSAGES,
                card='payment approved for card [masked_credit_card]',
                amex='refund to [masked_credit_card] issued',
            ),
            id='mask_credit_cards',
        ),
        pytest.param(
            [],
            [MASK_EMAIL],
            dict(MESSAGES, email='User email:  masked_user@example.com'),
            id='mask_with_capture_groups',
        ),
        pytest.param(
            [EXCLUDE_DATADOG_USERS],
            [EXCLUDE_HEALTH_CHECKS],
            {k: v for k, v in MESSAGES.items() if k not in ('datadog_user', 'health')},
            id='exclude_user_and_health_check',
        ),
        pytest.param([], [INCLUDE_DATADOG_USERS], {'datadog_user': MESSAGES['datadog_user']}, id='include_datadog_users'),
        pytest.param([ONLY_ERRORS], [], {'error': MESSAGES['error']}, id='keep_only_errors'),
    ],
)
def test_documented_rule_examples_give_the_agents_logs(
    make_check, dd_run_check, datadog_agent, aggregator, huntress, sink, instance, global_rules, instance_rules, expected
):
    rows = rows_with_messages()
    huntress.add_events(list(rows.values()))
    datadog_agent._config['logs_config.processing_rules'] = global_rules
    instance['log_processing_rules'] = instance_rules
    check = make_check(instance)
    dd_run_check(check)

    assert messages_by_name(sink, rows) == expected
    assert len(sink.logs) == len(expected), 'each kept log arrives once'
    dropped = len(MESSAGES) - len(expected)
    assert sum(excluded(aggregator).values()) == dropped
    for rule in global_rules + instance_rules:
        if rule['type'] != 'mask_sequences' and dropped:
            aggregator.assert_metric_has_tag('huntress.siem.logs_excluded', f"rule:{rule['name']}")
    # Dropped logs are handled: the checkpoint is past them, and nothing is re-sent.
    aggregator.reset()
    dd_run_check(check)
    assert len(sink.logs) == len(expected)
    assert sum(m.value for m in aggregator.metrics('huntress.siem.logs_collected')) == 0


def test_masking_reaches_every_attribute_that_repeats_the_message(make_check, dd_run_check, huntress, sink, instance):
    rows = rows_with_messages({'card': MESSAGES['card']})
    row = rows['card']
    row['log.original'] = 'raw: card=4111111111111111 user=jane'
    row['user.name'] = 'card 5555555555554444'
    huntress.add_events([row])
    instance['log_processing_rules'] = [MASK_CARDS]
    dd_run_check(make_check(instance))

    (log,) = sink.logs
    assert log['message'] == 'raw: card=[masked_credit_card] user=jane'
    assert log['ecs.message'] == 'payment approved for card [masked_credit_card]'
    assert log['user.name'] == 'card [masked_credit_card]'
    assert all(number not in str(sink.logs) for number in ('4111111111111111', '5555555555554444'))


def test_instance_rules_run_after_the_global_ones(make_check, dd_run_check, datadog_agent, aggregator, huntress, sink, instance):
    rows = rows_with_messages({'card': MESSAGES['card']})
    huntress.add_events(list(rows.values()))
    # The Agent's rules as DD_LOGS_CONFIG_PROCESSING_RULES gives them: JSON text.
    datadog_agent._config['logs_config.processing_rules'] = (
        '[{"type": "mask_sequences", "name": "mask_credit_cards", "replace_placeholder": "[card]", "pattern": "4[0-9]{15}"}]'
    )
    instance['log_processing_rules'] = [{'type': 'exclude_at_match', 'name': 'raw_cards', 'pattern': '4111'}]
    dd_run_check(make_check(instance))
    # Masked first, so the instance's exclusion no longer sees the number.
    assert [log['message'] for log in sink.logs] == ['payment approved for card [card]']
    assert excluded(aggregator) == {}


@pytest.mark.parametrize(
    'rule, words',
    [
        ({'type': 'drop_everything', 'name': 'odd_type', 'pattern': 'a'}, ['odd_type', 'unknown type']),
        ({'type': 'exclude_at_match', 'name': 'broken_pattern', 'pattern': '(unclosed'}, ['broken_pattern', 'does not compile']),
        ({'type': 'mask_sequences', 'name': 'no_placeholder', 'pattern': r'\d+'}, ['no_placeholder', 'replace_placeholder']),
        # A missing name is a type error: the configuration model reports it, naming the option and the field.
        ({'type': 'exclude_at_match', 'pattern': 'a'}, ['log_processing_rules', 'name', 'required']),
    ],
)
def test_an_invalid_rule_is_a_configuration_error_naming_it(make_check, instance, rule, words):
    instance['log_processing_rules'] = [rule]
    with pytest.raises(ConfigurationError) as raised:
        make_check(instance)
    for word in words:
        assert word in str(raised.value)


def test_an_invalid_global_rule_is_named_too(make_check, datadog_agent, instance):
    datadog_agent._config['logs_config.processing_rules'] = [
        {'type': 'include_at_match', 'name': 'fine', 'pattern': 'x'},
        {'type': 'include_at_match', 'name': 'bad_global', 'pattern': '[z-a]'},
    ]
    with pytest.raises(ConfigurationError, match=r'logs_config\.processing_rules\[1\].*bad_global'):
        make_check(instance)


class RecordingProxy(socketserver.ThreadingTCPServer):
    """Stands in for the way out to the internet: records the first line of
    every request (a CONNECT for an https site intake) and closes."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        self.lines = []
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                proxy.lines.append(self.rfile.readline().decode('latin-1').strip())

        super().__init__(('127.0.0.1', 0), Handler)
        self.url = f'http://127.0.0.1:{self.server_address[1]}'
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.fixture
def site_route(datadog_agent):
    """Routes the site intake (https://http-intake.logs.datadoghq.com) through a
    recording proxy; loopback (the simulator and the sinks) stays direct."""
    proxy = RecordingProxy()
    datadog_agent._config['site'] = 'datadoghq.com'
    datadog_agent._config['proxy'] = {'https': proxy.url, 'http': proxy.url, 'no_proxy': ['127.0.0.1']}
    yield proxy
    proxy.shutdown()
    proxy.server_close()


def site_instance(instance):
    site = copy.deepcopy(instance)
    del site['logs_intake_url']
    return site


def test_logs_dd_url_takes_every_log_and_the_site_intake_none(
    make_check, dd_run_check, datadog_agent, aggregator, huntress, instance, site_route
):
    events = recent_events(450, seed=32)
    huntress.add_events(events)
    with IntakeSink(api_key=DD_API_KEY) as relay:
        host_port = relay.url.split('://', 1)[1].split('/', 1)[0]
        datadog_agent._config['logs_config.logs_dd_url'] = host_port
        datadog_agent._config['logs_config.logs_no_ssl'] = True
        dd_run_check(make_check(site_instance(instance)))
        assert relay.uuids() == {row['uuid']: 1 for row in events}
        assert {r['path'] for r in relay.requests} == {'/api/v2/logs'}
        # The Agent's default compression, zstd level 1, goes to logs_dd_url as the Agent sends it.
        assert {r['encoding'] for r in relay.requests} == {'zstd'}
    assert site_route.lines == []
    assert sum(m.value for m in aggregator.metrics('huntress.siem.logs_forwarded')) == len(events)


def test_without_logs_dd_url_logs_go_to_the_site_intake(make_check, dd_run_check, huntress, instance, site_route):
    # The control for the test above: the same route does catch the site intake.
    huntress.add_events(recent_events(5, seed=33))
    with pytest.raises(Exception, match='cannot reach the intake'):
        dd_run_check(make_check(dict(site_instance(instance), request_timeout=2, run_deadline_seconds=2)))
    assert 'CONNECT http-intake.logs.datadoghq.com:443 HTTP/1.1' in site_route.lines


@pytest.mark.parametrize(
    'settings, encoding',
    [
        ({}, 'zstd'),
        ({'compression_kind': 'gzip', 'compression_level': 6}, 'gzip'),
        ({'use_compression': False}, None),
    ],
)
def test_compression_follows_the_agent_and_every_event_arrives_once(
    make_check, dd_run_check, datadog_agent, huntress, instance, settings, encoding
):
    events = recent_events(1300, seed=34)
    huntress.add_events(events)
    with IntakeSink(api_key=DD_API_KEY) as relay:
        datadog_agent._config['logs_config.logs_dd_url'] = relay.url.rsplit('/api/v2/logs', 1)[0]
        for key, value in settings.items():
            datadog_agent._config[f'logs_config.{key}'] = value
        instance = site_instance(instance)
        instance['max_window_seconds'] = 3600
        check = make_check(instance)
        dd_run_check(check)
        dd_run_check(check)
        assert relay.uuids() == {row['uuid']: 1 for row in events}
        assert {r['encoding'] for r in relay.requests} == {encoding}
        assert all(r['status'] == 202 for r in relay.requests)


def test_zstd_falls_back_to_gzip_where_it_is_not_known_accepted(make_check, dd_run_check, huntress, sink, instance, caplog):
    huntress.add_events(recent_events(20, seed=35))
    caplog.set_level('INFO')
    dd_run_check(make_check(instance))
    assert {r['encoding'] for r in sink.requests} == {'gzip'}
    assert len(sink.uuids()) == 20
    assert any('not known to accept zstd' in record.getMessage() for record in caplog.records)


def test_excluded_logs_are_counted_in_metadata(make_check, dd_run_check, aggregator, huntress, instance):
    from datadog_checks.dev.utils import get_metadata_metrics

    huntress.add_events(list(rows_with_messages().values()))
    instance['log_processing_rules'] = [EXCLUDE_HEALTH_CHECKS]
    dd_run_check(make_check(instance))
    assert excluded(aggregator) == {'exclude_healthcheck': 1}
    assert 'huntress.siem.logs_excluded' in get_metadata_metrics()
    aggregator.assert_metrics_using_metadata(get_metadata_metrics(), check_submission_type=True)
