"""scripts/demo.py, run as a user runs it: every feed on, and a user's conf.yaml on demo data."""

import os
import re
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, 'scripts', 'demo.py')


def run_demo(*args):
    done = subprocess.run(
        [sys.executable, DEMO, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    return done.returncode, done.stdout


def feed_rows(output):
    """{feed: (loaded, delivered)} from the summary's table."""
    table = output.split('=== Summary: delivered to the intake sink ===')[1].split('===')[0]
    rows = {}
    for line in table.splitlines()[2:]:
        match = re.match(r'\s+(\S+(?: \S+)?)\s+(\d+)\s+(\d+|off)\s', line)
        if match:
            rows[match.group(1)] = (int(match.group(2)), match.group(3))
    return rows


def section(output, title):
    return output.split(f'=== {title} ===\n')[1].split('\n\n')[0]


def test_demo_delivers_every_feed_and_ends_with_a_summary():
    code, out = run_demo('--events', '400', '--runs', '2')
    assert code == 0, out
    rows = feed_rows(out)
    assert rows == {
        'SIEM logs': (400, '400'),
        'incident reports': (30, '30'),
        'escalations': (12, '12'),
        'signals': (20, '20'),
        'agents': (60, '60'),
        'organizations': (25, '25'),
    }
    assert '400 logs, 0 duplicates, 400 with organization tags' in out
    assert 'service:huntress-incidents, 30 Datadog events' in out
    checks = section(out, 'Summary: service checks (last run)').splitlines()
    assert len(checks) == 4  # the REST API and the three queries
    assert all(' OK ' in line for line in checks)
    steps = section(out, 'Next steps')
    for word in ('integration install', 'conf.d/', '--config', 'datadog-agent status', 'datadog-agent check huntress'):
        assert word in steps


def test_demo_runs_a_users_instance_with_its_keys_and_urls_replaced(tmp_path):
    conf = {
        'init_config': {},
        'instances': [
            {
                'huntress_api_key': 'users-real-public-key',
                'huntress_secret_key': 'users-real-secret-key-1234',
                'huntress_base_url': 'https://api.huntress.io',
                'dd_api_key': 'users-real-dd-key-5678',
                'tls_ca_cert': '/nonexistent/ca.pem',
                'tags': ['team:soc'],
                'signals': {'enabled': True},
                'log_queries': [
                    {'name': 'sentinelone', 'esql_query': 'FROM logs | WHERE event.provider == "Syslog-SentinelOne" | KEEP *'}
                ],
            }
        ],
    }
    path = tmp_path / 'conf.yaml'
    path.write_text(yaml.safe_dump(conf))
    code, out = run_demo('--config', str(path), '--events', '300', '--runs', '1')
    assert code == 0, out
    assert 'replaced: huntress_api_key, huntress_secret_key, huntress_base_url, dd_api_key' in out
    assert 'dropped: tls_ca_cert' in out
    for secret in ('users-real-public-key', 'users-real-secret-key-1234', 'users-real-dd-key-5678'):
        assert secret not in out
    rows = feed_rows(out)
    # Only the SentinelOne rows match the user's query; the feeds the instance leaves off say so.
    assert 0 < int(rows['SIEM logs'][1]) < 300
    assert rows['signals'] == (20, '20')
    assert rows['incident reports'][1] == rows['escalations'][1] == rows['agents'][1] == 'off'
    assert 'off in this instance: incidents.enabled, escalations.enabled, metrics.agents.enabled' in out
    assert 'team:soc,query_name:sentinelone' in section(out, 'Summary: service checks (last run)')


def test_demo_reports_a_broken_user_instance_as_the_agent_would(tmp_path):
    path = tmp_path / 'conf.yaml'
    path.write_text(yaml.safe_dump({'instances': [{'tags': 'env:prod', 'log_queries': [{'name': 'q', 'esql_query': 'FROM logs'}]}]}))
    code, out = run_demo('--config', str(path), '--events', '10')
    assert code == 2
    assert 'configuration error in `tags`: Input should be a list' in out
