"""The release wheel, installed as `datadog-agent integration install -w` does
(`pip install --no-deps` next to datadog-checks-base), imports and runs one cycle."""

import glob
import os
import subprocess
import sys
import textwrap
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_REQUIREMENT = 'datadog-checks-base[deps]==38.5.0'


@pytest.fixture(scope='module')
def wheel():
    wheels = glob.glob(os.path.join(ROOT, 'dist', 'datadog_huntress-*.whl'))
    if not wheels:
        subprocess.run([os.path.join(ROOT, 'scripts', 'build-wheel.sh')], check=True, cwd=ROOT)
        wheels = glob.glob(os.path.join(ROOT, 'dist', 'datadog_huntress-*.whl'))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_is_abi3_manylinux2014_without_namespace_file(wheel):
    name = os.path.basename(wheel)
    assert '-cp39-abi3-' in name and 'manylinux2014_x86_64' in name
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith('.dist-info/METADATA'))).decode()
    assert 'datadog_checks/__init__.py' not in names
    assert 'datadog_checks/huntress/data/conf.yaml.example' in names
    assert any(n.startswith('datadog_checks/huntress/_core') and n.endswith('.so') for n in names)
    assert any(line.startswith('Requires-Dist: datadog-checks-base') for line in metadata.splitlines())


def test_installed_wheel_runs_a_cycle(wheel, tmp_path):
    venv = tmp_path / 'agent-python'
    subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
    python = str(venv / 'bin' / 'python')
    subprocess.run([python, '-m', 'pip', 'install', '-q', BASE_REQUIREMENT], check=True)
    subprocess.run([python, '-m', 'pip', 'install', '-q', '--no-deps', wheel], check=True)
    script = textwrap.dedent(
        """
        import sys
        from datetime import datetime, timedelta, timezone
        sys.path.insert(0, sys.argv[1])  # the repository root, for tests.sim only
        import datadog_checks.huntress as package
        assert '/agent-python/' in package.__file__, package.__file__
        from datadog_checks.base.stubs import aggregator
        from datadog_checks.huntress import HuntressCheck
        from tests.sim import HuntressSimulator, IntakeSink, fixtures

        with HuntressSimulator() as huntress, IntakeSink(api_key='k') as sink:
            end = datetime.now(timezone.utc) - timedelta(seconds=5)
            huntress.add_events(fixtures.siem_events(300, end - timedelta(minutes=10), end, seed=1))
            instance = {
                'huntress_api_key': huntress.credentials[0], 'huntress_secret_key': huntress.credentials[1],
                'huntress_base_url': huntress.url, 'logs_intake_url': sink.url, 'dd_api_key': 'k',
                'collection_delay_seconds': 0,
                'log_queries': [{'name': 'all', 'esql_query': 'FROM logs | KEEP @timestamp, uuid, message'}],
            }
            error = HuntressCheck('huntress', {}, [instance]).run()
            assert error == '', error
            assert len(sink.uuids()) == 300, len(sink.uuids())
            assert aggregator.service_checks('huntress.siem.can_connect')[0].status == 0
        print('cycle ok')
        """
    )
    result = subprocess.run([python, '-c', script, ROOT], capture_output=True, text=True, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'cycle ok' in result.stdout
