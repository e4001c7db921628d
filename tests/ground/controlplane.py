"""A real Kubernetes control plane for tests and the demo: etcd and kube-apiserver.

Finds the binaries (``KUBEBUILDER_ASSETS``, else the build cache), starts them
on free loopback ports with RBAC, an admin token and service-account token
issuing, and stops them without leaving a process behind.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

BINARIES = ("kube-apiserver", "etcd", "kubectl")
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# The uid of the one cluster the tests' apiservers stand for; backend names carry it.
CLUSTER_UID = "0e20ca25204f6195"


def cache_root() -> Path:
    """Where build-control-plane.sh keeps its binaries (outside git)."""
    explicit = os.environ.get("CONTROL_PLANE_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gke-ingress-timeout" / "control-plane"


def find_assets() -> Path | None:
    """The folder holding kube-apiserver, etcd and kubectl, or None."""
    candidates = []
    if os.environ.get("KUBEBUILDER_ASSETS"):
        candidates.append(Path(os.environ["KUBEBUILDER_ASSETS"]))
    root = cache_root()
    if root.is_dir():
        # the build writes into "<version>.tmp" and renames it when whole
        candidates.extend(sorted((p for p in root.glob("v*") if p.suffix != ".tmp"), reverse=True))
    for folder in candidates:
        if all(os.access(folder / name, os.X_OK) for name in BINARIES):
            return folder
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:
    # Children get SIGKILL if the test process dies, so nothing outlives a run.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, and SIGKILL if it has not ended within 15 s."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@dataclass
class ControlPlane:
    """etcd + kube-apiserver on loopback. Use as a context manager."""

    assets: Path
    min_request_timeout: int | None = None
    apiserver_args: tuple[str, ...] = ()  # more kube-apiserver flags
    url: str = ""
    version: str = ""
    admin_token: str = "admin-token-for-tests"
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="kube-")))
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _ports: dict[str, int] = field(default_factory=dict)

    @property
    def ca_file(self) -> str:
        return str(self.workdir / "serving.crt")

    @property
    def kubeconfig(self) -> str:
        return str(self.workdir / "admin.kubeconfig")

    def __enter__(self) -> ControlPlane:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._make_certs()
        (self.workdir / "tokens.csv").write_text(
            f"{self.admin_token},admin,admin-uid,system:masters\n"
        )
        self._ports = {"etcd": free_port(), "peer": free_port(), "api": free_port()}
        self.url = f"https://127.0.0.1:{self._ports['api']}"
        self._start_etcd()
        self.start_apiserver()
        self._write_kubeconfig()
        self.prepare_cluster()

    def prepare_cluster(self, cluster_uid: str = CLUSTER_UID) -> None:
        """Make it a GKE cluster as far as the controller can tell: the BackendTimeout
        CRD that ``kubectl apply -k deploy/`` installs, and the ConfigMap in which
        ingress-gce keeps the cluster's uid (``kube-system/ingress-uid``)."""
        self.kubectl("apply", "-f", str(DEPLOY / "crd.yaml"))
        self.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s",
            "crd/backendtimeouts.ingress-timeout.dev",
        )  # fmt: skip
        uid = {"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "ingress-uid", "namespace": "kube-system"},
               "data": {"uid": cluster_uid, "provider-uid": cluster_uid}}  # fmt: skip
        self.kubectl("apply", "-f", "-", input=json.dumps(uid))

    def _make_certs(self) -> None:
        w = self.workdir
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(w / "serving.key"),
            "-out",
            str(w / "serving.crt"),
        )
        _openssl("genrsa", "-out", str(w / "sa.key"), "2048")
        _openssl("rsa", "-in", str(w / "sa.key"), "-pubout", "-out", str(w / "sa.pub"))

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        self._procs[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
        )
        log.close()

    def _start_etcd(self) -> None:
        client = f"http://127.0.0.1:{self._ports['etcd']}"
        peer = f"http://127.0.0.1:{self._ports['peer']}"
        self._spawn(
            "etcd",
            [
                str(self.assets / "etcd"),
                "--name",
                "default",
                "--data-dir",
                str(self.workdir / "etcd-data"),
                "--listen-client-urls",
                client,
                "--advertise-client-urls",
                client,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                f"default={peer}",
                "--unsafe-no-fsync",
                "--log-level",
                "warn",
            ],
        )
        self._wait(lambda: requests.get(f"{client}/health", timeout=2).ok, "etcd")

    def start_apiserver(self) -> None:
        """Start (or start again, after stop_apiserver) the apiserver on its port."""
        w = self.workdir
        argv = [
            str(self.assets / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self._ports['etcd']}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self._ports['api']}",
            f"--tls-cert-file={w / 'serving.crt'}",
            f"--tls-private-key-file={w / 'serving.key'}",
            "--authorization-mode=RBAC",
            "--endpoint-reconciler-type=none",
            f"--token-auth-file={w / 'tokens.csv'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={w / 'sa.pub'}",
            f"--service-account-signing-key-file={w / 'sa.key'}",
            "--service-cluster-ip-range=10.0.0.0/24",
            f"--cert-dir={w / 'certs'}",
        ]
        if self.min_request_timeout is not None:
            argv.append(f"--min-request-timeout={self.min_request_timeout}")
        argv += self.apiserver_args
        self._spawn("kube-apiserver", argv)
        self._wait(self._ready, "kube-apiserver", timeout=120)
        info = requests.get(
            f"{self.url}/version", headers=self.admin_headers, verify=self.ca_file, timeout=5
        ).json()
        self.version = str(info["gitVersion"])

    def stop_apiserver(self) -> None:
        self._terminate("kube-apiserver")

    def compact(self) -> int:
        """Compact etcd up to its current revision, as the apiserver does every few
        minutes, so that every older resourceVersion is gone; return the revision.
        (The apiserver's watch cache keeps its own window: restart the apiserver, or
        write more events than the cache holds, to have it answer 410 as well.)"""
        etcd = f"http://127.0.0.1:{self._ports['etcd']}/v3/kv"
        key = base64.b64encode(b"/registry").decode()
        head = requests.post(f"{etcd}/range", json={"key": key, "count_only": True}, timeout=10)
        head.raise_for_status()
        revision = int(head.json()["header"]["revision"])
        done = requests.post(
            f"{etcd}/compaction", json={"revision": revision, "physical": True}, timeout=30
        )
        done.raise_for_status()
        return revision

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def _ready(self) -> bool:
        r = requests.get(
            f"{self.url}/readyz", headers=self.admin_headers, verify=self.ca_file, timeout=2
        )
        return r.status_code == 200

    def _wait(self, check: Callable[[], bool], name: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            proc = self._procs[name]
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")
            with contextlib.suppress(requests.RequestException):
                if check():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after {timeout}s:\n{self.log_tail(name)}")
            time.sleep(0.2)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _write_kubeconfig(self) -> None:
        Path(self.kubeconfig).write_text(
            "apiVersion: v1\nkind: Config\n"
            "clusters:\n- name: local\n  cluster:\n"
            f"    server: {self.url}\n    certificate-authority: {self.ca_file}\n"
            f"users:\n- name: admin\n  user:\n    token: {self.admin_token}\n"
            "contexts:\n- name: local\n  context: {cluster: local, user: admin}\n"
            "current-context: local\n"
        )

    def kubectl(self, *args: str, input: str | None = None) -> str:
        """Run the built kubectl as the admin against this apiserver."""
        done = subprocess.run(
            [str(self.assets / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def pod_service_account(self, namespace: str, name: str, folder: Path) -> dict[str, str]:
        """Lay out ``folder`` as the kubelet mounts a pod's service account: a real bound
        token from the TokenRequest API, the CA and the namespace, readable by any user.
        Returns the environment that points a pod at this apiserver."""
        r = requests.post(
            f"{self.url}/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                  "spec": {"expirationSeconds": 3600}},
            headers=self.admin_headers, verify=self.ca_file, timeout=10,
        )  # fmt: skip
        r.raise_for_status()
        folder.mkdir(mode=0o755, exist_ok=True)
        (folder / "token").write_text(r.json()["status"]["token"])
        (folder / "ca.crt").write_bytes(Path(self.ca_file).read_bytes())
        (folder / "namespace").write_text(namespace)
        for f in folder.iterdir():
            f.chmod(0o644)
        port = self.url.rsplit(":", 1)[1]
        return {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": port}

    def _terminate(self, name: str) -> None:
        proc = self._procs.pop(name, None)
        if proc is not None:
            stop_process(proc)

    def stop(self) -> None:
        self._terminate("kube-apiserver")
        self._terminate("etcd")
        shutil.rmtree(self.workdir, ignore_errors=True)
