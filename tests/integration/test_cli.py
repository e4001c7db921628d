"""The CLI as a user runs it: --once prints a table, --dry-run writes nothing, and
--once writes only while holding the Lease."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any

import pytest

from controller.__main__ import EXIT_LEASE_HELD, LEASE_NAME, main
from controller.kube.lease import claim
from tests.integration.world import STATE, World, applied

# main() gives a loopback endpoint anonymous credentials: the fake must not ask for a token.
pytestmark = pytest.mark.anonymous_compute


@pytest.fixture(autouse=True)
def _keep_logging():
    """main() configures the root logger for a process; give the test process its own back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def _argv(world: World, *extra: str, leader_elect: bool = False) -> list[str]:
    return [
        f"--kubeconfig={world.plane.kubeconfig}",
        "--project=demo-project",
        f"--compute-endpoint={world.fake.url}",
        f"--namespaces={world.ns}",
        f"--state-namespace={world.ns}",
        *([] if leader_elect else ["--no-leader-elect"]),
        *extra,
    ]


def _leases(world: World) -> str:
    return f"/apis/coordination.k8s.io/v1/namespaces/{world.ns}/leases"


def _lease_held_by(world: World, holder: str) -> None:
    """The Lease as a running leader keeps it: held, for longer than any test waits."""
    world.kube.post(
        _leases(world),
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": LEASE_NAME},
            "spec": claim(None, holder, 3600.0, datetime.now(timezone.utc)),
        },
    )


def _lease_spec(world: World) -> dict[str, Any]:
    spec: dict[str, Any] = world.kube.get(f"{_leases(world)}/{LEASE_NAME}")["spec"]
    return spec


def _legacy_state(world: World, backend: str) -> str:
    """The ConfigMap in which 0.1 kept its records, naming ``backend``; its path."""
    path = f"/api/v1/namespaces/{world.ns}/configmaps"
    body = json.dumps({"applied": 3600, "claims": {f"{world.ns}/app": 3600}})
    world.kube.post(
        path,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": STATE},
            "data": {f"global.{backend}": body},
        },
    )
    return f"{path}/{STATE}"


def test_once_reconciles_everything_prints_a_table_and_exits_zero(world: World, capsys):
    web = world.backend("web")
    world.ingress("app", timeout="1h", backends=[web])
    world.ingress("plain", backends=[web])

    assert main([*_argv(world), "--once"]) == 0

    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["BACKEND", "RESULT", "ACTIONS"]
    row = next(line for line in table.splitlines() if line.startswith(f"global/{web} "))
    assert " ok " in row and "30s -> 3600s" in row
    assert world.timeout_of(web) == 3600
    assert world.records()[web]["fields"]["timeout"]["applied"] == 3600


def test_once_exits_non_zero_when_gcp_refuses(world: World, capsys):
    web = world.backend("web")
    world.fake.deny(web)
    world.ingress("app", timeout="1h", backends=[web])

    assert main([*_argv(world), "--once"]) == 1

    table = capsys.readouterr().out
    assert all(line.startswith(("global/", "BACKEND")) for line in table.splitlines())
    row = next(line for line in table.splitlines() if line.startswith(f"global/{web} "))
    assert " error " in row and "403" in row
    assert world.timeout_of(web) == 30


def test_dry_run_plans_and_logs_but_changes_nothing(world: World, capsys):
    web = world.backend("web")
    world.ingress("app", timeout="1h", backends=[web])

    assert main([*_argv(world), "--once", "--dry-run"]) == 0

    assert "would set" in capsys.readouterr().out
    assert world.fake.count("PATCH") == 0
    assert world.timeout_of(web) == 30
    assert world.records() == {}


def test_once_beside_a_leader_writes_nothing_and_says_who_holds_the_lease(world: World, capsys):
    web = world.backend("web")
    world.ingress("app", timeout="1h", backends=[web])
    legacy = _legacy_state(world, web)
    _lease_held_by(world, "leader-pod-7f9c")

    code = main([*_argv(world, "--once", "--lease-wait=1", leader_elect=True)])

    assert code == EXIT_LEASE_HELD
    err = capsys.readouterr().err
    told = [line for line in err.splitlines() if "leader-pod-7f9c" in line]
    assert len(told) == 1 and "Lease" in told[0]
    assert "Traceback" not in err
    assert world.fake.count("PATCH") == 0
    assert world.timeout_of(web) == 30
    assert world.records() == {}
    assert world.kube.get(legacy)["data"]  # not migrated, not deleted
    assert _lease_spec(world)["holderIdentity"] == "leader-pod-7f9c"


def test_once_takes_a_free_lease_and_hands_it_back(world: World, capsys):
    web = world.backend("web")
    world.ingress("app", timeout="1h", backends=[web])

    assert main([*_argv(world, "--once", leader_elect=True)]) == 0

    row = next(line for line in capsys.readouterr().out.splitlines() if web in line)
    assert " ok " in row and "30s -> 3600s" in row
    assert world.timeout_of(web) == 3600
    assert applied(world.records()[web]) == 3600
    spec = _lease_spec(world)
    assert spec["holderIdentity"] == ""  # released: the Deployment's replica need not wait
    assert spec["leaseTransitions"] == 0


def test_once_dry_run_needs_no_lease_and_writes_nothing_beside_a_leader(world: World, capsys):
    web = world.backend("web")
    world.ingress("app", timeout="1h", backends=[web])
    legacy = _legacy_state(world, web)
    _lease_held_by(world, "leader-pod-7f9c")

    assert main([*_argv(world, "--once", "--dry-run", leader_elect=True)]) == 0

    assert "would set" in capsys.readouterr().out
    assert world.fake.count("PATCH") == 0
    assert world.records() == {}
    assert world.kube.get(legacy)["data"]
    assert _lease_spec(world)["holderIdentity"] == "leader-pod-7f9c"


def test_a_missing_kubeconfig_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    missing = tmp_path / "nope.kubeconfig"
    assert main([f"--kubeconfig={missing}", "--project=p", "--once"]) == 2
    err = capsys.readouterr().err
    assert "cannot start" in err and "nope.kubeconfig" in err
    assert "Traceback" not in err


def test_a_cluster_without_ingress_uid_is_refused_at_start_with_one_line(world: World, capsys):
    world.plane.kubectl("delete", "configmap", "-n", "kube-system", "ingress-uid")
    try:
        assert main([*_argv(world), "--once"]) == 2
    finally:
        world.plane.prepare_cluster()
    err = capsys.readouterr().err
    assert "cannot start" in err and "--cluster-uid" in err and "Traceback" not in err


def test_credentials_are_refused_to_an_endpoint_that_is_not_google(world: World, capsys):
    argv = [a for a in _argv(world) if not a.startswith("--compute-endpoint")]
    code = main([*argv, "--compute-endpoint=http://compute.example/compute/v1/", "--once"])
    assert code == 2
    err = capsys.readouterr().err
    assert "refusing to send Google credentials" in err
    assert "--unsafe-send-credentials-to-endpoint" in err and "Traceback" not in err
