"""Shared plumbing for the local test servers: a threaded HTTP/1.1 server that
runs in a daemon thread, a FIFO fault queue, and raw-socket helpers used to
simulate broken transports (connection reset, truncated body).

Only the Python standard library is used.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import socket
import struct
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Largest request body either server will read (bytes). Bigger bodies get 413
# without being read, and the connection is closed.
MAX_READ_BYTES = 64 * 1024 * 1024

# Declared Content-Length of a `huge_body` answer (1.5 GB); the bytes are
# generated while they are sent, never held.
HUGE_BODY_BYTES = 1_500_000_000

# Faults whose optional argument is the answer's status code.
STATUS_ARG_FAULTS = ("echo_headers", "huge_body", "endless_body")


class BodyTooLarge(Exception):
    pass


def parse_fault(kind: str):
    """Validate a fault kind and split it into (name, argument)."""
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"invalid fault kind: {kind!r}")
    name, _, arg = kind.partition(":")
    return name, arg


def validate_fault(kind: str, known):
    """Raise ValueError unless `kind` is one of `known` with a valid argument."""
    name, arg = parse_fault(kind)
    if name not in known:
        raise ValueError(f"unknown fault kind {kind!r}; known: {known}")
    if name == "status":
        if not 100 <= int(arg) <= 599:
            raise ValueError(f"bad status code in {kind!r}")
    elif name == "slow":
        if float(arg) < 0:
            raise ValueError(f"bad delay in {kind!r}")
    elif name == "redirect":
        if not arg:
            raise ValueError("redirect needs a target, e.g. 'redirect:http://127.0.0.1:1/x'")
    elif name in STATUS_ARG_FAULTS:
        if arg and not 100 <= int(arg) <= 599:
            raise ValueError(f"bad status code in {kind!r}")
    elif name == "rate_headers":
        if "," not in arg:
            raise ValueError("rate_headers needs '<limit>,<remaining>' (any text), e.g. 'rate_headers:abc,-5'")
    elif arg:
        raise ValueError(f"fault {name!r} takes no argument")


class FaultQueue:
    """FIFO of injected faults. Each entry is [kind, path_pattern, remaining]."""

    def __init__(self, validator):
        self._lock = threading.Lock()
        self._q = deque()
        self._validator = validator

    def add(self, kind: str, count: int = 1, path: str | None = None):
        if count < 1:
            raise ValueError("count must be >= 1")
        self._validator(kind)
        with self._lock:
            self._q.append([kind, path, int(count)])

    def take(self, path: str):
        """Consume one fault matching `path` (first queued wins), or None."""
        with self._lock:
            for entry in self._q:
                pattern = entry[1]
                if pattern is None or pattern == path or fnmatch.fnmatchcase(path, pattern):
                    entry[2] -= 1
                    if entry[2] <= 0:
                        self._q.remove(entry)
                    return entry[0]
        return None

    def pending(self):
        with self._lock:
            return [(k, p, n) for k, p, n in self._q]

    def clear(self):
        with self._lock:
            self._q.clear()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr, handler_cls, owner):
        self.owner = owner
        super().__init__(addr, handler_cls)

    def handle_error(self, request, client_address):
        # Clients hanging up (timeouts, resets) are part of the tests: stay quiet.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout)):
            return
        if isinstance(exc, OSError) and getattr(self.owner, "_stopping", None) is not None \
                and self.owner._stopping.is_set():
            return
        super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    """Delegates every request to ``self.server.owner._handle(self)``."""

    protocol_version = "HTTP/1.1"
    server_version = "sim/1.0"
    sys_version = ""
    # Idle keep-alive connections are dropped after this many seconds.
    timeout = 60

    # -- plumbing ---------------------------------------------------------
    def setup(self):
        super().setup()
        self.server.owner._track(self.connection, add=True)
        self._responded = False

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.owner._track(self.connection, add=False)

    def version_string(self):
        return self.server_version

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        if getattr(self.server.owner, "verbose", False):
            super().log_message(format, *args)

    def _dispatch(self):
        owner = self.server.owner
        try:
            owner._handle(self)
        except BodyTooLarge:
            self.send_bytes(413, b'{"error": "request body too large"}', close=True)
        except (ConnectionError, BrokenPipeError, socket.timeout):
            self.close_connection = True
        except Exception as exc:  # pragma: no cover - debugging aid
            if not self._responded:
                body = json.dumps({"error": f"simulator bug: {type(exc).__name__}: {exc}"}).encode()
                try:
                    self.send_bytes(500, body)
                except OSError:
                    pass
            self.close_connection = True
            raise

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch

    # -- request body -----------------------------------------------------
    def read_body(self) -> bytes:
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if not length:
            return b""
        try:
            n = int(length)
        except ValueError:
            n = 0
        if n > MAX_READ_BYTES:
            raise BodyTooLarge()
        return self.rfile.read(n) if n > 0 else b""

    def _read_chunked(self) -> bytes:
        out = bytearray()
        while True:
            line = self.rfile.readline(65537)
            if not line:
                break
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                # trailers until blank line
                while True:
                    t = self.rfile.readline(65537)
                    if not t or t in (b"\r\n", b"\n"):
                        break
                break
            out += self.rfile.read(size)
            self.rfile.readline(3)
            if len(out) > MAX_READ_BYTES:
                raise BodyTooLarge()
        return bytes(out)

    # -- responses --------------------------------------------------------
    def send_bytes(self, status: int, body: bytes, headers=None,
                   content_type: str = "application/json", close: bool = False,
                   declared_length: int | None = None):
        self._responded = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(body) if declared_length is None else declared_length))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def send_json(self, status: int, obj, headers=None, close: bool = False):
        self.send_bytes(status, json.dumps(obj).encode("utf-8"), headers=headers, close=close)

    def send_truncated(self, status: int, body: bytes, headers=None, missing: int = 4096):
        """Declare more bytes than are sent, send part of the body, then close."""
        partial = body[: max(1, len(body) // 2)]
        self.send_bytes(status, partial, headers=headers, close=True,
                        declared_length=len(body) + missing)
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def send_stream(self, status: int, headers=None, declared_length: int | None = None):
        """Answer with filler bytes generated as they are sent, until the client
        hangs up, the server stops, or `declared_length` bytes went out. Without
        `declared_length` the body is chunked and endless."""
        self._responded = True
        self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        if declared_length is None:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(declared_length))
        self.send_header("Connection", "close")
        self.end_headers()
        block = b'{"filler": "' + b"x" * (64 * 1024 - 16) + b'"},'
        frame = block if declared_length is not None else b"%x\r\n%s\r\n" % (len(block), block)
        stopping = self.server.owner._stopping
        sent = 0
        try:
            while not stopping.is_set() and (declared_length is None or sent + len(block) <= declared_length):
                self.wfile.write(frame)
                sent += len(block)
        except OSError:
            pass

    def hang(self):
        """Read the request, then never answer (until the server stops)."""
        self._responded = True
        self.close_connection = True
        self.server.owner._stopping.wait()

    def echo_headers_body(self, status: int) -> bytes:
        """An error body that quotes the request's headers, in the forms a broken
        upstream or proxy might: a JSON object, raw header lines, the bare
        Authorization value, and its decoded Basic credentials."""
        auth = self.headers.get("Authorization") or ""
        decoded = ""
        if auth.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(auth[6:].strip()).decode("utf-8", "replace")
            except ValueError:
                decoded = ""
        raw_lines = "\r\n".join(f"{k}: {v}" for k, v in self.headers.items())
        return json.dumps({
            "status": status,
            "token": auth.partition(" ")[2],
            "credentials": decoded,
            "dd": self.headers.get("DD-API-KEY") or "",
            "headers": dict(self.headers.items()),
            "raw": raw_lines,
        }).encode("utf-8")

    def reset_connection(self):
        """Close the socket without answering; SO_LINGER 0 makes it an RST."""
        self._responded = True
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        try:
            self.connection.close()
        except OSError:
            pass


class ServerBase:
    """start()/stop()/url/context-manager for a simulator owning a _Server."""

    _path_suffix = ""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._host = host
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._conns: set = set()
        self._conns_lock = threading.Lock()
        self._stopping = threading.Event()
        self.verbose = False

    # connection tracking so stop() also cuts idle keep-alive connections
    def _track(self, conn, add: bool):
        with self._conns_lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def start(self):
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server((self._host, self._port), Handler, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        srv = self._server
        if srv is None:
            return
        self._stopping.set()
        srv.shutdown()
        srv.server_close()
        with self._conns_lock:
            conns = list(self._conns)
            self._conns.clear()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("server not started")
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def url(self) -> str:
        return self.base_url + self._path_suffix

    def _sleep(self, seconds: float):
        """Sleep for a 'slow' fault; returns early when the server stops."""
        self._stopping.wait(max(0.0, seconds))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


class Headers(dict):
    """A dict of header name -> value whose lookups ignore case."""

    def __init__(self, items=()):
        super().__init__(items)
        self._lower = {k.lower(): k for k in self}

    def _key(self, k):
        return self._lower.get(k.lower(), k) if isinstance(k, str) else k

    def __getitem__(self, k):
        return super().__getitem__(self._key(k))

    def __contains__(self, k):
        return isinstance(k, str) and k.lower() in self._lower

    def get(self, k, default=None):
        return super().get(self._key(k), default)


def monotonic() -> float:
    return time.monotonic()
