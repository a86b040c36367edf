"""The run lease: one process collects an account at a time on one persistent cache."""

import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from datadog_checks.base import AgentCheck
from datadog_checks.huntress.lease import RunLease, lease_path

from . import overlap
from .conftest import recent_events

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(sys.platform == 'win32', reason='the helpers hold the lock with fcntl')

HOLDER = """
import sys, time
sys.path.insert(0, {root!r})
from datadog_checks.huntress.lease import RunLease
lease = RunLease({path!r}, check_id='huntress:manual')
outcome = lease.acquire()
print('held' if outcome.held and not outcome.unprotected else 'not held', flush=True)
time.sleep(600)
"""


@pytest.fixture
def other_process():
    """Starts a process that takes the lease at `path` and keeps it until it is killed."""
    started = []

    def start(path):
        process = subprocess.Popen(
            [sys.executable, '-c', HOLDER.format(root=os.path.join(ROOT, 'python'), path=str(path))],
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        assert process.stdout.readline().strip() == 'held'
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()


def test_lease_file_sits_beside_the_agent_cache_files_of_the_account(tmp_path):
    path = lease_path(str(tmp_path), 'huntress', '0a1b2c3d4e5f')
    assert path == os.path.join(str(tmp_path), 'huntress', '0a1b2c3d4e5f.lock')
    # Unset run_path (the test stub): a directory of the temporary directory, never the working directory.
    assert os.path.isabs(lease_path('', 'huntress', 'abc'))


def test_a_second_holder_in_another_process_is_refused_and_told_who_holds_it(tmp_path, other_process):
    path = tmp_path / 'huntress' / 'acct.lock'
    holder = other_process(path)

    outcome = RunLease(str(path)).acquire()
    assert not outcome.held
    assert outcome.holder['pid'] == holder.pid
    assert outcome.holder['check_id'] == 'huntress:manual'
    assert f'pid {holder.pid}' in outcome.describe_holder()


def test_a_holder_that_dies_leaves_the_lease_free(tmp_path, other_process):
    path = tmp_path / 'huntress' / 'acct.lock'
    holder = other_process(path)
    holder.send_signal(signal.SIGKILL)  # no cleanup of any kind
    holder.wait()

    lease = RunLease(str(path))
    outcome = lease.acquire()
    assert outcome.held and not outcome.unprotected
    lease.release()


def _lock_by_hand(path):
    """Takes the lock of `path` the way a holder does, on a file of its own, and names no one yet."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o644)
    os.ftruncate(fd, 0)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def test_a_holder_caught_before_it_names_itself_is_still_named(tmp_path):
    path = tmp_path / 'huntress' / 'acct.lock'
    fd = _lock_by_hand(path)
    named = threading.Timer(0.1, lambda: os.write(fd, json.dumps({'pid': 4242, 'host': 'other'}).encode()))
    named.start()
    try:
        outcome = RunLease(str(path)).acquire()
    finally:
        named.join()
        os.close(fd)
    assert not outcome.held
    assert outcome.describe_holder().startswith('pid 4242 on other')


def test_a_holder_caught_while_it_lets_go_leaves_the_lease_to_the_contender(tmp_path):
    path = tmp_path / 'huntress' / 'acct.lock'
    fd = _lock_by_hand(path)
    let_go = threading.Timer(0.1, os.close, args=(fd,))
    let_go.start()
    lease = RunLease(str(path), check_id='huntress:agent')
    try:
        outcome = lease.acquire()
    finally:
        let_go.join()
    assert outcome.held and not outcome.unprotected
    with open(path) as f:
        assert json.load(f)['pid'] == os.getpid()
    lease.release()


def test_a_holder_that_never_names_itself_is_reported_undescribed(tmp_path):
    path = tmp_path / 'huntress' / 'acct.lock'
    fd = _lock_by_hand(path)
    try:
        outcome = RunLease(str(path)).acquire()
    finally:
        os.close(fd)
    assert not outcome.held
    assert outcome.describe_holder() == 'a process that did not say which'


def test_instances_of_one_process_share_the_lease_and_keep_it_from_other_processes(tmp_path):
    """The Agent runs instances of one account side by side (one per client, or queries split over instances):
    they share the lease; another process is refused until the last of them is done."""
    path = str(tmp_path / 'huntress' / 'acct.lock')
    first, second = RunLease(path), RunLease(path)
    assert first.acquire().held and second.acquire().held

    def other_process_gets_it():
        probe = f"""
import sys
sys.path.insert(0, {os.path.join(ROOT, 'python')!r})
from datadog_checks.huntress.lease import RunLease
outcome = RunLease({path!r}).acquire()
print(outcome.held, outcome.holder.get('pid'))
"""
        out = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True, check=True).stdout.split()
        return out[0] == 'True', out[1]

    first.release()
    assert other_process_gets_it() == (False, str(os.getpid()))
    second.release()
    assert other_process_gets_it() == (True, 'None')


def test_without_a_usable_directory_the_run_goes_ahead_and_says_why(tmp_path):
    blocker = tmp_path / 'not-a-directory'
    blocker.write_text('')
    outcome = RunLease(str(blocker / 'huntress' / 'acct.lock')).acquire()
    assert outcome.held
    assert 'cannot open the run lease' in outcome.unprotected


def test_check_skips_its_run_while_another_process_collects(
    make_check, dd_run_check, aggregator, datadog_agent, huntress, sink, instance, tmp_path, other_process, caplog
):
    datadog_agent._config['run_path'] = str(tmp_path)
    huntress.add_events(recent_events(20, seed=31))
    check = make_check(instance)
    holder = other_process(lease_path(str(tmp_path), 'huntress', check.persistent_cache_id()))

    dd_run_check(check)  # no error: the run is skipped, not failed
    assert huntress.stats['total'] == 0 and sink.logs == []
    aggregator.assert_service_check(
        'huntress.siem.can_connect', AgentCheck.WARNING, tags=['team:secops', 'query_name:all'], count=1
    )
    (message,) = [sc.message for sc in aggregator.service_checks('huntress.siem.can_connect')]
    assert 'skipped this run' in message and f'pid {holder.pid}' in message
    assert any(r.levelname == 'WARNING' and f'pid {holder.pid}' in r.getMessage() for r in caplog.records)

    holder.kill()
    holder.wait()
    aggregator.reset()
    dd_run_check(check)
    assert len(sink.uuids()) == 20
    aggregator.assert_service_check('huntress.siem.can_connect', AgentCheck.OK)


def test_lease_is_released_when_the_run_fails(make_check, dd_run_check, datadog_agent, huntress, sink, instance, tmp_path):
    datadog_agent._config['run_path'] = str(tmp_path)
    huntress.add_events(recent_events(20, seed=32))
    check = make_check(instance)
    sink.inject('status:503', count=50)
    with pytest.raises(Exception, match='intake'):
        dd_run_check(check)

    lease = RunLease(lease_path(str(tmp_path), 'huntress', check.persistent_cache_id()))
    assert lease.acquire().held
    lease.release()


def test_overlapping_processes_on_one_disk_cache_send_every_event_once(tmp_path):
    """An Agent-like process on an interval and manual runs started during and between its runs, against a
    live stream of events with slow pages. Without the lease (`python -m tests.overlap --no-lease`) the
    manual runs started during a run send its range again."""
    result = overlap.run_scenario(lease=True, rounds=4, workdir=str(tmp_path))
    summary = overlap.summarize(result)

    assert summary['errors'] == []
    assert summary['lost'] == 0
    assert summary['duplicated'] == 0
    assert summary['events'] > 300  # the backlog and the live stream
    # The overlaps happened: some runs found the lease held, and said by whom (never themselves).
    skipped = [r for r in result['agent'] + result['manual'] if r['skipped']]
    assert skipped
    for run in skipped:
        assert 'pid ' in run['skipped'] and f"pid {run['pid']} " not in run['skipped']
    # And the manual runs did collect when the Agent was between runs.
    assert any(r['forwarded'] > 0 for r in result['manual'])
