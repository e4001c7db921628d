"""The HTTP endpoints for the kubelet and Prometheus: /healthz, /readyz, /metrics.

Owns a small threaded stdlib server; what "healthy" and "ready" mean is the
caller's, passed in as callables.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from prometheus_client.exposition import choose_encoder

from controller.metrics import Metrics

log = logging.getLogger(__name__)

# How often serve_forever looks for stop(): bounds how long stop() blocks.
POLL_INTERVAL = 0.1


class Server:
    """Serves the three endpoints on `host`:`port` from a background thread.

    `healthy()` and `ready()` are called on every probe, from the server's
    threads; an exception from either counts as False. Port 0 picks a free
    port, readable from `port` after start().
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        metrics: Metrics,
        healthy: Callable[[], bool],
        ready: Callable[[], bool],
    ) -> None:
        self.host = host
        self.port = port
        self.metrics = metrics
        self.healthy = healthy
        self.ready = ready
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
        """Stop serving and close the socket; no-op if not started."""
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

    def __init__(self, address: tuple[str, int], app: Server) -> None:
        self.app = app
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The default prints a traceback to stderr; a dropped probe is not news.
        log.debug("HTTP request from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer

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
