"""Fixtures that stand up the real parts: kube-apiserver with etcd, and the Compute fake.

Without the control-plane binaries a test that needs them skips, except under
CI=true, where a missing real part fails the run instead.

Also what the tests show on the terminal past output capture (``announce``, ``table_row``),
in a way that survives pytest-xdist: ``make test`` runs the suite on several worker
processes, whose own terminal output never reaches the user's. There a line or a table
row travels with a test report to the controlling process, which writes it out.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import cast

import pytest
import requests

from tests.ground.controlplane import ControlPlane, cache_root, find_assets
from tests.wait import eventually

IN_CI = os.environ.get("CI", "").lower() == "true"
DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
ADMISSION = "gke-ingress-timeout"  # the ValidatingAdmissionPolicy and its binding


def require_real(what: str) -> None:
    """Skip for lack of a real part; under CI=true fail instead."""
    message = f"{what} is not available (run `make test`, which provides it)"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


# Keys of a test report's user_properties that carry terminal output (see Shown).
SHOWN = "shown-line"
FIGURES = "figures-row"
# Lines announced in an xdist worker, sent with the next test report it makes.
_unsent: list[str] = []
_ORDER = pytest.StashKey[int]()  # a test's place in the collection, before reordering


def in_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def announce(config: pytest.Config, line: str) -> None:
    """Show a line on the terminal, past output capture (which real server the tests use)."""
    if in_worker(config):
        _unsent.append(line)
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(line)


def table_row(item: pytest.Item, table: str, header: str, row: str) -> None:
    """Add ``row`` to ``table``, printed whole at the end of the run, its rows in the
    order of their tests in the files (``header`` is the table's first line)."""
    item.user_properties.append((FIGURES, (table, header, item.stash.get(_ORDER, 0), row)))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    report.user_properties.extend((SHOWN, line) for line in _unsent)
    _unsent.clear()
    return report


class Shown:
    """In the process that owns the terminal: writes out the lines workers announced,
    as their reports come in, and the tables of figures at the end."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.tables: dict[str, tuple[str, list[tuple[int, str]]]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for key, value in report.user_properties:
            if key == SHOWN:
                announce(self.config, str(value))
            elif key == FIGURES and report.when == "call":  # every phase repeats the item's
                table, header, order, row = cast("tuple[str, str, int, str]", value)
                self.tables.setdefault(table, (header, []))[1].append((order, row))

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        for table, (header, rows) in self.tables.items():
            terminalreporter.write_line(f"\n{table}:\n{header}")
            for _, row in sorted(rows):
                terminalreporter.write_line(row)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "long(minutes=2): runs for minutes; under xdist the longest start first, so that "
        "the run does not end with one worker busy on one while the others wait",
    )
    if not in_worker(config):
        config.pluginmanager.register(Shown(config), "shown-figures")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for order, item in enumerate(items):
        item.stash[_ORDER] = order
    if in_worker(config):  # every worker sorts alike: xdist checks they collected the same
        items.sort(key=lambda item: -minutes(item))


def minutes(item: pytest.Item) -> float:
    """How long a test marked long runs, roughly; 0 for any other."""
    long = item.get_closest_marker("long")
    return 0.0 if long is None else float(long.kwargs.get("minutes", 2))


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
        # The apiserver drops a deleted policy a moment later: the next test must not
        # meet it (a test that writes an invalid map was refused so under xdist).
        eventually(lambda: _admits_anything(plane), timeout=60, what="the policy gone")


def _admits_anything(plane: ControlPlane) -> bool:
    """Whether a dry-run CREATE of an Ingress with an invalid timeout is admitted."""
    body = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "probe", "annotations": {"ingress-timeout.dev/timeout": "1d"}},
        "spec": {"defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}},
    }
    reply = requests.post(
        f"{plane.url}/apis/networking.k8s.io/v1/namespaces/default/ingresses",
        params={"dryRun": "All"},
        json=body,
        headers=plane.admin_headers,
        verify=plane.ca_file,
        timeout=10,
    )
    return reply.status_code == 201


def provision(script: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a tests/ground script that installs what tests need, one at a time on the
    machine: each xdist worker asks for it, and two apt-get runs at once fail."""
    lock_file = cache_root().parent / "provision.lock"
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return subprocess.run(
            ["bash", str(script)], capture_output=True, text=True, timeout=timeout
        )


@pytest.fixture(scope="session")
def operator_tools() -> dict[str, Path]:
    """helm, prometheus and promtool, from tests/ground/operator-tools.sh (which builds
    helm into a cache and installs Debian's prometheus package when missing)."""
    script = Path(__file__).resolve().parent / "ground" / "operator-tools.sh"
    done = provision(script, timeout=1800)
    if done.returncode != 0:
        require_real(f"helm, prometheus and promtool ({done.stderr.strip()[-300:]})")
    tools = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    return {name.lower(): Path(path) for name, path in tools.items()}


@pytest.fixture(scope="session")
def monitoring_crds() -> Path:
    """The folder of the real CRDs of PodMonitoring, Rules, ServiceMonitor and
    PrometheusRule, from tests/ground/monitoring-crds.sh (which fetches them, pinned, from
    the modules of the projects that define them into a cache when missing)."""
    script = Path(__file__).resolve().parent / "ground" / "monitoring-crds.sh"
    done = provision(script, timeout=1800)
    if done.returncode != 0:
        require_real(f"the monitoring CRDs ({done.stderr.strip()[-300:]})")
    [folder] = [
        line[len("CRDS=") :] for line in done.stdout.splitlines() if line.startswith("CRDS=")
    ]
    return Path(folder)
