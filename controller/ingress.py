"""What the controller keeps of an Ingress: the parsed facts its decisions need.

``from_object`` runs once per object version, in the informer: it parses and
bounds the tenant's annotations there, so the store holds a few small fields
per Ingress (never a raw annotation) and a bad value is a ``Problem``, never
an exception that reaches anyone else's work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controller.annotations import (
    BACKENDS_ANNOTATION,
    CLASS_ANNOTATION,
    Invalid,
    is_gce,
    parse_backends,
    parse_timeout,
    scope,
)
from controller.model import BackendRef, Settings

# Distinct Services one Ingress may route to and still be kept. A spec may name thousands
# (up to the apiserver's object size); GCP's URL maps allow far fewer, so a larger one is
# refused rather than held in memory for every edit.
MAX_SERVICES = 256


@dataclass(frozen=True)
class Problem:
    """Why an Ingress's own input was refused: a Warning Event's reason and message."""

    reason: str
    message: str


@dataclass(frozen=True)
class Ingress:
    """A GCE Ingress as the decisions see it.

    ``seconds`` is the valid timeout it asks for on ``refs``; None with no
    ``problem`` means it asks nothing. With a ``problem`` its input is
    invalid, and what it had asked before stays (see plan.claims_on).
    """

    namespace: str
    name: str
    uid: str
    services: frozenset[str] = frozenset()  # Service names the spec routes to
    refs: tuple[BackendRef, ...] = ()
    seconds: int | None = None
    problem: Problem | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def claims(self, ref: BackendRef) -> bool:
        """Whether its own, valid input asks for a timeout on ``ref``."""
        return self.problem is None and self.seconds is not None and ref in self.refs


def from_object(obj: dict[str, Any], settings: Settings) -> Ingress | None:
    """The facts of a networking.k8s.io/v1 Ingress; None when it is not ours to watch
    (another class, or a namespace outside ``settings.namespaces``)."""
    meta = obj.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    spec = obj.get("spec") or {}
    namespace = str(meta.get("namespace", ""))
    ingress_class = _text(annotations.get(CLASS_ANNOTATION))
    class_name = spec.get("ingressClassName")
    if settings.namespaces and namespace not in settings.namespaces:
        return None
    if not is_gce(ingress_class, class_name if isinstance(class_name, str) else None):
        return None
    ingress = Ingress(namespace, str(meta.get("name", "")), str(meta.get("uid", "")))
    raw = annotations.get(settings.timeout_key)
    if raw is None:
        return ingress
    services = frozenset(_service_names(spec))
    if len(services) > MAX_SERVICES:
        message = (
            f"the Ingress routes to {len(services)} Services, more than the {MAX_SERVICES} "
            "this controller accepts; nothing is applied for it"
        )
        return _refused(ingress, frozenset(), "InvalidSpec", message)
    try:
        seconds = parse_timeout(
            _text(raw) or "", key=settings.timeout_key, max_timeout=settings.max_timeout
        )
    except Invalid as e:
        return _refused(ingress, services, "InvalidTimeout", str(e))
    try:
        names = parse_backends(
            _text(annotations.get(BACKENDS_ANNOTATION)) or "", max_backends=settings.max_backends
        )
    except Invalid as e:
        return _refused(ingress, services, "InvalidBackends", str(e))
    where = scope(ingress_class, settings.region)
    if not where:
        message = (
            f"the backend services of a {ingress_class} Ingress are regional, and "
            "the controller does not know its region: set --region"
        )
        return _refused(ingress, services, "RegionUnknown", message)
    refs = tuple(BackendRef(where, name) for name in names)
    return Ingress(ingress.namespace, ingress.name, ingress.uid, services, refs, seconds)


def _refused(ingress: Ingress, services: frozenset[str], reason: str, message: str) -> Ingress:
    problem = Problem(reason, message)
    return Ingress(ingress.namespace, ingress.name, ingress.uid, services, problem=problem)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _service_names(spec: dict[str, Any]) -> set[str]:
    backends = [spec.get("defaultBackend") or {}]
    rules = spec.get("rules")
    for rule in rules if isinstance(rules, list) else []:
        http = rule.get("http") if isinstance(rule, dict) else None
        paths = http.get("paths") if isinstance(http, dict) else None
        for path in paths if isinstance(paths, list) else []:
            backends.append(path.get("backend") or {} if isinstance(path, dict) else {})
    return {
        str(b["service"]["name"])
        for b in backends
        if isinstance(b, dict) and isinstance(b.get("service"), dict) and b["service"].get("name")
    }
