"""End to end: rows that JSON allows but a dict cannot hold (repeated members,
lone surrogate escapes) and timestamps in odd forms, through the real check,
from the Huntress simulator to the intake sink."""

import json
import shutil
import ssl
import subprocess
from datetime import datetime, timedelta, timezone

import pytest

from datadog_checks.base import AgentCheck, ConfigurationError

from .conftest import DD_API_KEY, recent_events
from .sim.intake_sink import IntakeSink, log_date_seconds


def _page(*rows):
    return ('{"logs": [' + ', '.join(rows) + '], "pagination": {}}').encode()


def _iso(moment):
    return moment.strftime('%Y-%m-%dT%H:%M:%S.') + f'{moment.microsecond:06d}000Z'


@pytest.fixture
def one_window(instance):
    instance['max_window_seconds'] = 3600
    instance['enrich_with_org_tags'] = False
    return instance


def test_each_log_has_one_date_and_one_value_per_key(make_check, dd_run_check, aggregator, huntress, sink, one_window):
    now = datetime.now(timezone.utc)
    recent = now - timedelta(minutes=10)
    recent_ms = int(recent.timestamp() * 1000)
    old = now - timedelta(hours=20)
    plus_0000 = recent.strftime('%Y-%m-%dT%H:%M:%S.%f')[:-3] + '+0000'
    huntress.siem_raw_page = _page(
        f'{{"uuid": "dup", "@timestamp": "{_iso(recent)}", "message": "first", "message": "second", "x": 1, "x": 2,'
        ' "date": "row date", "ddtags": "row:tag", "huntress.original_timestamp": "row value"}',
        f'{{"uuid": "plus-0000", "@timestamp": "{plus_0000}", "message": "m"}}',
        f'{{"uuid": "digits", "@timestamp": "{recent_ms}", "message": "m"}}',
        f'{{"uuid": "twice", "@timestamp": "{_iso(old)}", "@timestamp": null, "message": "m"}}',
        '{"uuid": "unreadable", "@timestamp": "yesterday", "message": "m"}',
        '{"uuid": "dup", "message": "a repeated row is forwarded once"}',
    )
    dd_run_check(make_check(one_window))

    by_uuid = {log['uuid']: log for log in sink.logs}
    assert sorted(sink.uuids().values()) == [1] * 5
    assert sink.repeated_keys == []
    assert sink.dropped_stale == 0
    for log in sink.logs:
        # The date the check gave the log is the one the intake reads.
        assert log_date_seconds(log) == pytest.approx(log['date'] / 1000, abs=0.001), log
    dup = by_uuid['dup']
    assert (dup['message'], dup['x']) == ('second', 2)
    assert dup['date'] == recent_ms
    assert (dup['huntress.row.date'], dup['huntress.row.huntress.original_timestamp']) == ('row date', 'row value')
    assert 'row:tag' not in dup['ddtags'].split(',')
    assert by_uuid['plus-0000']['date'] == recent_ms
    assert by_uuid['plus-0000']['huntress.original_timestamp'] == plus_0000
    assert '@timestamp' not in by_uuid['plus-0000']
    assert by_uuid['digits']['date'] == recent_ms
    for uuid in ('twice', 'unreadable'):
        assert abs(by_uuid[uuid]['date'] / 1000 - now.timestamp()) < 300
        assert by_uuid[uuid]['huntress.timestamp_missing'] is True
    aggregator.assert_service_check('huntress.siem.can_connect', AgentCheck.OK)


@pytest.mark.parametrize(
    'body',
    [
        b'{"\\ud800": 1, "logs": [], "pagination": {}}',
        b'{"logs": [{"uuid": "a", "\\udc00": 1}], "pagination": {}}',
        b'{"logs": [{"uuid": "a", "message": "\\ud800\\u0041"}], "pagination": {}}',
    ],
    ids=['page-member', 'row-member', 'row-value'],
)
def test_lone_surrogates_are_a_malformed_response_not_a_crash(make_check, dd_run_check, aggregator, huntress, sink, one_window, body):
    huntress.siem_raw_page = body
    check = make_check(one_window)
    with pytest.raises(Exception, match='not valid JSON') as raised:
        dd_run_check(check)
    assert isinstance(raised.value, Exception)  # not a BaseException from a Rust panic
    assert sink.logs == []
    aggregator.assert_service_check('huntress.siem.can_connect', AgentCheck.CRITICAL)
    aggregator.assert_metric_has_tag('huntress.siem.errors', 'error_type:malformed_response')
    # The next run meets the same page and ends the same way.
    aggregator.reset()
    with pytest.raises(Exception, match='not valid JSON'):
        dd_run_check(check)
    aggregator.assert_service_check('huntress.siem.can_connect', AgentCheck.CRITICAL)


def test_a_row_field_named_like_a_check_attribute_is_kept_aside(make_check, dd_run_check, huntress, sink, one_window):
    now = datetime.now(timezone.utc) - timedelta(minutes=5)
    row = {'uuid': 'r', '@timestamp': _iso(now), 'message': 'm', 'timestamp': '2001-01-01T00:00:00Z',
           'hostname': 'row-host', 'service': 'row-service', 'huntress.row.timestamp': 'nested'}
    huntress.siem_raw_page = _page(json.dumps(row))
    dd_run_check(make_check(one_window))
    [log] = sink.logs
    assert sink.repeated_keys == []
    assert log['service'] == 'huntress-siem'
    assert log['@timestamp'] == row['@timestamp']
    assert log['huntress.row.timestamp'] == '2001-01-01T00:00:00Z'
    assert log['huntress.row.hostname'] == 'row-host'
    assert log['huntress.row.huntress.row.timestamp'] == 'nested'
    assert 'timestamp' not in log


def _openssl(*args, cwd):
    subprocess.run(['openssl', *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def tls_files(tmp_path):
    """A CA and a certificate it signed for 127.0.0.1."""
    if shutil.which('openssl') is None:
        pytest.skip('openssl is needed to make test certificates')
    ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes']
    _openssl('req', '-x509', *ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=huntress test CA', cwd=tmp_path)
    _openssl('req', *ec, '-keyout', 'leaf.key', '-out', 'leaf.csr', '-subj', '/CN=127.0.0.1', cwd=tmp_path)
    (tmp_path / 'leaf.ext').write_text('subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n')
    _openssl('x509', '-req', '-in', 'leaf.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'leaf.pem',
             '-days', '2', '-extfile', 'leaf.ext', cwd=tmp_path)
    return tmp_path


@pytest.fixture
def https_sink(tls_files):
    """The intake sink behind TLS, with a certificate no default trust store knows."""
    with IntakeSink(api_key=DD_API_KEY) as intake:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls_files / 'leaf.pem', tls_files / 'leaf.key')
        server = intake._server
        server.socket = context.wrap_socket(server.socket, server_side=True)
        yield intake, f'https://127.0.0.1:{intake.port}/api/v2/logs'


def test_tls_verify_false_leaves_the_intake_verified(make_check, dd_run_check, aggregator, huntress, https_sink, one_window, tls_files):
    intake, url = https_sink
    huntress.add_events(recent_events(5, seed=21))
    one_window.update(logs_intake_url=url, tls_verify=False)
    with pytest.raises(Exception, match='intake'):
        dd_run_check(make_check(one_window))
    assert intake.logs == []
    aggregator.assert_service_check('huntress.siem.can_connect', AgentCheck.CRITICAL)
    aggregator.assert_metric_has_tag('huntress.siem.errors', 'error_type:intake_unavailable')

    # Trusting the intake's CA, for the intake only, delivers.
    aggregator.reset()
    one_window.update(intake_tls_ca_cert=str(tls_files / 'ca.pem'))
    dd_run_check(make_check(one_window))
    assert len(intake.logs) == 5
    aggregator.assert_service_check('huntress.siem.can_connect', AgentCheck.OK)


@pytest.mark.parametrize(
    'edit, key',
    [
        (lambda i, _: i.update(tags=['team:sec,ops']), 'tags'),
        (lambda i, _: i['log_queries'][0].update(tags=['a,b']), 'log_queries[0].tags'),
        (lambda i, _: i['log_queries'][0].update(name='all,windows'), 'log_queries[0].name'),
        (lambda i, _: i['log_queries'][0].update(esql_query='FROM logs | WHERE `@timestamp` > "2026-01-01"'), 'log_queries[0].esql_query'),
        (lambda i, files: i.update(tls_ca_cert=str(files / 'ca.key')), 'tls_ca_cert'),
        (lambda i, files: i.update(intake_tls_ca_cert=str(files / 'leaf.ext')), 'intake_tls_ca_cert'),
    ],
    ids=['instance-tag', 'query-tag', 'query-name', 'backquoted-timestamp', 'ca-not-a-certificate', 'intake-ca-not-pem'],
)
def test_config_edges_are_refused_naming_the_key(make_check, instance, tls_files, edit, key):
    edit(instance, tls_files)
    with pytest.raises(ConfigurationError) as error:
        make_check(instance)
    assert f'`{key}`' in str(error.value)
