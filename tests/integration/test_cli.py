"""The CLI as a user runs it: --once prints a table, --dry-run writes nothing."""

from __future__ import annotations

import logging

import pytest

from controller.__main__ import main
from tests.integration.world import World

# main() gives a loopback endpoint anonymous credentials: the fake must not ask for a token.
pytestmark = pytest.mark.anonymous_compute


@pytest.fixture(autouse=True)
def _keep_logging():
    """main() configures the root logger for a process; give the test process its own back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def _argv(world: World, *extra: str) -> list[str]:
    return [
        f"--kubeconfig={world.plane.kubeconfig}",
        "--project=demo-project",
        f"--compute-endpoint={world.fake.url}",
        f"--namespaces={world.ns}",
        f"--state-namespace={world.ns}",
        "--no-leader-elect",
        *extra,
    ]


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
    assert world.records()[web]["applied"] == 3600


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
