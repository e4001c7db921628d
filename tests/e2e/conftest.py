"""The image for real: podman and the local base (tests/ground/containers.sh), the image
built from this tree (rebuilt only when its sources change), and a local registry.

Without podman a test skips, except under CI=true, where it fails (``require_real``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.conftest import provision, require_real
from tests.ground.controlplane import cache_root, die_with_parent, free_port, stop_process
from tests.wait import eventually

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "localhost/gke-ingress-timeout-base:py"
IMAGE = "localhost/gke-ingress-timeout:e2e"
SOURCE_LABEL = "dev.ingress-timeout.source-sha256"
LOCK = cache_root().parent / "containers" / "e2e-image.lock"  # beside containers.sh's cache
# What the Dockerfile reads (.dockerignore lets in no more than this).
SOURCES = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "controller")


@dataclass(frozen=True)
class Podman:
    """podman with the flags and configuration that work on these machines."""

    containers_conf: str
    root: str | None = None  # another image store, e.g. to pull into an empty one

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        store = ["--root", self.root, "--runroot", f"{self.root}/run"] if self.root else []
        done = subprocess.run(
            ["podman", "--storage-driver", "vfs", *store, *args],
            env={**os.environ, "CONTAINERS_CONF": self.containers_conf},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"podman {' '.join(args)} failed ({done.returncode}):\n{done.stderr}"
            )
        return done

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``podman run`` as these tests always need it: runc, the host's loopback."""
        return self("run", "--runtime", "runc", "--network", "host", *args, check=check)


@pytest.fixture(scope="session")
def podman() -> Podman:
    """Installs and prepares what podman needs here (containers.sh is idempotent)."""
    done = provision(ROOT / "tests/ground/containers.sh", timeout=900)
    if done.returncode != 0:
        require_real(f"podman and the local base image (containers.sh: {done.stderr.strip()})")
    [conf] = [line for line in done.stdout.splitlines() if line.startswith("CONTAINERS_CONF=")]
    return Podman(conf.split("=", 1)[1])


def source_digest(podman: Podman) -> str:
    """The build's inputs: the files it copies and the base image it starts from."""
    digest = hashlib.sha256()
    base = podman("image", "inspect", "--format", "{{.Id}}", BASE_IMAGE).stdout.strip()
    digest.update(base.encode())
    for name in SOURCES:
        path = ROOT / name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            if "__pycache__" in f.parts:
                continue
            digest.update(f.relative_to(ROOT).as_posix().encode() + b"\0")
            digest.update(f.read_bytes() + b"\0")
    return digest.hexdigest()


@pytest.fixture(scope="session")
def image(podman: Podman) -> str:
    """The image of this tree, built from the local base unless already built from it.
    Under a lock: xdist workers (and other checkouts on the machine) share the tag, and
    the one that comes second finds the image built rather than building it again."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return build_unless_current(podman)


def build_unless_current(podman: Podman) -> str:
    digest = source_digest(podman)
    label = f'{{{{ index .Labels "{SOURCE_LABEL}" }}}}'
    built = podman("image", "inspect", "--format", f"{{{{.Id}}}} {label}", IMAGE, check=False)
    old_id, _, old_digest = built.stdout.strip().partition(" ")
    if built.returncode == 0 and old_digest == digest:
        return IMAGE
    # No layer cache: with vfs every cached step is a full copy of the tree, and
    # building without one is faster here.
    podman(
        *("build", "--layers=false", "--isolation", "chroot", "--network", "host"),
        *("--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "--label", f"{SOURCE_LABEL}={digest}"),
        *("--tag", IMAGE, str(ROOT)),
        timeout=900,
    )
    if old_id:
        podman("rmi", old_id, check=False)  # the previous build, untagged now
    return IMAGE


@pytest.fixture(scope="session")
def registry(podman: Podman) -> Iterator[str]:
    """A registry (Debian's docker-registry, which containers.sh installs) on a free
    loopback port, with its storage in a temp dir; yields HOST:PORT."""
    workdir = Path(tempfile.mkdtemp(prefix="registry-"))
    address = f"127.0.0.1:{free_port()}"
    config = workdir / "config.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage:\n  filesystem:\n    rootdirectory: {workdir / 'data'}\n"
        f"http:\n  addr: {address}\n"
        "log:\n  level: warn\n"
    )
    with open(workdir / "registry.log", "wb") as log:
        proc = subprocess.Popen(
            ["docker-registry", "serve", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    try:

        def up() -> bool:
            assert proc.poll() is None, (workdir / "registry.log").read_text()
            with contextlib.suppress(requests.RequestException):
                return requests.get(f"http://{address}/v2/", timeout=2).status_code == 200
            return False

        eventually(up, what=f"registry at {address}")
        yield address
    finally:
        stop_process(proc)
        shutil.rmtree(workdir, ignore_errors=True)
