"""One collector per Huntress account at a time, across the processes of a node.

The check keeps its checkpoints in the Agent's persistent cache, which is a
directory of files under the Agent's `run_path`. A second process on the same
files (`datadog-agent check huntress` beside the running Agent, or two Agents
sharing one `run_path`) that runs while the first is collecting reads a
checkpoint the first has not written yet, and sends the same range again.

The run lease is an operating-system lock on a file next to those cache files:
`<run_path>/<check name>/<cache id>.lock`, where `<cache id>` is the same stable
identity the cache keys use (the Huntress base URL and a hash of the API key).
The Agent strips dots from the names of its cache files, so no cache entry can
ever have this name.

* POSIX: `fcntl.flock` on the whole file. Windows: `msvcrt.locking` on one byte
  far past the end of the file, so the holder's description stays readable.
* The lock belongs to the open file: when the holder exits or crashes, the
  operating system releases it. No expiry, clock or renewal is involved, and a
  stopped holder cannot lose the lease while it is still writing.
* The file is never deleted (deleting a locked file lets a third process lock a
  new file of the same name while the old one is held). While held it names
  the holder: pid, host, check id and since when.
* The lease is taken per process: instances of one Agent that share an account
  run side by side as before; another process does not wait, its run is
  skipped and reported.
* Taking the lock and writing the description are two steps, as are clearing
  it and letting go, so a contender can find the lock held by a file that
  names no one. It then polls for a short while: the holder either names
  itself or lets go, and in the second case the contender takes the lease.
* When the lock file cannot be created or locked at all (a read-only
  directory, a file system without locks), the run goes ahead unprotected and
  the reason is returned, rather than stopping collection.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
import threading
import time
from datetime import datetime, timezone

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt
else:
    msvcrt = None

# The Agent's rule for the names under run_path (pkg/util/persistentcache).
_INVALID_NAME_CHARS = re.compile(r'[^a-zA-Z0-9_-]')
# Windows: the locked byte. LockFile may lock past the end of a file without growing it.
_WINDOWS_LOCK_OFFSET = 1 << 30
# How long a contender waits for a holder that has the lock but has not written its description yet.
_DESCRIPTION_WAIT_SECONDS = 0.5
_DESCRIPTION_POLL_SECONDS = 0.02


def fallback_run_path() -> str:
    """Where lease files go when the Agent gives no `run_path` (outside the Agent, as in its test stub,
    whose persistent cache is in memory): a directory of the system's temporary directory."""
    return os.path.join(tempfile.gettempdir(), 'datadog-huntress-run')


def lease_path(run_path: str | None, check_name: str, cache_id: str) -> str:
    """The lease file of one account: beside the Agent's cache files of this check, `<run_path>/<check>/`."""
    directory = _INVALID_NAME_CHARS.sub('', check_name or '') or 'huntress'
    name = _INVALID_NAME_CHARS.sub('', cache_id or '') or 'default'
    return os.path.join(run_path or fallback_run_path(), directory, name + '.lock')


class Outcome:
    """What `RunLease.acquire` found. `held` is true when this run may collect; `holder` describes the other
    process when it may not; `unprotected` says why a run goes ahead without the lock."""

    def __init__(self, held: bool, holder: dict | None = None, unprotected: str | None = None):
        self.held = held
        self.holder = holder or {}
        self.unprotected = unprotected

    def describe_holder(self) -> str:
        parts = []
        if self.holder.get('pid'):
            parts.append(f"pid {self.holder['pid']}")
        if self.holder.get('host'):
            parts.append(f"on {self.holder['host']}")
        if self.holder.get('check_id'):
            parts.append(f"(check {self.holder['check_id']})")
        if self.holder.get('since'):
            parts.append(f"since {self.holder['since']}")
        return ' '.join(parts) if parts else 'a process that did not say which'


class _Held:
    """The lock of one lease file in this process, shared by the instances of this process that use it."""

    def __init__(self, fd: int):
        self.fd = fd
        self.users = 1


# lease path -> _Held, for the instances of this process (guarded by _guard).
_guard = threading.Lock()
_held: dict[str, _Held] = {}


class RunLease:
    """The lease of one account's collection for this process: `acquire`, then `release` once it was held.

    The lease excludes other processes, not other instances of this one: the Agent never runs one instance
    twice at once, and instances of one Agent that share an account (one per client, or queries split over
    instances) keep running side by side, as they do without the lease, sharing one rate budget."""

    def __init__(self, path: str, check_id: str = ''):
        self.path = path
        self.check_id = check_id
        self._joined = False

    def acquire(self) -> Outcome:
        with _guard:
            held = _held.get(self.path)
            if held is not None:
                held.users += 1
                self._joined = True
                return Outcome(True)
            try:
                fd = self._open()
            except OSError as e:
                return Outcome(True, unprotected=f'cannot open the run lease {self.path} ({e.strerror or e})')
            try:
                holder = self._lock_or_find_holder(fd)
            except OSError as e:
                os.close(fd)
                return Outcome(True, unprotected=f'cannot lock the run lease {self.path} ({e.strerror or e})')
            if holder is not None:
                os.close(fd)
                return Outcome(False, holder=holder)
            _held[self.path] = _Held(fd)
            self._joined = True
            self._write_holder(fd)
            return Outcome(True)

    def release(self) -> None:
        with _guard:
            if not self._joined:
                return
            self._joined = False
            held = _held[self.path]
            held.users -= 1
            if held.users:
                return
            del _held[self.path]
            try:
                os.ftruncate(held.fd, 0)
            except OSError:
                pass
            try:
                _unlock(held.fd)
            except OSError:
                pass  # closing the file releases the lock anyway
            finally:
                os.close(held.fd)

    def _lock_or_find_holder(self, fd: int) -> dict | None:
        """Locks `fd` and returns None, or returns the description of the process that holds the lock.

        A holder caught between taking the lock and naming itself, or between clearing its name and letting
        go, is polled for until it does either; one that never names itself (a read-only lease file) is
        returned undescribed once the wait is over."""
        deadline = time.monotonic() + _DESCRIPTION_WAIT_SECONDS
        while True:
            try:
                _lock(fd)
                return None
            except OSError as e:
                if not _is_contention(e):
                    raise
            holder = self._read_holder()
            if holder.get('pid') or time.monotonic() >= deadline:
                return holder
            time.sleep(_DESCRIPTION_POLL_SECONDS)

    def _open(self) -> int:
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        flags = getattr(os, 'O_BINARY', 0) | getattr(os, 'O_CLOEXEC', 0)
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | flags, 0o644)
        except PermissionError:
            # A lease file created by another user (a manual run as root): flock works on a
            # read-only descriptor, only the holder's description is not written.
            return os.open(self.path, os.O_RDONLY | flags)

    def _write_holder(self, fd: int) -> None:
        holder = {
            'pid': os.getpid(),
            'host': socket.gethostname(),
            'check_id': self.check_id,
            'since': datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'),
        }
        description = json.dumps(holder).encode()
        try:
            # Written before the old length is cut, so the file is never empty in between.
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, description)
            os.ftruncate(fd, len(description))
        except OSError:
            pass  # read-only descriptor: the lock holds all the same

    def _read_holder(self) -> dict:
        try:
            with open(self.path, 'rb') as f:
                holder = json.loads(f.read(4096).decode() or '{}')
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}


def _lock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    else:
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)


def _unlock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    else:
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def _is_contention(error: OSError) -> bool:
    """The lock is held by someone else (as opposed to locks not working here)."""
    import errno

    if isinstance(error, BlockingIOError):
        return True
    # msvcrt.locking raises EACCES (or EDEADLOCK) for a region locked by another handle.
    return error.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES, getattr(errno, 'EDEADLOCK', -1))
