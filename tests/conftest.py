"""Fixtures that stand up the real parts: kube-apiserver with etcd, and the Compute fake.

Without the control-plane binaries a test that needs them skips, except under
CI=true, where a missing real part fails the run instead.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.ground.controlplane import ControlPlane, find_assets

IN_CI = os.environ.get("CI", "").lower() == "true"
DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
ADMISSION = "gke-ingress-timeout"  # the ValidatingAdmissionPolicy and its binding


def require_real(what: str) -> None:
    """Skip for lack of a real part; under CI=true fail instead."""
    message = f"{what} is not available (run `make test`, which provides it)"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def announce(config: pytest.Config, line: str) -> None:
    """Show a line on the terminal, past output capture (which real server the tests use)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(line)


@pytest.fixture(scope="session")
def apiserver(request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    """One real kube-apiserver + etcd for the whole session."""
    assets = find_assets()
    if assets is None:
        require_real("kube-apiserver/etcd/kubectl (KUBEBUILDER_ASSETS or the build cache)")
    assert assets is not None
    with ControlPlane(assets) as plane:
        announce(request.config, f"real kube-apiserver {plane.version} at {plane.url}")
        yield plane


@pytest.fixture
def apiserver_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., ControlPlane]]:
    """Start extra control planes (e.g. min_request_timeout=7); stopped after the test."""
    planes: list[ControlPlane] = []

    def start(min_request_timeout: int | None = None, args: tuple[str, ...] = ()) -> ControlPlane:
        assets = find_assets()
        if assets is None:
            require_real("kube-apiserver/etcd/kubectl")
        assert assets is not None
        plane = ControlPlane(assets, min_request_timeout=min_request_timeout, apiserver_args=args)
        planes.append(plane)
        plane.start()
        announce(request.config, f"real kube-apiserver {plane.version} at {plane.url}")
        return plane

    yield start
    for plane in planes:
        plane.stop()


def create_namespace(plane: ControlPlane, prefix: str = "t") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    r = requests.post(
        f"{plane.url}/api/v1/namespaces",
        json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
        headers=plane.admin_headers,
        verify=plane.ca_file,
        timeout=10,
    )
    r.raise_for_status()
    return name


@pytest.fixture
def namespace(apiserver: ControlPlane) -> str:
    """A fresh namespace on the session apiserver (no controller-manager deletes it)."""
    return create_namespace(apiserver)


@contextlib.contextmanager
def deployed(plane: ControlPlane, folder: Path = DEPLOY) -> Iterator[str]:
    """``kubectl apply -k deploy/`` (its output); afterwards its admission policy goes
    again, so that the session's later tests may write invalid annotations on purpose."""
    try:
        yield plane.kubectl("apply", "-k", str(folder))
    finally:
        for kind in ("validatingadmissionpolicybinding", "validatingadmissionpolicy"):
            plane.kubectl("delete", kind, ADMISSION, "--ignore-not-found")


@pytest.fixture(scope="session")
def operator_tools() -> dict[str, Path]:
    """helm, prometheus and promtool, from tests/ground/operator-tools.sh (which builds
    helm into a cache and installs Debian's prometheus package when missing)."""
    script = Path(__file__).resolve().parent / "ground" / "operator-tools.sh"
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        require_real(f"helm, prometheus and promtool ({done.stderr.strip()[-300:]})")
    tools = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    return {name.lower(): Path(path) for name, path in tools.items()}
