"""The contenders as processes: how each is started and stopped, and its memory and CPU
read from /proc, the same way whatever it is written with.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from bench.cluster import ROOT
from tests.ground.controlplane import die_with_parent, free_port

# Workers of every contender; BENCH_WORKERS changes it, to see throughput against workers.
WORKERS = int(os.environ.get("BENCH_WORKERS", "4"))
STOP_TIMEOUT = 30.0  # seconds from SIGTERM to SIGKILL


@dataclass(frozen=True)
class Where:
    """What a contender is pointed at: a kubeconfig (through its proxy), the Compute fake's
    URL and the one namespace it serves."""

    kubeconfig: str
    compute: str
    namespace: str


@dataclass(frozen=True)
class Contender:
    name: str
    what: str  # one line for the table's legend
    argv: Callable[[Where, int], list[str]]  # (where, health port) -> command line
    source: str  # the folder of its code, for source_digest
    env: tuple[tuple[str, str], ...] = ()
    has_readyz: bool = False
    root: Path = ROOT  # the checkout it runs from


def _product(where: Where, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "controller",
        f"--kubeconfig={where.kubeconfig}",
        f"--compute-endpoint={where.compute}",
        "--project=demo-project",
        "--no-leader-elect",
        f"--listen=127.0.0.1:{port}",
        f"--workers={WORKERS}",
        "--write-rate=1000",
        f"--namespaces={where.namespace}",
    ]


def _peer(module: str) -> Callable[[Where, int], list[str]]:
    def argv(where: Where, port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            f"bench.peers.{module}",
            f"--kubeconfig={where.kubeconfig}",
            f"--compute-endpoint={where.compute}",
            "--project=demo-project",
            f"--namespace={where.namespace}",
            f"--workers={WORKERS}",
        ]

    return argv


PRODUCT_ENV = (
    # A twin of --read-rate where the product has one (ignored where not): its default
    # of 10 reads/s would time the limiter, not the design; the peers have none.
    ("INGRESS_TIMEOUT_READ_RATE", "1000"),
)
# BENCH_PRODUCT_ROOT: run the product from another checkout (an earlier version), with
# this one's harness and peers; BENCH_BASELINE_ROOT: run another checkout's product as
# one more contender, "baseline", beside this one's, for a before-and-after in one run.
PRODUCT_ROOT = Path(os.environ.get("BENCH_PRODUCT_ROOT", ROOT))
BASELINE_ROOT = os.environ.get("BENCH_BASELINE_ROOT", "")

CONTENDERS = (
    Contender(
        "product",
        f"python -m controller (this repository), {WORKERS} workers, --write-rate 1000, "
        "reads 1000/s",
        _product,
        "controller",
        env=PRODUCT_ENV,
        has_readyz=True,
        root=PRODUCT_ROOT,
    ),
    *(
        [
            Contender(
                "baseline",
                f"python -m controller from BENCH_BASELINE_ROOT ({Path(BASELINE_ROOT).name}), "
                "as product",
                _product,
                "controller",
                env=PRODUCT_ENV,
                has_readyz=True,
                root=Path(BASELINE_ROOT),
            )
        ]
        if BASELINE_ROOT
        else []
    ),
    Contender(
        "kopf",
        "bench/peers/kopf_peer.py: kopf handlers on create/update/resume, GET then PATCH",
        _peer("kopf_peer"),
        "bench/peers",
    ),
    Contender(
        "design2018",
        "bench/peers/design2018.py: one watch, MODIFIED only, PATCH without reading",
        _peer("design2018"),
        "bench/peers",
    ),
)


def source_digest(folder: Path) -> str:
    """A digest of the Python files under `folder`: which code a run ran, in a tree that
    someone may be editing while the benchmark runs."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:10]


def write_kubeconfig(path: Path, server: str, ca: str, token: str) -> str:
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: bench\n  cluster:\n    server: {server}\n"
        f"    certificate-authority: {ca}\n"
        f"users:\n- name: admin\n  user:\n    token: {token}\n"
        "contexts:\n- name: bench\n  context: {cluster: bench, user: admin}\n"
        "current-context: bench\n"
    )
    return str(path)


class Process:
    """One run of a contender; its output goes to a log file."""

    def __init__(self, contender: Contender, where: Where, log: Path) -> None:
        self.contender = contender
        self.port = free_port()
        self.log = log
        cwd = contender.root
        self.source = source_digest(cwd / contender.source)
        env = {**os.environ, **dict(contender.env), "PYTHONUNBUFFERED": "1"}
        with open(log, "ab") as out:
            self.started = time.monotonic()
            self.proc = subprocess.Popen(
                contender.argv(where, self.port),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        self.peak_kib = 0
        self.stop_seconds: float | None = None

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def ready(self) -> bool:
        """The product's /readyz; the peers have none."""
        try:
            r = requests.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1)
        except requests.RequestException:
            return False
        return r.status_code == 200

    def cpu_seconds(self) -> float:
        """utime + stime of every thread, from /proc/PID/stat."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def vm_hwm_kib(self) -> int:
        """Peak resident set (VmHWM) so far, since the start or the last reset_peak();
        the largest seen is kept in peak_kib, also after the process ends."""
        hwm = self._status_kib("VmHWM")
        self.peak_kib = max(self.peak_kib, hwm)
        return hwm

    def vm_rss_kib(self) -> int:
        """Resident set now (VmRSS); 0 once it has ended."""
        return self._status_kib("VmRSS")

    def reset_peak(self) -> None:
        """Start VmHWM again from the resident set now (clear_refs 5), to see the peak of
        what comes next alone; the peak so far stays in peak_kib."""
        self.vm_hwm_kib()
        with contextlib.suppress(OSError), open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
            f.write("5")

    def _status_kib(self, field: str) -> int:
        with contextlib.suppress(OSError), open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1])
        return 0

    def stop(self) -> int | None:
        """SIGTERM (the product finishes its work in flight), SIGKILL after STOP_TIMEOUT."""
        if self.alive:
            self.vm_hwm_kib()
            started = time.monotonic()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.stop_seconds = time.monotonic() - started
        return self.proc.returncode

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""
