"""What both peers share: google-api-python-client as the product uses it (so they differ
from it in design, not in the library), and parsing what users and ingress-gce write.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import google_auth_httplib2
import httplib2
from google.auth.credentials import AnonymousCredentials
from googleapiclient import discovery

TIMEOUT_KEY = "ingress-timeout.dev/timeout"
BACKENDS_KEY = "ingress.kubernetes.io/backends"
CLASS_KEY = "kubernetes.io/ingress.class"
GCE_CLASSES = frozenset({"gce", "gce-internal", "gce-regional-external"})
_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


class ComputeClient:
    """Global backend services of one project on a loopback endpoint (anonymous)."""

    def __init__(self, endpoint: str, project: str) -> None:
        self.project = project
        self._local = threading.local()
        # Built once: the discovery document is large; each thread gets its own
        # transport because httplib2 objects are not thread-safe.
        api = discovery.build(
            "compute",
            "v1",
            http=self.http(),
            client_options={"api_endpoint": endpoint},
            static_discovery=True,
            cache_discovery=False,
        )
        self.backends = api.backendServices()
        self.operations = api.globalOperations()

    def http(self) -> google_auth_httplib2.AuthorizedHttp:
        http = getattr(self._local, "http", None)
        if http is None:
            http = google_auth_httplib2.AuthorizedHttp(
                AnonymousCredentials(),
                http=httplib2.Http(timeout=150),
            )
            self._local.http = http
        return http

    def call(self, request: Any) -> dict[str, Any]:
        return dict(request.execute(http=self.http(), num_retries=3))


def parse_timeout(value: str) -> int | None:
    """Whole seconds or 1h30m-style durations, 1 s to 1 day; None when invalid."""
    text = value.strip()
    if text.isascii() and text.isdigit():
        seconds = int(text)
    else:
        m = _DURATION.fullmatch(text)
        if m is None or not text:
            return None
        h, mi, s = (int(g or 0) for g in m.groups())
        seconds = h * 3600 + mi * 60 + s
    return seconds if 1 <= seconds <= 86400 else None


def is_gce(annotations: dict[str, str], spec: dict[str, Any]) -> bool:
    cls = annotations.get(CLASS_KEY)
    return cls in GCE_CLASSES if cls is not None else not spec.get("ingressClassName")


def backend_names(annotations: dict[str, str]) -> list[str]:
    """The backend-service names ingress-gce listed; [] when absent or malformed."""
    try:
        value = json.loads(annotations.get(BACKENDS_KEY) or "{}")
    except ValueError:
        return []
    return [str(k) for k in value] if isinstance(value, dict) else []


def owned_by(description: str, namespace: str, services: set[str]) -> bool:
    """ingress-gce's description names the Service a backend serves: it must be ours."""
    try:
        owner = json.loads(description or "{}").get("kubernetes.io/service-name", "")
    except (ValueError, AttributeError):
        return False
    ns, _, name = str(owner).partition("/")
    return ns == namespace and name in services


def services_of(spec: dict[str, Any]) -> set[str]:
    """Every Service an Ingress routes to: the default backend and each rule's paths."""
    backends = [spec.get("defaultBackend") or {}]
    for rule in spec.get("rules") or []:
        backends += [p.get("backend") or {} for p in (rule.get("http") or {}).get("paths") or []]
    return {b["service"]["name"] for b in backends if "service" in b}
