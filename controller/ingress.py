"""What the controller keeps of an Ingress: a small frozen record, not the API object.

The informer stores these (built by ``from_object``), so memory grows with the
handful of fields the decisions need rather than with whole Ingresses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controller.annotations import BACKENDS_ANNOTATION, CLASS_ANNOTATION


@dataclass(frozen=True)
class Ingress:
    namespace: str
    name: str
    uid: str
    ingress_class: str | None  # the kubernetes.io/ingress.class annotation
    class_name: str | None  # spec.ingressClassName
    timeout: str | None  # raw <prefix>/timeout, validated later
    backends: str | None  # raw ingress.kubernetes.io/backends
    services: frozenset[str]  # Service names the spec routes to

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def from_object(obj: dict[str, Any], *, timeout_key: str) -> Ingress:
    """Keep only what the decisions need from a networking.k8s.io/v1 Ingress."""
    meta = obj.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    spec = obj.get("spec") or {}
    return Ingress(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        ingress_class=annotations.get(CLASS_ANNOTATION),
        class_name=spec.get("ingressClassName"),
        timeout=annotations.get(timeout_key),
        backends=annotations.get(BACKENDS_ANNOTATION),
        services=frozenset(_service_names(spec)),
    )


def _service_names(spec: dict[str, Any]) -> set[str]:
    backends = [spec.get("defaultBackend") or {}]
    for rule in spec.get("rules") or []:
        for path in (rule.get("http") or {}).get("paths") or []:
            backends.append(path.get("backend") or {})
    return {
        str(b["service"]["name"])
        for b in backends
        if isinstance(b.get("service"), dict) and b["service"].get("name")
    }
