"""The check at the edges of its transport: a proxy that refuses the check and
quotes its credential back, a configuration error that quotes a secret, and an
API that reads a request and never answers."""

import base64
import json
import socket
import threading
import time

import pytest

from datadog_checks.base import AgentCheck, ConfigurationError

from .conftest import HUNTRESS_SECRET

PROXY_USER = 'squid-operator'
PROXY_PASSWORD = 'pr0xy-p@ss-7781'
PROXY_PASSWORD_IN_URL = 'pr0xy-p%40ss-7781'


def every_form_of(text):
    """The text and the base64 forms a log line or message could carry."""
    raw = text.encode()
    forms = {text, base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip('=')}
    return forms


class EchoingProxy:
    """An HTTP proxy that answers every request 407 and quotes the credential
    it was sent: the header, the bare base64 and the decoded user:password."""

    def __init__(self):
        self.server = socket.socket()
        self.server.bind(('127.0.0.1', 0))
        self.server.listen(16)
        self.port = self.server.getsockname()[1]
        self.requests = 0
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self.answer, args=(conn,), daemon=True).start()

    def answer(self, conn):
        with conn:
            head = b''
            while b'\r\n\r\n' not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                head += chunk
            self.requests += 1
            lines = head.decode('latin-1').split('\r\n')
            auth = next((line.split(':', 1)[1].strip() for line in lines if line.lower().startswith('proxy-authorization:')), '')
            token = auth.partition(' ')[2]
            decoded = base64.b64decode(token).decode() if token else ''
            body = json.dumps({'error': 'proxy authentication required', 'got': auth, 'token': token,
                               'user': decoded, 'raw': lines}).encode()
            conn.sendall(b'HTTP/1.1 407 Proxy Authentication Required\r\nContent-Type: application/json\r\n'
                         + f'Content-Length: {len(body)}\r\nConnection: close\r\n\r\n'.encode() + body)

    def close(self):
        self.server.close()


def test_a_proxy_that_quotes_its_credential_leaks_it_nowhere(
    make_check, dd_run_check, datadog_agent, aggregator, instance, caplog
):
    proxy = EchoingProxy()
    try:
        url = f'http://{PROXY_USER}:{PROXY_PASSWORD_IN_URL}@127.0.0.1:{proxy.port}'
        datadog_agent._config['proxy'] = {'http': url, 'https': url, 'no_proxy': []}
        instance['request_timeout'] = 3
        check = make_check(instance)
        with pytest.raises(Exception) as raised:
            dd_run_check(check)
        assert proxy.requests > 0, 'the check went through the proxy'
    finally:
        proxy.close()
    secrets = set()
    for text in (f'{PROXY_USER}:{PROXY_PASSWORD}', PROXY_PASSWORD, PROXY_PASSWORD_IN_URL, PROXY_USER):
        secrets |= every_form_of(text)
    checks = [s for name in list(aggregator._service_checks) for s in aggregator.service_checks(name)]
    assert any(s.status == AgentCheck.CRITICAL for s in checks), 'the refusal is a CRITICAL service check'
    texts = [str(raised.value), caplog.text, json.dumps(datadog_agent._cache)] + [s.message or '' for s in checks]
    assert '407' in ' '.join(texts), 'the refusal itself is reported'
    for text in texts:
        for secret in secrets:
            assert secret not in text, f'{secret!r} leaked: {text[:400]}'


def test_a_configuration_error_does_not_quote_a_secret(make_check, instance):
    instance['log_processing_rules'] = [
        {'type': 'mask_sequences', 'name': 'broken', 'pattern': f'({HUNTRESS_SECRET}', 'replace_placeholder': '[x]'}
    ]
    with pytest.raises(ConfigurationError) as raised:
        make_check(instance)
    message = str(raised.value)
    assert 'log_processing_rules' in message and 'broken' in message
    for secret in every_form_of(HUNTRESS_SECRET):
        assert secret not in message, message


class SilentServer:
    """Reads each request and never answers; records, per connection, how long
    the client kept it open."""

    def __init__(self):
        self.server = socket.socket()
        self.server.bind(('127.0.0.1', 0))
        self.server.listen(16)
        self.url = f'http://127.0.0.1:{self.server.getsockname()[1]}'
        self.held = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self.hold, args=(conn, time.monotonic()), daemon=True).start()

    def hold(self, conn, opened):
        with conn:
            conn.settimeout(30)
            try:
                while conn.recv(65536):
                    pass
            except OSError:
                pass
            self.held.append(time.monotonic() - opened)

    def close(self):
        self.server.close()


def test_a_request_given_up_closes_its_connection_at_once(make_check, dd_run_check, aggregator, instance):
    server = SilentServer()
    try:
        instance.update(huntress_base_url=server.url, request_timeout=2, run_deadline_seconds=20)
        with pytest.raises(Exception):
            dd_run_check(make_check(instance))
        time.sleep(0.5)
    finally:
        server.close()
    assert len(server.held) >= 2, f'the check retries after a timeout: {server.held}'
    for held in server.held:
        assert held < 2.6, f'connections held open past the 2 s timeout: {[round(h, 2) for h in server.held]}'
