"""The benchmark's world: a real kube-apiserver made to look like GKE, Ingresses as
kubectl and ingress-gce leave them, and a Compute fake holding their backend services.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from tests.fakes.compute import ComputeFake, instance_group_backend_name, neg_backend_name
from tests.ground.controlplane import ControlPlane

Json = dict[str, Any]

ROOT = Path(__file__).resolve().parents[1]
CRD = ROOT / "deploy" / "crd.yaml"
CLUSTER_UID = "0e20ca25204f6195"
CONTROLLER_NS = "gke-ingress-timeout"
TIMEOUT_KEY = "ingress-timeout.dev/timeout"
BACKENDS_KEY = "ingress.kubernetes.io/backends"
CLASS_KEY = "kubernetes.io/ingress.class"
ASKED = "1h"
ASKED_SECONDS = 3600
# ingress-gce lists the cluster's default backend on every GCE Ingress it serves.
DEFAULT_SERVICE = "kube-system/default-http-backend"
DEFAULT_BACKEND = neg_backend_name("kube-system", "default-http-backend", 80, CLUSTER_UID)
SHARED_PORT = 30480  # the NodePort of the instance-group backend the shared world names
LATENCY = 0.02  # seconds each Compute call takes, as a nearby region's API might
OP_DELAY = 0.02  # an operation is DONE this long after its write: never in the PATCH reply


class Kube:
    """The harness's own admin client: a requests.Session per thread, JSON in and out."""

    def __init__(self, plane: ControlPlane) -> None:
        self.url, self.ca, self.token = plane.url, plane.ca_file, plane.admin_token
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    def session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["Authorization"] = f"Bearer {self.token}"
            with self._lock:
                self._sessions.append(session)
            self._local.session = session
        return session

    def close(self) -> None:
        with self._lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()

    def request(self, method: str, path: str, body: Json | None = None, **kw: Any) -> Json:
        # verify on each call: REQUESTS_CA_BUNDLE in the environment beats session.verify
        r = self.session().request(
            method, self.url + path, json=body, timeout=60, verify=self.ca, **kw
        )
        if r.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:300]}")
        return dict(r.json())

    def merge_patch(self, path: str, body: Json) -> Json:
        headers = {"Content-Type": "application/merge-patch+json"}
        return self.request("PATCH", path, data=json.dumps(body), headers=headers)


def ingresses_path(namespace: str, name: str = "") -> str:
    path = f"/apis/networking.k8s.io/v1/namespaces/{namespace}/ingresses"
    return f"{path}/{name}" if name else path


def prepare(plane: ControlPlane) -> None:
    """What the product needs from a GKE cluster before it starts: its namespace, the
    cluster uid ingress-gce keeps, and its CRD when this version of it has one."""
    uid = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "ingress-uid", "namespace": "kube-system"},
        "data": {"uid": CLUSTER_UID, "provider-uid": CLUSTER_UID},
    }
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CONTROLLER_NS}}
    # apply, not create: a ControlPlane may already have made some of these
    plane.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [namespace, uid]}),
    )
    if CRD.exists():
        plane.kubectl("apply", "-f", str(CRD))
        plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(CRD))


def create_namespace(kube: Kube, name: str) -> None:
    kube.request(
        "POST",
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
    )


def ingress_body(
    namespace: str,
    name: str,
    services: Sequence[str],
    *,
    timeout: str | None = ASKED,
    ingress_class: str = "gce",
    backends: Sequence[str] | None = None,
) -> Json:
    """An Ingress as kubectl apply and ingress-gce leave it: ~1.5 kB of last-applied JSON,
    the load-balancer annotations, and a backends annotation naming one NEG per Service
    (or ``backends``) and the cluster's default backend (none for a class that
    ingress-gce does not serve)."""
    hosts = [f"{name}.shop.example.com", f"{name}.api.example.com"]
    labels = {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/part-of": "storefront",
        "app.kubernetes.io/managed-by": "kustomize",
        "team": "payments",
        "environment": "production",
    }
    user = {CLASS_KEY: ingress_class, "kubernetes.io/ingress.global-static-ip-name": f"{name}-ip"}
    if timeout is not None:
        user[TIMEOUT_KEY] = timeout
    paths = [
        {
            "path": path,
            "pathType": "Prefix",
            "backend": {"service": {"name": services[i % len(services)], "port": {"number": 80}}},
        }
        for i, path in enumerate(("/", "/api", "/ws", "/static"))
    ]
    spec = {
        "tls": [{"hosts": hosts, "secretName": f"{name}-tls"}],
        "rules": [{"host": host, "http": {"paths": paths}} for host in hosts],
    }
    applied = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"annotations": user, "labels": labels, "name": name, "namespace": namespace},
        "spec": spec,
    }
    annotations = {
        **user,
        # kubectl writes compact JSON with sorted keys and a trailing newline
        "kubectl.kubernetes.io/last-applied-configuration": json.dumps(
            applied, sort_keys=True, separators=(",", ":")
        )
        + "\n",
    }
    if ingress_class == "gce":
        lb = f"{CLUSTER_UID[:8]}-{namespace}-{name}-q7x2mz4k"
        annotations.update(
            {
                BACKENDS_KEY: backends_value(
                    backend_names(namespace, services) if backends is None else backends
                ),
                "ingress.kubernetes.io/forwarding-rule": f"k8s2-fr-{lb}",
                "ingress.kubernetes.io/https-forwarding-rule": f"k8s2-fs-{lb}",
                "ingress.kubernetes.io/target-proxy": f"k8s2-tp-{lb}",
                "ingress.kubernetes.io/https-target-proxy": f"k8s2-ts-{lb}",
                "ingress.kubernetes.io/url-map": f"k8s2-um-{lb}",
                "ingress.kubernetes.io/static-ip": f"{name}-ip",
            }
        )
    metadata = {"name": name, "namespace": namespace, "labels": labels, "annotations": annotations}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": metadata,
        "spec": spec,
    }


def backend_names(namespace: str, services: Sequence[str]) -> list[str]:
    return [neg_backend_name(namespace, s, 80, CLUSTER_UID) for s in services]


def backends_value(names: Sequence[str], health: str = "HEALTHY") -> str:
    """As ingress-gce writes it: the Ingress's own backends, then the default one."""
    return json.dumps({**{n: health for n in names}, DEFAULT_BACKEND: "HEALTHY"})


def shared_backend_name() -> str:
    return instance_group_backend_name(SHARED_PORT, CLUSTER_UID)


def create_all(kube: Kube, bodies: Sequence[Json], threads: int = 8) -> None:
    """POST every body from a few threads, each with its own Session."""

    def post(body: Json) -> None:
        kube.request("POST", ingresses_path(body["metadata"]["namespace"]), body)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(post, bodies))


def new_fake() -> ComputeFake:
    """A Compute fake with every call LATENCY slow; each contender gets its own."""
    fake = ComputeFake(op_delay=OP_DELAY)
    fake.latency = LATENCY
    return fake.start()


def add_backends(fake: ComputeFake, namespace: str, services: Sequence[str]) -> list[str]:
    names = backend_names(namespace, services)
    for name, service in zip(names, services, strict=True):
        fake.add_backend(name, service=f"{namespace}/{service}")
    return names


def add_default_backend(fake: ComputeFake) -> None:
    fake.add_backend(DEFAULT_BACKEND, service=DEFAULT_SERVICE)
