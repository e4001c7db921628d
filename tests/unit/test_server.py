"""Server: probes follow their callables, /metrics exposes the registry, stop frees the port."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import pytest
import requests

from controller.metrics import PREFIX, Metrics
from controller.server import Server

TIMEOUT = 10.0


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
