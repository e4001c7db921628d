"""Plain data shared between the GCP client, the planner and the reconciler.

Owns the identity of a backend service (BackendRef), what we know of one
(Backend), and the parsing of the JSON description ingress-gce writes on it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

GLOBAL = "global"
SERVICE_NAME_KEY = "kubernetes.io/service-name"
# Namespace and Service names are both DNS labels.
_SERVICE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True, order=True)
class BackendRef:
    """A backend service by scope and name.

    `scope` is "global" or a region name such as "europe-west1".
    """

    scope: str
    name: str

    @property
    def regional(self) -> bool:
        """True for a regionBackendServices resource."""
        return self.scope != GLOBAL

    def __str__(self) -> str:
        """The resource path below the project: "global/NAME" or "regions/REGION/NAME"."""
        if self.regional:
            return f"regions/{self.scope}/{self.name}"
        return f"{GLOBAL}/{self.name}"


@dataclass(frozen=True)
class Backend:
    """A backend service as last read from Compute.

    `service` is "<namespace>/<service>" from the description ingress-gce
    writes, or None when the description is absent or not that JSON.
    """

    ref: BackendRef
    timeout_sec: int
    fingerprint: str
    service: str | None


def service_from_description(description: str | None) -> str | None:
    """Return "<namespace>/<service>" from an ingress-gce description, else None.

    The description is writable by anyone with Compute access, so every
    malformed shape (not JSON, not an object, missing or odd key) gives None.
    """
    if not isinstance(description, str) or not description:
        return None
    try:
        data = json.loads(description)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    value = data.get(SERVICE_NAME_KEY)
    if not isinstance(value, str) or not _SERVICE_NAME.fullmatch(value):
        return None
    return value
