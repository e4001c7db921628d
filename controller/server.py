"""The HTTP endpoints for the kubelet and Prometheus: /healthz, /readyz, /metrics.

Owns a small threaded stdlib server; what "healthy" and "ready" mean is the
caller's, passed in as callables. It serves at most `max_connections` at once, each
for at most `timeout` s: one more gets a 503 and no thread, and the deadline frees
slots, so probes get through again at most `timeout` after a flood of idle clients.
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

from prometheus_client.exposition import choose_encoder

from controller.metrics import Metrics

log = logging.getLogger(__name__)

# How often serve_forever looks for stop(): bounds how long stop() blocks.
POLL_INTERVAL = 0.1

# A probe or a scrape takes milliseconds; only a stuck or hostile client needs more.
TIMEOUT = 10.0
# Above the kubelet's probes plus a few Prometheus replicas; each slot is a thread.
MAX_CONNECTIONS = 32

_BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 5\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b"busy\n"
)


class Server:
    """Serves the three endpoints on `host`:`port` from a background thread.

    `healthy()` and `ready()` are called on every probe, from the server's
    threads; an exception from either counts as False. Port 0 picks a free
    port, readable from `port` after start(). A connection is dropped
    `timeout` seconds after it was accepted, whatever it is doing; at most
    `max_connections` are open at once, and one more is answered 503.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        metrics: Metrics,
        healthy: Callable[[], bool],
        ready: Callable[[], bool],
        timeout: float = TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        self.host = host
        self.port = port
        self.metrics = metrics
        self.healthy = healthy
        self.ready = ready
        self.timeout = timeout
        self.max_connections = max_connections
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"Server(host={self.host!r}, port={self.port})"

    def start(self) -> Server:
        """Bind and serve in a daemon thread; returns self."""
        if self._httpd is not None:
            raise RuntimeError(f"{self!r} already started")
        self._httpd = _HTTPServer((self.host, self.port), self)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            args=(POLL_INTERVAL,),
            name=f"http-{self.port}",
            daemon=True,
        )
        self._thread.start()
        log.info("serving /healthz /readyz /metrics on %s:%d", self.host, self.port)
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; no-op if not started.

        Connections still open end on their own, within `timeout`.
        """
        if self._httpd is None or self._thread is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
        self._httpd = self._thread = None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # The default of 5 drops a burst of connects, and the kubelet's among them, for
    # seconds of SYN retries; turning one away costs the accept loop microseconds.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: Server) -> None:
        self.app = app
        self._slots = threading.BoundedSemaphore(app.max_connections)
        # Only the serve_forever thread reads or writes it.
        self._turning_away = False
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Runs on the serve_forever thread: must not block, so no waiting for a slot.
        if not self._slots.acquire(blocking=False):
            self._turn_away(request, client_address)
            return
        self._turning_away = False
        try:
            threading.Thread(
                target=self.process_request_thread,
                args=(request, client_address),
                name=f"http-{self.server_address[1]}-conn",
                daemon=True,
            ).start()
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _turn_away(self, sock: socket.socket, client_address: Any) -> None:
        if not self._turning_away:
            self._turning_away = True
            log.warning(
                "all %d connections busy: answering 503 until one ends",
                self.app.max_connections,
            )
        log.debug("turned away %s: all connections busy", client_address)
        # One non-blocking try: a client that does not read gets a bare close.
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.send(_BUSY)
        self.shutdown_request(sock)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The default prints a traceback to stderr; a dropped probe is not news.
        log.debug("HTTP request from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer

    # Closes after each response, so keep-alive never holds a slot past its request.
    protocol_version = "HTTP/1.0"

    def setup(self) -> None:
        # Not the base class's: its makefile() objects only know per-call timeouts.
        self.connection = self.request
        deadline = time.monotonic() + self.server.app.timeout
        self.rfile = io.BufferedReader(_DeadlineReader(self.request, deadline))
        self.wfile = _DeadlineWriter(self.request, deadline)

    def do_GET(self) -> None:
        app = self.server.app
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            ok, reason = _ask("healthz", app.healthy)
            self._send(200 if ok else 500, "ok\n" if ok else f"unhealthy{reason}\n")
        elif path == "/readyz":
            ok, reason = _ask("readyz", app.ready)
            self._send(200 if ok else 503, "ok\n" if ok else f"not ready{reason}\n")
        elif path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            try:
                body = encoder(app.metrics.registry)
            except Exception as e:
                log.warning("collecting metrics failed: %s: %s", type(e).__name__, e)
                self._send(500, f"collecting metrics failed: {type(e).__name__}\n")
            else:
                self._send(200, body, content_type)
        else:
            self._send(404, "not found\n")

    def _send(
        self, status: int, body: str | bytes, content_type: str = "text/plain; charset=utf-8"
    ) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def _arm(sock: socket.socket, deadline: float) -> None:
    """Give the socket's next call only the time left until `deadline`.

    A timeout per call alone would let a client that sends a byte now and then
    hold its connection, and its thread, forever.
    """
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("connection deadline passed")
    sock.settimeout(left)


class _DeadlineReader(io.RawIOBase):
    """Reads from a socket until a deadline; closing it leaves the socket to the server."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        _arm(self._sock, self._deadline)
        return self._sock.recv_into(buffer)


class _DeadlineWriter(io.BufferedIOBase):
    """Writes to a socket until a deadline; unbuffered, as the base handler expects."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def writable(self) -> bool:
        return True

    def write(self, buffer: ReadableBuffer) -> int:
        _arm(self._sock, self._deadline)
        self._sock.sendall(buffer)
        return memoryview(buffer).nbytes


def _ask(probe: str, check: Callable[[], bool]) -> tuple[bool, str]:
    """Call a probe's callable: (answer, ": ExceptionName" if it raised, else "").

    The message stays in the log: a probe's body is readable by anyone who can
    reach the port.
    """
    try:
        return bool(check()), ""
    except Exception as e:
        log.warning("%s check failed: %s: %s", probe, type(e).__name__, e)
        return False, f": {type(e).__name__}"
