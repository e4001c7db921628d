"""The controller as a process: leader election, health, metrics and a graceful stop.

Two replicas of `python -m controller` against the real apiserver: one leads and
writes, the other stands by; SIGTERM on the leader releases the Lease and the
other takes over without waiting for it to expire.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
import requests

from tests.ground.controlplane import free_port
from tests.integration.world import World
from tests.wait import eventually

LEASE = "gke-ingress-timeout"
# `python -m controller` sends no token to a loopback endpoint: the fake must not ask for one.
pytestmark = pytest.mark.anonymous_compute


class Replica:
    def __init__(self, world: World, name: str) -> None:
        self.name, self.port = name, free_port()
        env = {**os.environ, "POD_NAME": name}
        argv = [
            sys.executable,
            "-m",
            "controller",
            f"--kubeconfig={world.plane.kubeconfig}",
            "--project=demo-project",
            f"--compute-endpoint={world.fake.url}",
            f"--namespaces={world.ns}",
            f"--state-namespace={world.ns}",
            f"--listen=127.0.0.1:{self.port}",
        ]
        self.proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )

    def get(self, path: str) -> requests.Response | None:
        try:
            return requests.get(f"http://127.0.0.1:{self.port}{path}", timeout=2)
        except requests.ConnectionError:
            return None

    def status(self, path: str) -> int:
        response = self.get(path)
        return 0 if response is None else response.status_code

    def metric(self, line_start: str) -> float:
        response = self.get("/metrics")
        for line in (response.text if response else "").splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, err


@pytest.fixture
def replicas(world: World) -> Iterator[list[Replica]]:
    started: list[Replica] = []
    yield started
    for r in started:
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.wait()


def holder(world: World) -> str:
    lease = world.kube.get(f"/apis/coordination.k8s.io/v1/namespaces/{world.ns}/leases/{LEASE}")
    return str(lease["spec"].get("holderIdentity") or "")


def test_one_replica_leads_the_other_takes_over_on_sigterm(world: World, replicas):
    web = world.backend("web")
    world.ingress("app", timeout="1h", backends=[web])
    first = Replica(world, "ctl-a")
    replicas.append(first)
    eventually(lambda: world.timeout_of(web) == 3600, what="the leader applied")
    assert holder(world).startswith("ctl-a-")
    eventually(lambda: first.status("/readyz") == 200 and first.status("/healthz") == 200)
    patches = 'gke_ingress_timeout_gcp_calls_total{code="200",method="backendServices.patch"}'
    assert first.metric(patches) == 1
    ok = 'gke_ingress_timeout_reconciles_total{result="ok"}'
    eventually(lambda: first.metric(ok) >= 1, what="the reconcile counted")

    second = Replica(world, "ctl-b")
    replicas.append(second)
    eventually(lambda: second.status("/readyz") == 200, what="the standby is up")
    assert holder(world).startswith("ctl-a-")

    code, err = first.stop()
    assert code == 0, err
    assert "released the lease" in err
    eventually(lambda: holder(world).startswith("ctl-b-"), timeout=10, what="handed over")
    world.annotate("app", "2h")
    eventually(lambda: world.timeout_of(web) == 7200, what="the new leader applied")
    assert world.patches(web) == [3600, 7200]  # never both at once

    code, err = second.stop()
    assert code == 0, err
    assert holder(world) == ""  # released, so a next start need not wait 15 s


def test_a_kill_right_after_the_patch_still_tells_the_event_once(world: World, replicas):
    web = world.backend("web")
    world.ingress("app", backends=[web])
    first = Replica(world, "ctl-a")
    replicas.append(first)
    eventually(lambda: first.status("/readyz") == 200, what="ready")
    world.fake.op_delay = 2.0
    world.annotate("app", "1h")
    eventually(lambda: world.fake.pending_operations() == 1, what="the PATCH sent")
    first.proc.kill()  # SIGKILL while the operation runs: no outcome, no Event yet
    first.proc.wait()
    eventually(lambda: world.timeout_of(web) == 3600, what="the operation done")
    assert world.events("app", "TimeoutApplied") == []
    second = Replica(world, "ctl-b")
    replicas.append(second)
    [event] = eventually(lambda: world.events("app", "TimeoutApplied"), timeout=60)
    assert event["count"] == 1
    eventually(lambda: (world.records().get(web) or {}).get("intent") is None, what="settled")
    # A third start, with nothing owed that the apiserver does not have: nothing more.
    code, err = second.stop()
    assert code == 0, err
    third = Replica(world, "ctl-c")
    replicas.append(third)
    eventually(lambda: third.status("/readyz") == 200, timeout=60, what="ready again")
    code, err = third.stop()  # its queue is flushed before it exits
    assert code == 0, err
    assert [e["count"] for e in world.events("app", "TimeoutApplied")] == [1]
    assert world.patches(web) == [3600]


def test_a_restart_with_a_standing_conflict_does_not_tell_it_again(world: World, replicas):
    shared = world.backend("web")
    world.ingress("short", timeout="60", backends=[shared])
    world.ingress("long", timeout="600", backends=[shared])
    first = Replica(world, "ctl-a")
    replicas.append(first)
    # The Ingress whose timeout applies is not told of a conflict; the other one is.
    eventually(lambda: world.events("short", "SharedBackendConflict"), what="short told")
    code, err = first.stop()
    assert code == 0, err
    before = {n: world.events(n, "SharedBackendConflict") for n in ("short", "long")}

    second = Replica(world, "ctl-b")
    replicas.append(second)
    ok = 'gke_ingress_timeout_reconciles_total{result="ok"}'
    eventually(lambda: second.metric(ok) >= 1, timeout=60, what="the backend decided again")
    code, err = second.stop()  # its Event queue is flushed before it exits
    assert code == 0, err
    after = {n: world.events(n, "SharedBackendConflict") for n in ("short", "long")}
    assert [(e["metadata"]["name"], e["count"]) for n in after for e in after[n]] == [
        (e["metadata"]["name"], e["count"]) for n in before for e in before[n]
    ]
    assert len(after["short"]) == 1 and after["long"] == []
