"""One collection cycle of the installed check against the bundled simulator, run by scripts/wheel-cycle.sh in a
fresh virtualenv that holds only datadog-checks-base and the wheel under test (installed with --no-deps, as
`datadog-agent integration install -w` does).

Usage: python tests/wheel_cycle.py <repository root> <directory the wheel was installed under>
Prints `cycle ok: <n> events delivered once each` and exits 0, or fails with the reason.
"""

import os
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone

EVENTS = 300


def main(root, install_dir):
    sys.path.insert(0, root)  # for tests.sim only; the check comes from the virtualenv
    import datadog_checks.huntress as package

    location = os.path.normcase(os.path.realpath(package.__file__))
    expected = os.path.normcase(os.path.realpath(install_dir))
    assert location.startswith(expected), f'imported from {location}, not the installed wheel'
    from datadog_checks.base.stubs import aggregator
    from datadog_checks.huntress import HuntressCheck
    from tests.sim import HuntressSimulator, IntakeSink, fixtures

    with HuntressSimulator() as huntress, IntakeSink(api_key='k') as sink:
        end = datetime.now(timezone.utc) - timedelta(seconds=5)
        rows = fixtures.siem_events(EVENTS, end - timedelta(minutes=10), end, seed=1)
        huntress.add_events(rows)
        instance = {
            'huntress_api_key': huntress.credentials[0],
            'huntress_secret_key': huntress.credentials[1],
            'huntress_base_url': huntress.url,
            'logs_intake_url': sink.url,
            'dd_api_key': 'k',
            'collection_delay_seconds': 0,
            'log_queries': [{'name': 'all', 'esql_query': 'FROM logs | KEEP @timestamp, uuid, message'}],
        }
        error = HuntressCheck('huntress', {}, [instance]).run()
        assert error == '', error
        expected = Counter(row['uuid'] for row in rows)
        assert len(expected) == EVENTS, 'the fixture repeats a uuid'
        assert sink.uuids() == expected, f'delivered {sum(sink.uuids().values())} logs, expected each of {EVENTS} once'
        assert aggregator.service_checks('huntress.siem.can_connect')[0].status == 0
    core = sys.modules['datadog_checks.huntress._core']
    print(f'cycle ok: {EVENTS} events delivered once each (core {os.path.basename(core.__file__)})')


if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2])
