"""What the controller keeps of an Ingress: the parsed facts its decisions need.

``from_object`` runs once per object version, in the informer: it parses and
bounds the tenant's annotations there, so the store holds a few small fields
per Ingress (never a raw annotation) and a bad value is a ``Problem``, never
an exception that reaches anyone else's work.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, replace
from typing import Any, Literal

from controller.annotations import (
    BACKENDS_ANNOTATION,
    CLASS_ANNOTATION,
    Invalid,
    is_gce,
    parse_backends,
    parse_duration,
    parse_per_service,
    scope,
)
from controller.fields import FIELDS, Field
from controller.model import BackendRef, Settings

# Distinct Services one Ingress may route to and still be kept. A spec may name thousands
# (up to the apiserver's object size); GCP's URL maps allow far fewer, so a larger one is
# refused rather than held in memory for every edit.
MAX_SERVICES = 256
# The reason of every Warning about a refused value, whichever field it is for.
INVALID_TIMEOUT = "InvalidTimeout"
# The facts of every Ingress stay in memory (10,000 and more under a 128 MiB limit), so
# they have slots, and what many Ingresses hold alike is one object: the namespace, an
# Ask of one value (see _every), a backend service named by many (see _ref: the cluster
# default backend is named on every Ingress).
SHARED = 256  # distinct Asks and backend services kept to be handed out again


@dataclass(frozen=True, slots=True)
class Problem:
    """Why an Ingress's own input was refused: a Warning Event's reason and message."""

    reason: str
    message: str


KEEP: Literal["keep"] = "keep"


@dataclass(frozen=True, slots=True)
class Ask:
    """What an Ingress asks of one managed field.

    ``every``: seconds for every backend service it names (None: nothing);
    ``by_service``: selector (``"ws"`` or ``"ws:8080"``) -> seconds, overriding
    ``every`` for that Service's backend services; ``kept``: parts of its input
    refused in this version, for which what it asked before stays: a selector,
    ``""`` for ``every``, ``"*"`` for the whole field.
    """

    every: int | None = None
    by_service: tuple[tuple[str, int], ...] = ()
    kept: frozenset[str] = frozenset()

    def of(self, service: str | None, port: str | None) -> int | Literal["keep"] | None:
        """Seconds asked of the backend service of Service ``service`` (its bare name)
        and ``port``, None for nothing, KEEP for what it asked before.
        The most specific entry wins: ``name:port``, then ``name``, then ``every``."""
        if "*" in self.kept:
            return KEEP
        values = dict(self.by_service)
        selectors = [f"{service}:{port}"] if service and port else []
        selectors += [service] if service else []
        for selector in [*selectors, ""]:
            if selector in self.kept:
                return KEEP
            if selector in values:
                return values[selector]
        return self.every


@dataclass(frozen=True, slots=True)
class Ingress:
    """A GCE Ingress as the decisions see it.

    ``asks`` says, per managed field it asks anything of, what it asks of
    ``refs``. With a ``problem`` its input is refused as a whole, and what it
    had asked before stays for every field (see plan.claims_on); ``warnings``
    are the parts refused on their own (a field's value, a map entry).
    """

    namespace: str
    name: str
    uid: str
    services: frozenset[str] = frozenset()  # Service names the spec routes to
    refs: tuple[BackendRef, ...] = ()
    asks: tuple[tuple[str, Ask], ...] = ()  # field name -> what it asks of it
    problem: Problem | None = None
    warnings: tuple[Problem, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def problems(self) -> tuple[Problem, ...]:
        """Everything refused of its input, each a Warning to tell."""
        return ((self.problem,) if self.problem else ()) + self.warnings

    def ask(self, field: str) -> Ask | None:
        return dict(self.asks).get(field)

    def claims(self, ref: BackendRef) -> bool:
        """Whether its own, accepted input asks anything of ``ref``."""
        return self.problem is None and bool(self.asks) and ref in self.refs


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
    ingress = Ingress(sys.intern(namespace), str(meta.get("name", "")), str(meta.get("uid", "")))
    keys = [settings.key(f.annotation) for f in FIELDS]
    keys += [settings.key(f.per_service) for f in FIELDS if f.per_service]
    if not any(k in annotations for k in keys):
        return ingress
    routes = _routes(spec)
    services = frozenset(routes)
    if len(services) > MAX_SERVICES:
        message = (
            f"the Ingress routes to {len(services)} Services, more than the {MAX_SERVICES} "
            "this controller accepts; nothing is applied for it"
        )
        return _refused(ingress, frozenset(), "InvalidSpec", message)
    asks, warnings = [], []
    for field in FIELDS:
        ask, told = _ask(field, annotations, routes, settings)
        if ask is not None:
            asks.append((field.name, ask))
        warnings += [Problem(INVALID_TIMEOUT, m) for m in told]
    ingress = replace(ingress, services=services, asks=tuple(asks), warnings=tuple(warnings))
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
    return replace(ingress, refs=tuple(_ref(where, name) for name in names))


def _ask(
    field: Field,
    annotations: dict[str, Any],
    routes: dict[str, frozenset[str]],
    settings: Settings,
) -> tuple[Ask | None, list[str]]:
    """What the Ingress asks of ``field`` (None: nothing), and the Warnings for what
    of it was refused."""
    key = settings.key(field.annotation)
    minimum, maximum = field.minimum, field.maximum(settings)
    every, kept, told = None, set(), []
    raw = annotations.get(key)
    if raw is not None:
        try:
            every = parse_duration(
                _text(raw) or "", key=key, minimum=minimum, maximum=maximum, noun=field.noun
            )
        except Invalid as e:
            kept.add("")
            told.append(str(e))
    by_service: tuple[tuple[str, int], ...] = ()
    map_key = settings.key(field.per_service) if field.per_service else None
    raw_map = annotations.get(map_key) if map_key else None
    if map_key is not None and raw_map is not None:
        try:
            parsed = parse_per_service(
                _text(raw_map) or "", key=map_key, minimum=minimum, maximum=maximum, routes=routes
            )
        except Invalid as e:
            kept.add("*")
            told.append(str(e))
        else:
            by_service, told = parsed.values, told + list(parsed.refused)
            kept |= parsed.invalid
    if every is None and not by_service and not kept:
        return None, told
    if not by_service and not kept:
        return _every(every), told
    return Ask(every, by_service, frozenset(kept)), told


@functools.lru_cache(maxsize=SHARED)
def _every(seconds: int | None) -> Ask:
    """The Ask of ``seconds`` for every backend service, one object for every Ingress
    that asks the same (Asks are frozen)."""
    return Ask(seconds)


@functools.lru_cache(maxsize=SHARED)
def _ref(scope: str, name: str) -> BackendRef:
    """The backend service ``name`` in ``scope``: one object for the Ingresses that name
    it one after another, as every Ingress names the cluster default backend."""
    return BackendRef(sys.intern(scope), name)


def _refused(ingress: Ingress, services: frozenset[str], reason: str, message: str) -> Ingress:
    """The Ingress with its whole input refused: no backend services, every field kept."""
    return replace(ingress, services=services, refs=(), problem=Problem(reason, message))


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _routes(spec: dict[str, Any]) -> dict[str, frozenset[str]]:
    """Service name -> the ports (numbers or names, as written) the spec routes to it by."""
    backends = [spec.get("defaultBackend") or {}]
    rules = spec.get("rules")
    for rule in rules if isinstance(rules, list) else []:
        http = rule.get("http") if isinstance(rule, dict) else None
        paths = http.get("paths") if isinstance(http, dict) else None
        for path in paths if isinstance(paths, list) else []:
            backends.append(path.get("backend") or {} if isinstance(path, dict) else {})
    routes: dict[str, set[str]] = {}
    for b in backends:
        service = b.get("service") if isinstance(b, dict) else None
        if not isinstance(service, dict) or not service.get("name"):
            continue
        ports = routes.setdefault(str(service["name"]), set())
        port = service.get("port")
        if isinstance(port, dict):
            named = port.get("name") or port.get("number")
            if isinstance(named, str | int) and not isinstance(named, bool) and named:
                ports.add(str(named)[:16])
    return {name: frozenset(ports) for name, ports in routes.items()}
