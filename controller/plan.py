"""The decisions, pure: Ingresses + backend facts + what we applied before -> a plan.

No I/O here. ``backends_to_read`` says which backend services one reconcile
must look at; ``decide`` says what to write to each, what to remember, and
which Events to record. Ownership, shared backends (largest wins), restores
and the stop-fighting rule all live here, so they are table-tested.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from controller.annotations import Invalid, is_gce, parse_backends, parse_timeout, scope
from controller.ingress import Ingress
from controller.model import Backend, BackendRef

# The default backend ingress-gce adds to every load balancer's backends
# annotation: never ours to change from a user namespace, and not worth a warning.
CLUSTER_DEFAULT_BACKEND = "kube-system/default-http-backend"
EventType = Literal["Normal", "Warning"]
NORMAL: EventType = "Normal"
WARNING: EventType = "Warning"


@dataclass(frozen=True)
class Settings:
    timeout_key: str
    max_timeout: int = 86400
    default_timeout: int = 30
    region: str = ""
    namespaces: frozenset[str] = frozenset()  # empty: every namespace
    fight_limit: int = 3  # overrides by someone else before we stop re-applying


@dataclass(frozen=True)
class Record:
    """What the controller remembers of a backend service it manages.

    ``applied`` is the value it wrote (None: it has written nothing yet);
    ``claims`` maps each Ingress key to the seconds it asked for.
    """

    applied: int | None
    claims: tuple[tuple[str, int], ...]
    overridden: int = 0

    def claim_of(self, key: str) -> int | None:
        return dict(self.claims).get(key)


@dataclass(frozen=True)
class Note:
    """An Event to record on the Ingress ``key``."""

    key: str
    type: EventType
    reason: str
    message: str


@dataclass(frozen=True)
class Step:
    """What to do to one backend service: write ``set_to`` (if any), then remember
    ``record`` and record ``notes``; all three only once the write succeeded."""

    ref: BackendRef
    set_to: int | None
    record: Record | None
    notes: tuple[Note, ...] = ()
    was: int | None = None
    restore: bool = False


@dataclass(frozen=True)
class Plan:
    """Steps per backend service, and notes about the Ingress's own input."""

    steps: tuple[Step, ...] = ()
    notes: tuple[Note, ...] = ()


@dataclass(frozen=True)
class Wish:
    """One Ingress's request. ``keep``: its input is invalid, so what it had stays."""

    key: str
    namespace: str
    services: frozenset[str]
    seconds: int = 0
    refs: tuple[BackendRef, ...] = ()
    keep: bool = False
    problems: tuple[Note, ...] = field(default=(), compare=False)

    def owns(self, backend: Backend) -> bool:
        return backend.service in {f"{self.namespace}/{s}" for s in self.services}


def wish(ingress: Ingress | None, settings: Settings) -> Wish | None:
    """What one Ingress asks for, or None when it asks nothing of us."""
    if ingress is None or ingress.timeout is None:
        return None
    return _wish(ingress, settings)


# Every decide() looks at every cached Ingress; parsing each one's annotations
# again each time dominated its cost at thousands of annotated Ingresses (see
# bench/). The key is the whole frozen record, so an entry is never stale.
@functools.lru_cache(maxsize=16384)
def _wish(ingress: Ingress, settings: Settings) -> Wish | None:
    assert ingress.timeout is not None
    if settings.namespaces and ingress.namespace not in settings.namespaces:
        return None
    if not is_gce(ingress.ingress_class, ingress.class_name):
        return None
    base = Wish(ingress.key, ingress.namespace, ingress.services)
    try:
        seconds = parse_timeout(
            ingress.timeout, key=settings.timeout_key, max_timeout=settings.max_timeout
        )
    except Invalid as e:
        return _keep(base, "InvalidTimeout", str(e))
    try:
        names = parse_backends(ingress.backends or "")
    except Invalid as e:
        return _keep(base, "InvalidBackends", str(e))
    where = scope(ingress.ingress_class, settings.region)
    if not where:
        message = (
            f"the backend services of a {ingress.ingress_class} Ingress are regional, and "
            "the controller does not know its region: set --region"
        )
        return _keep(base, "RegionUnknown", message)
    refs = tuple(BackendRef(where, name) for name in names)
    return Wish(base.key, base.namespace, base.services, seconds, refs)


def _keep(base: Wish, reason: str, message: str) -> Wish:
    note = Note(base.key, WARNING, reason, message)
    return Wish(base.key, base.namespace, base.services, keep=True, problems=(note,))


def backends_to_read(
    key: str,
    ingresses: Mapping[str, Ingress],
    records: Mapping[BackendRef, Record],
    settings: Settings,
) -> set[BackendRef]:
    """The backend services a reconcile of ``key`` must look at."""
    mine = wish(ingresses.get(key), settings)
    refs = set(mine.refs) if mine else set()
    refs.update(ref for ref, rec in records.items() if rec.claim_of(key) is not None)
    return refs


def decide(
    key: str,
    ingresses: Mapping[str, Ingress],
    facts: Mapping[BackendRef, Backend | None],
    records: Mapping[BackendRef, Record],
    settings: Settings,
) -> Plan:
    """The plan for one reconcile of ``key`` over the backend services in ``facts``."""
    wishes = [w for w in (wish(i, settings) for i in ingresses.values()) if w is not None]
    mine = next((w for w in wishes if w.key == key), None)
    notes: list[Note] = list(mine.problems) if mine else []
    steps: list[Step] = []
    for ref in sorted(facts):
        fact, record = facts[ref], records.get(ref)
        if fact is None:
            steps.append(Step(ref, None, None))
            if mine and ref in mine.refs:
                message = f"backend service {ref} does not exist (yet); looked at again at resync"
                notes.append(Note(key, WARNING, "BackendNotFound", message))
            continue
        claims, refused = _claims(ref, fact, wishes, record)
        if mine and mine.key in refused:
            notes.append(Note(key, WARNING, "ForeignBackend", _foreign(ref, fact, mine)))
        steps.append(_decide_backend(key, fact, record, claims, settings))
    return Plan(tuple(steps), tuple(dict.fromkeys(notes)))


def _claims(
    ref: BackendRef, fact: Backend, wishes: Iterable[Wish], record: Record | None
) -> tuple[dict[str, int], set[str]]:
    claims: dict[str, int] = {}
    refused: set[str] = set()
    for w in wishes:
        if w.keep:
            kept = record.claim_of(w.key) if record else None
            if kept is not None:
                claims[w.key] = kept
        elif ref in w.refs:
            if w.owns(fact):
                claims[w.key] = w.seconds
            elif fact.service != CLUSTER_DEFAULT_BACKEND:
                refused.add(w.key)
    return claims, refused


def _decide_backend(
    key: str,
    fact: Backend,
    record: Record | None,
    claims: dict[str, int],
    settings: Settings,
) -> Step:
    ref, now = fact.ref, fact.timeout_sec
    if not claims:
        return _release(key, fact, record, settings)
    desired = max(claims.values())
    notes = _conflicts(ref, claims, desired)
    ours = record is not None and record.applied == desired
    overridden = record.overridden if record is not None and ours else 0
    if ours and now != desired:
        overridden += 1
    pairs = tuple(sorted(claims.items()))
    if overridden >= settings.fight_limit:
        message = (
            f"timeoutSec of backend service {ref} was changed to {now}s by someone else "
            f"{overridden} times; no longer re-applying {desired}s (change the annotation "
            "to apply again)"
        )
        notes += [Note(k, WARNING, "TimeoutOverridden", message) for k in sorted(claims)]
        return Step(ref, None, Record(desired, pairs, overridden), tuple(notes))
    applied = desired if record is not None or now != desired else None
    if now == desired:
        return Step(ref, None, Record(applied, pairs, overridden), tuple(notes))
    message = f"set timeoutSec of backend service {ref} to {desired}s (was {now}s)"
    notes += [Note(k, NORMAL, "TimeoutApplied", message) for k in sorted(claims)]
    return Step(ref, desired, Record(desired, pairs, overridden), tuple(notes), was=now)


def _release(key: str, fact: Backend, record: Record | None, settings: Settings) -> Step:
    """Nobody asks any more: put the default back if the value is still ours."""
    ref, now, default = fact.ref, fact.timeout_sec, settings.default_timeout
    if record is None or record.applied is None or now == default:
        return Step(ref, None, None)
    if now == record.applied:
        message = f"restored timeoutSec of backend service {ref} to {default}s (was {now}s)"
        note = Note(key, NORMAL, "TimeoutRestored", message)
        return Step(ref, default, None, (note,), was=now, restore=True)
    message = (
        f"left timeoutSec of backend service {ref} at {now}s: it is not the {record.applied}s "
        "this controller set, so someone else changed it"
    )
    return Step(ref, None, None, (Note(key, NORMAL, "RestoreSkipped", message),))


def _conflicts(ref: BackendRef, claims: dict[str, int], desired: int) -> list[Note]:
    if len(set(claims.values())) < 2:
        return []
    notes = []
    for k in sorted(claims):
        others = ", ".join(f"{o} ({s}s)" for o, s in sorted(claims.items()) if o != k)
        message = (
            f"backend service {ref} is shared with {others}; the largest timeout, "
            f"{desired}s, applies"
        )
        notes.append(Note(k, WARNING, "SharedBackendConflict", message))
    return notes


def _foreign(ref: BackendRef, fact: Backend, mine: Wish) -> str:
    owner = fact.service or "no Kubernetes service"
    return (
        f"refused to change backend service {ref}: it serves {owner}, which is not a "
        f"Service this Ingress routes to in namespace {mine.namespace}"
    )
