"""A test world: the real apiserver, the Compute fake, and the controller running in-process.

The controller sees only its own namespace (so tests do not see each other's
Ingresses) and reaches the fake through google-api-python-client, as it reaches GCP.
The fake is ``strict_fake()``: as strict as GCP unless a test says otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import google.oauth2.credentials
import requests

from controller.gcp.backends import Compute
from controller.kube.client import KubeClient, StaticTokenAuth
from controller.manager import Manager
from controller.model import Settings
from controller.records import GROUP, PLURAL, VERSION
from tests.fakes.compute import ComputeFake, neg_backend_name
from tests.ground.controlplane import CLUSTER_UID, ControlPlane
from tests.wait import eventually

PREFIX = "ingress-timeout.dev"
KEY = f"{PREFIX}/timeout"
UID = CLUSTER_UID
STATE = "gke-ingress-timeout-state"  # where versions before 0.2 kept their records

# The Compute fake as strict as GCP, in one place (ComputeFake's own defaults are lenient).
# Operations take time: a write is applied only when its operation is DONE, and until then
# a GET shows the old value and another write to the same backend gets 400
# resourceNotReady, as on GCP, where an operation takes seconds.
OP_DELAY = 0.05
# One operations.wait returns RUNNING before that (GCP's wait is best effort), so the
# controller must keep waiting rather than take the first answer as the end.
WAIT_MAX = 0.02
# Every request must carry this bearer token, as GCP refuses an anonymous one (401).
TOKEN = "world-test-token"
# Lists come in pages this short, so that any list of more than three backends spans
# several pages and a client that reads only the first page misses backends.
PAGE_CAP = 3
# Per-minute quotas answered with 403 rateLimitExceeded, as GCP has; high enough that a
# normal test never meets them, so meeting one is a sign of a runaway loop.
READ_RATE_PER_MINUTE = 6000
WRITE_RATE_PER_MINUTE = 6000


def strict_fake(*, token: str | None = TOKEN) -> ComputeFake:
    """A Compute fake (not started) as strict as GCP: the constants above, and requestIds
    remembered for the fake's default hour, as GCP does. ``token=None`` accepts anonymous
    requests: only for a controller that cannot be given a token (``python -m controller``
    sends none to a loopback endpoint)."""
    return ComputeFake(
        op_delay=OP_DELAY,
        wait_max=WAIT_MAX,
        token=token,
        page_cap=PAGE_CAP,
        read_rate_per_minute=READ_RATE_PER_MINUTE,
        write_rate_per_minute=WRITE_RATE_PER_MINUTE,
    )


def applied(spec: Mapping[str, Any] | None, field: str = "timeout") -> int | None:
    """What a BackendTimeout's spec (as ``World.records`` gives it) says this controller
    applied to ``field``; None without a record or that field."""
    state = ((spec or {}).get("fields") or {}).get(field) or {}
    value = state.get("applied")
    return value if isinstance(value, int) else None


class World:
    def __init__(self, plane: ControlPlane, namespace: str, fake: ComputeFake) -> None:
        self.plane, self.ns, self.fake = plane, namespace, fake
        self.kube = KubeClient(
            plane.url, auth=StaticTokenAuth(plane.admin_token), verify=plane.ca_file
        )
        self.manager: Manager | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.list_calls = 0  # LISTs of Ingresses sent by the controller's own client

    # --- the controller ---------------------------------------------------------------
    def start(
        self,
        *,
        region: str = "europe-west1",
        resync: float = 600.0,
        informer: dict[str, Any] | None = None,
        workers: int = 2,
        settings: Mapping[str, Any] | None = None,
        compute: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Manager:
        """Start the controller in-process; ``settings`` overrides fields of its Settings
        (namespaces: this World's), ``compute`` are more Compute arguments, ``options``
        more Manager arguments."""
        session = requests.Session()
        session.hooks["response"].append(self._count_lists)
        kube = KubeClient(
            self.plane.url,
            auth=StaticTokenAuth(self.plane.admin_token),
            verify=self.plane.ca_file,
            session=session,
        )
        client = Compute(
            "demo-project",
            endpoint=self.fake.url,
            credentials=self.credentials(),
            base_delay=0.01,
            max_delay=0.05,
            **(compute or {}),
        )
        chosen = Settings(
            timeout_key=KEY, cluster_uid=UID, region=region, namespaces=frozenset({self.ns})
        )
        self.manager = Manager(
            kube=kube,
            compute=client,
            settings=dataclasses.replace(chosen, **(settings or {})),
            namespace=self.ns,
            instance="test",
            workers=workers,
            resync_period=resync,
            informer_options=informer,
            **options,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.manager.run, args=(self._stop,))
        self._thread.start()
        eventually(self.manager.ready.is_set, what="controller ready")
        return self.manager

    def credentials(self) -> google.oauth2.credentials.Credentials | None:
        """Credentials carrying the token the fake requires; None (anonymous, as Compute
        gives a loopback endpoint) when it requires none."""
        if self.fake.token is None:
            return None
        return google.oauth2.credentials.Credentials(token=self.fake.token)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            assert not self._thread.is_alive(), "controller did not stop"
            self._thread = None

    def _count_lists(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        url = response.request.url or ""
        if response.request.method == "GET" and "/ingresses" in url and "watch=" not in url:
            self.list_calls += 1

    # --- GCP ------------------------------------------------------------------------------
    def backend(
        self,
        service: str,
        port: int = 80,
        *,
        region: str | None = None,
        timeout: int = 30,
        namespace: str | None = None,
    ) -> str:
        """A backend service as ingress-gce makes for ``namespace/service:port``."""
        ns = namespace or self.ns
        name = neg_backend_name(ns, service, port, UID, regional=region is not None)
        self.fake.add_backend(
            name, region=region, service=f"{ns}/{service}", port=str(port), timeout=timeout
        )
        return name

    def timeout_of(self, name: str, region: str | None = None) -> int:
        return int(self.fake.backend(name, region)["timeoutSec"])

    def accepted(self, name: str, key: str) -> list[dict[str, Any]]:
        """The body of every accepted PATCH (to ``name``) that sets ``key``, in order."""
        return [
            body
            for c in self.fake.calls
            if c.method == "PATCH" and c.status == 200 and name in c.path
            if (body := c.body) and key in body
        ]

    def patches(self, name: str = "") -> list[int]:
        """timeoutSec of every accepted PATCH (to ``name``) that sets it, in order."""
        return [body["timeoutSec"] for body in self.accepted(name, "timeoutSec")]

    def draining_of(self, name: str, region: str | None = None) -> int:
        return int(self.fake.backend(name, region)["connectionDraining"]["drainingTimeoutSec"])

    def drainings(self, name: str = "") -> list[int]:
        """connectionDraining.drainingTimeoutSec of every accepted PATCH (to ``name``)
        that sets it, in order."""
        return [
            body["connectionDraining"]["drainingTimeoutSec"]
            for body in self.accepted(name, "connectionDraining")
        ]

    # --- Kubernetes -----------------------------------------------------------------------
    @property
    def _ingresses(self) -> str:
        return f"/apis/networking.k8s.io/v1/namespaces/{self.ns}/ingresses"

    def ingress(
        self,
        name: str,
        *,
        timeout: str | None = None,
        backends: Iterable[str] = (),
        services: Iterable[str] = ("web",),
        ingress_class: str | None = "gce",
        annotations: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """An Ingress routing to ``services``; ``annotations`` replaces every annotation
        the other arguments would have made, verbatim."""
        if annotations is None:
            made = {"ingress.kubernetes.io/backends": json.dumps({b: "HEALTHY" for b in backends})}
            if ingress_class is not None:
                made["kubernetes.io/ingress.class"] = ingress_class
            if timeout is not None:
                made[KEY] = timeout
            annotations = made
        paths = [
            {
                "path": f"/{s}",
                "pathType": "Prefix",
                "backend": {"service": {"name": s, "port": {"number": 80}}},
            }
            for s in services
        ]
        body = {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {"name": name, "annotations": dict(annotations)},
            "spec": {"rules": [{"http": {"paths": paths}}]},
        }
        return self.kube.post(self._ingresses, body)

    def annotate(self, name: str, value: str | None, key: str = KEY) -> dict[str, Any]:
        return self.kube.patch(
            f"{self._ingresses}/{name}", {"metadata": {"annotations": {key: value}}}
        )

    def delete(self, name: str) -> None:
        self.kube.delete(f"{self._ingresses}/{name}")

    def records(self) -> dict[str, dict[str, Any]]:
        """The controller's BackendTimeout records in this namespace, by backend name."""
        items = self.kube.get(f"/apis/{GROUP}/{VERSION}/namespaces/{self.ns}/{PLURAL}")["items"]
        return {i["spec"]["backend"]["name"]: i["spec"] for i in items}

    def events(self, name: str, reason: str | None = None) -> list[dict[str, Any]]:
        items = self.kube.get(
            f"/api/v1/namespaces/{self.ns}/events",
            {"fieldSelector": f"involvedObject.name={name}"},
        )["items"]
        return [e for e in items if reason is None or e["reason"] == reason]
