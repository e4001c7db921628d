"""A real Prometheus scrapes the running controller (``python -m controller``, as a pod
runs it) and evaluates the chart's alert rules: when Compute answers 403 the permission
alert goes pending in Prometheus's own API, and every expression of the chart's Grafana
dashboard evaluates without error.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from controller.metrics import Metrics
from tests.ground.controlplane import die_with_parent, free_port, stop_process
from tests.integration.world import World
from tests.wait import eventually

# `python -m controller` sends no token to a loopback endpoint: the fake must not ask for one.
pytestmark = [pytest.mark.apiserver, pytest.mark.anonymous_compute]

CHART = Path(__file__).resolve().parents[2] / "charts" / "gke-ingress-timeout"
RULES = CHART / "files" / "alerts.yaml"
DASHBOARD = CHART / "files" / "dashboard.json"
PERMISSION = "GkeIngressTimeoutComputePermissionDenied"


class Prometheus:
    """A prometheus server on loopback, scraping one target each second."""

    def __init__(self, binary: Path, target: str, folder: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": "gke-ingress-timeout", "static_configs": [{"targets": [target]}]}
            ],
        }
        (folder / "prometheus.yml").write_text(json.dumps(config))
        self.log = folder / "prometheus.log"
        self.proc = subprocess.Popen(
            [
                str(binary),
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"),
            preexec_fn=die_with_parent,
        )

    def get(self, path: str, **params: str) -> Any:
        r = requests.get(self.url + path, params=params, timeout=10)
        r.raise_for_status()
        return r.json()

    def ready(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()[-2000:]
        try:
            return requests.get(self.url + "/-/ready", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    def query(self, expr: str) -> dict[str, Any]:
        """The full answer of an instant query (status, data or error)."""
        r = requests.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        return dict(r.json())

    def alerts(self) -> dict[str, str]:
        """alertname -> state (pending or firing) of the active alerts."""
        return {
            a["labels"]["alertname"]: a["state"]
            for a in self.get("/api/v1/alerts")["data"]["alerts"]
        }


@pytest.fixture
def prometheus(
    world: World, operator_tools: dict[str, Path], tmp_path: Path
) -> Iterator[Prometheus]:
    """The controller serving /metrics on loopback, and a Prometheus scraping it."""
    port = free_port()
    argv = [
        sys.executable, "-m", "controller",
        f"--kubeconfig={world.plane.kubeconfig}", "--project=demo-project",
        f"--compute-endpoint={world.fake.url}", f"--namespaces={world.ns}",
        f"--state-namespace={world.ns}", f"--listen=127.0.0.1:{port}",
    ]  # fmt: skip
    with (tmp_path / "controller.log").open("w") as log:
        controller = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    prom = Prometheus(operator_tools["prometheus"], f"127.0.0.1:{port}", tmp_path)
    try:
        eventually(prom.ready, timeout=60, what="prometheus ready")
        eventually(lambda: prom.query("up == 1")["data"]["result"], timeout=60, what="scraped")
        yield prom
    finally:
        stop_process(prom.proc)
        stop_process(controller)


def test_compute_answering_403_makes_the_permission_alert_pending(
    world: World, prometheus: Prometheus
) -> None:
    web = world.backend("web")
    world.fake.deny(web)
    rule = next(r for r in yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
                if r["alert"] == PERMISSION)  # fmt: skip
    eventually(lambda: prometheus.query("gke_ingress_timeout_leader == 1")["data"]["result"])
    assert prometheus.query(rule["expr"])["data"]["result"] == []
    assert PERMISSION not in prometheus.alerts()

    world.ingress("shop", timeout="1h", backends=[web])

    state = eventually(lambda: prometheus.alerts().get(PERMISSION), timeout=60, what=PERMISSION)
    assert state in ("pending", "firing")
    denied = prometheus.query('gke_ingress_timeout_gcp_calls_total{code="403"}')
    assert denied["data"]["result"], denied


def test_every_dashboard_expression_evaluates(prometheus: Prometheus) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 10

    answers = {e: prometheus.query(e.replace("$__rate_interval", "1m")) for e in exprs}

    failed = {e: a for e, a in answers.items() if a.get("status") != "success"}
    assert not failed
    # And they name only metrics the controller defines (an unknown name is no error).
    defined = {f.name for f in Metrics().registry.collect()}
    named = {n for e in exprs for n in re.findall(r"gke_ingress_timeout_[a-z_]+", e)}
    unknown = {n for n in named if n not in defined and n.removesuffix("_total") not in defined}
    assert not unknown
