"""Plain data shared by every stage: identities, facts, settings.

Owns the identity of a backend service (BackendRef), what we know of one
(Backend), the decision settings (Settings), which names belong to this
cluster, and the parsing of the JSON description ingress-gce writes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

GLOBAL = "global"
SERVICE_NAME_KEY = "kubernetes.io/service-name"
SERVICE_PORT_KEY = "kubernetes.io/service-port"
# Namespace and Service names are both DNS labels.
_SERVICE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_INSTANCE_GROUP_NAME = re.compile(r"k8s-be-[0-9]{1,5}--([0-9a-z]{1,16})", re.ASCII)
# A Service port: a number, or an IANA service name (at most 15 characters).
_PORT = re.compile(r"[1-9][0-9]{0,4}|[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?", re.ASCII)
_GO_PORT = re.compile(r"&ServiceBackendPort\{Name:([^,]*),Number:([0-9]*),\}", re.ASCII)
# The cluster uid as ingress-gce keeps it in kube-system/ingress-uid.
CLUSTER_UID = re.compile(r"[0-9a-z]{8,16}", re.ASCII)


@dataclass(frozen=True, order=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class Backend:
    """A backend service as last seen in Compute.

    `service` is "<namespace>/<service>" from the description ingress-gce
    writes, or None when the description is absent or not that JSON.
    `fingerprint` is "" when the value is known (we wrote it) but the
    fingerprint is not: a write must read it first. `port` is the Service
    port as the Ingress names it (number or name), from the description too.
    The values of the managed fields (see fields.py) are attributes named
    after them.
    """

    ref: BackendRef
    timeout_sec: int
    fingerprint: str
    service: str | None
    draining_sec: int = 0
    port: str | None = None

    def value(self, field: str) -> int:
        """The value of the managed field ``field`` ("timeout", "draining")."""
        return int(getattr(self, _ATTRIBUTES[field]))

    def with_values(self, values: Mapping[str, int]) -> Backend:
        """A copy with the managed fields of ``values`` (name -> value) set."""
        changes: dict[str, Any] = {_ATTRIBUTES[name]: v for name, v in values.items()}
        return replace(self, **changes)


# Managed field -> the Backend attribute holding its value.
_ATTRIBUTES = {"timeout": "timeout_sec", "draining": "draining_sec"}


@dataclass(frozen=True)
class Settings:
    """What the decisions depend on besides the facts; one per controller."""

    timeout_key: str
    cluster_uid: str
    max_timeout: int = 86400
    default_timeout: int = 30
    region: str = ""
    namespaces: frozenset[str] = frozenset()  # empty: every namespace
    fight_limit: int = 3  # overrides by someone else, within fight_window, before a stand-off
    fight_window: float = 3600.0
    intent_ttl: float = 1800.0  # an unconfirmed write older than this did not happen
    max_backends: int = 64  # backend services one Ingress may name
    default_draining_timeout: int = 0  # connectionDraining.drainingTimeoutSec restored

    def key(self, suffix: str) -> str:
        """The annotation ``<prefix>/<suffix>``, the prefix being ``timeout_key``'s."""
        return f"{self.timeout_key.rpartition('/')[0]}/{suffix}"


def of_cluster(name: str, cluster_uid: str) -> bool:
    """Whether ingress-gce of the cluster ``cluster_uid`` made a backend service so named.

    NEG backends are ``k8s1-<uid8>-...``; instance-group backends are
    ``k8s-be-<nodePort>--<uid>``. Other clusters of the project make the
    same names with their own uid, and only the name says which is which.
    """
    if not CLUSTER_UID.fullmatch(cluster_uid):
        return False
    if name.startswith(f"k8s1-{cluster_uid[:8]}-"):
        return True
    match = _INSTANCE_GROUP_NAME.fullmatch(name)
    return match is not None and match.group(1) == cluster_uid


def service_from_description(description: str | None) -> str | None:
    """Return "<namespace>/<service>" from an ingress-gce description, else None.

    The description is writable by anyone with Compute access, so every
    malformed shape (not JSON, not an object, missing or odd key) gives None.
    """
    value = _description(description).get(SERVICE_NAME_KEY)
    if not isinstance(value, str) or not _SERVICE_NAME.fullmatch(value):
        return None
    return value


def port_from_description(description: str | None) -> str | None:
    """The Service port ("80", "http") an ingress-gce description names, else None.

    ingress-gce writes the port as the Ingress names it: older versions as the
    bare number or name, newer ones as Go prints the ServiceBackendPort,
    ``&ServiceBackendPort{Name:,Number:80,}``.
    """
    value = _description(description).get(SERVICE_PORT_KEY)
    if not isinstance(value, str):
        return None
    match = _GO_PORT.fullmatch(value)
    if match is not None:
        value = match.group(1) or match.group(2)
    return value if _PORT.fullmatch(value) else None


def _description(description: str | None) -> dict[str, object]:
    if not isinstance(description, str) or not description or len(description) > 4096:
        return {}
    try:
        data = json.loads(description)
    except (ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}
