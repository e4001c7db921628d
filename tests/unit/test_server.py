"""Server: probes follow their callables, /metrics exposes the registry, stop frees the port,
and connection limits hold against idle, slow and too many clients."""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import requests

from controller.metrics import PREFIX, Metrics
from controller.server import MAX_CONNECTIONS, Server
from tests.wait import eventually

TIMEOUT = 10.0
# A server timeout short enough for quick tests, long enough for a loaded CI machine.
SHORT = 0.5
# Far above any test's run time: within a test, only the client ends these connections.
LONG = 60.0
# Handler threads that gave back their slot but have not quite ended yet.
SLACK = 2


class Flags:
    def __init__(self) -> None:
        self.healthy = True
        self.ready = False


@pytest.fixture
def flags() -> Flags:
    return Flags()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def server(flags: Flags, metrics: Metrics) -> Iterator[Server]:
    with Server(
        "127.0.0.1",
        0,
        metrics=metrics,
        healthy=lambda: flags.healthy,
        ready=lambda: flags.ready,
    ) as s:
        yield s


@pytest.fixture
def serve(flags: Flags, metrics: Metrics) -> Iterator[Callable[..., Server]]:
    """Start servers with chosen limits; all are stopped after the test."""
    started: list[Server] = []

    def start(*, timeout: float, max_connections: int = MAX_CONNECTIONS) -> Server:
        s = Server(
            "127.0.0.1",
            0,
            metrics=metrics,
            healthy=lambda: flags.healthy,
            ready=lambda: flags.ready,
            timeout=timeout,
            max_connections=max_connections,
        ).start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def get(server: Server, path: str, **headers: str) -> requests.Response:
    return requests.get(f"http://127.0.0.1:{server.port}{path}", headers=headers, timeout=TIMEOUT)


def test_start_on_port_zero_picks_a_free_port(server):
    assert server.port != 0


def test_healthz_follows_the_healthy_callable(server, flags):
    r = get(server, "/healthz")
    assert (r.status_code, r.text) == (200, "ok\n")
    flags.healthy = False
    r = get(server, "/healthz")
    assert r.status_code == 500
    assert r.text.startswith("unhealthy")
    flags.healthy = True
    assert get(server, "/healthz").status_code == 200


def test_readyz_is_503_until_ready(server, flags):
    r = get(server, "/readyz")
    assert r.status_code == 503
    assert r.text.startswith("not ready")
    flags.ready = True
    r = get(server, "/readyz")
    assert (r.status_code, r.text) == (200, "ok\n")
    flags.ready = False
    assert get(server, "/readyz").status_code == 503


def test_a_probe_that_raises_fails_with_the_exception_name_only(server, flags):
    class Broken:
        def __bool__(self) -> bool:
            raise RuntimeError("secret detail")

    flags.ready = Broken()
    r = get(server, "/readyz")
    assert r.status_code == 503
    assert "RuntimeError" in r.text
    assert "secret detail" not in r.text


def test_metrics_serves_the_text_format_with_its_content_type(server, metrics):
    metrics.observe_reconcile("ok")
    r = get(server, "/metrics")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=")
    assert f'{PREFIX}reconciles_total{{result="ok"}} 1.0' in r.text.splitlines()


def test_metrics_serves_openmetrics_when_asked(server):
    r = get(server, "/metrics", Accept="application/openmetrics-text; version=1.0.0")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/openmetrics-text")
    assert r.text.endswith("# EOF\n")


def test_metrics_is_500_when_a_bound_callable_fails(server, metrics):
    def broken() -> float:
        raise RuntimeError("queue gone")

    metrics.bind(queue_depth=broken, watch_restarts=lambda: 0)
    assert get(server, "/metrics").status_code == 500


@pytest.mark.parametrize("path", ["/", "/health", "/metricsx", "/healthz/extra"])
def test_other_paths_are_404(server, path):
    assert get(server, path).status_code == 404


def test_query_string_is_ignored(server):
    assert get(server, "/healthz?verbose=1").status_code == 200


def test_requests_are_logged_at_debug_and_not_on_stderr(server, capsys, caplog):
    with caplog.at_level(logging.DEBUG, logger="controller.server"):
        get(server, "/healthz")
        get(server, "/nope")
    assert capsys.readouterr().err == ""
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("GET /healthz" in m for m in logged)


def test_stop_frees_the_port(flags, metrics):
    s = Server("127.0.0.1", 0, metrics=metrics, healthy=lambda: True, ready=lambda: True).start()
    port = s.port
    assert get(s, "/healthz").status_code == 200
    s.stop()
    with pytest.raises(requests.ConnectionError):
        get(s, "/healthz")
    # SO_REUSEADDR skips TIME_WAIT leftovers but still fails while anyone listens.
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()


def test_stop_is_a_no_op_when_not_started(metrics):
    Server("127.0.0.1", 0, metrics=metrics, healthy=lambda: True, ready=lambda: True).stop()


def connect(server: Server) -> socket.socket:
    """A raw connection; its socket timeout bounds every wait on it."""
    return socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)


def read_to_end(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed `sock`; waits up to the socket's timeout for it."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:  # closed with our bytes unread: still closed
        return True


def handler_threads(server: Server) -> int:
    return sum(t.name == f"http-{server.port}-conn" for t in threading.enumerate())


def healthz_answers(server: Server) -> bool:
    try:
        return get(server, "/healthz").status_code == 200
    except requests.ConnectionError:  # turned away while our bytes were in flight
        return False


@pytest.mark.parametrize(("timeout", "max_connections"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_limits_must_be_positive(metrics: Metrics, timeout: float, max_connections: int) -> None:
    with pytest.raises(ValueError):
        Server(
            "127.0.0.1",
            0,
            metrics=metrics,
            healthy=bool,
            ready=bool,
            timeout=timeout,
            max_connections=max_connections,
        )


def test_an_idle_connection_is_closed_after_the_timeout(serve: Callable[..., Server]) -> None:
    server = serve(timeout=SHORT, max_connections=1)
    with connect(server) as sock:
        assert sock.recv(1) == b""
    # Its one slot is free again.
    eventually(lambda: healthz_answers(server), timeout=TIMEOUT, what="/healthz answered")


def test_a_client_sending_headers_byte_by_byte_is_cut_off(serve: Callable[..., Server]) -> None:
    server = serve(timeout=SHORT)
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.0\r\nX-Slow: ")
        # A byte every 50 ms never trips a timeout per read; only the connection's deadline can.
        deadline = time.monotonic() + TIMEOUT
        while not select.select([sock], [], [], 0.05)[0]:
            assert time.monotonic() < deadline, "the server is still reading"
            try:
                sock.send(b"x")
            except OSError:  # closed while we were sending
                break
        assert closed_by_server(sock)


def test_connections_beyond_the_bound_get_503_and_no_thread(
    serve: Callable[..., Server],
) -> None:
    n = 4
    server = serve(timeout=LONG, max_connections=n)
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(connect(server)) for _ in range(n + 50)]

        def answered() -> list[socket.socket]:
            ready: list[socket.socket] = select.select(socks, [], [], 0)[0]
            return ready if len(ready) >= 50 else []

        # Idle clients the server took are never answered within LONG; the others are at once.
        turned_away = eventually(answered, timeout=TIMEOUT, what="50 turned away")
        assert len(turned_away) == 50
        for sock in turned_away:
            reply = read_to_end(sock)
            assert reply.startswith(b"HTTP/1.0 503 ")
            assert reply.endswith(b"\r\n\r\nbusy\n")
        assert handler_threads(server) == n
        for sock in socks:
            sock.close()
    # Clients that leave free their slots.
    eventually(lambda: healthz_answers(server), timeout=TIMEOUT, what="/healthz answered")
    eventually(lambda: handler_threads(server) == 0, timeout=TIMEOUT, what="handler threads ended")


def test_the_timeout_frees_slots_held_by_idle_connections(serve: Callable[..., Server]) -> None:
    n = 4
    server = serve(timeout=SHORT, max_connections=n)
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(connect(server)) for _ in range(n + 50)]

        # Checked at every poll, while the server takes all the connections and later.
        def bounded() -> bool:
            return handler_threads(server) <= n + SLACK

        def all_taken_or_turned_away() -> bool:
            assert bounded()
            return len(select.select(socks, [], [], 0)[0]) >= 50

        def probe_answered() -> bool:
            assert bounded()
            return healthz_answers(server)

        eventually(all_taken_or_turned_away, timeout=TIMEOUT, what="connections handled")
        eventually(probe_answered, timeout=TIMEOUT, what="/healthz answered")
        # Every idle connection was ended by the server: turned away or timed out.
        for sock in socks:
            read_to_end(sock)


def test_keep_alive_does_not_hold_the_connection(serve: Callable[..., Server]) -> None:
    server = serve(timeout=LONG)
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
        reply = read_to_end(sock)
    assert reply.startswith(b"HTTP/1.0 200 ")
    assert reply.endswith(b"\r\n\r\nok\n")


def test_stop_does_not_wait_for_open_connections(serve: Callable[..., Server]) -> None:
    server = serve(timeout=LONG)
    with connect(server) as sock:
        eventually(lambda: handler_threads(server) == 1, timeout=TIMEOUT)
        stopping = threading.Thread(target=server.stop)
        stopping.start()
        stopping.join(TIMEOUT)
        assert not stopping.is_alive()
        sock.close()
