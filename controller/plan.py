"""The decisions, pure: one backend service's facts -> what to write and remember.

No I/O, no clock, no randomness: ``decide`` takes the backend as last read,
the Ingresses that claim it, the record of what this controller did before,
the time and a fresh requestId, and returns one Decision. Ownership (this
cluster, this namespace, this Ingress's Services), shared backends (largest
wins), restores, crash recovery of an unconfirmed write and the
stop-fighting rule all live here, so they are table- and property-tested.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

from controller.ingress import KEEP, Ingress
from controller.model import Backend, BackendRef, Settings, of_cluster

# The default backend ingress-gce adds to every load balancer's backends
# annotation: never ours to change from a user namespace, and not worth a warning.
CLUSTER_DEFAULT_BACKEND = "kube-system/default-http-backend"
EventType = Literal["Normal", "Warning"]
# The result of a record whose intent is a restore of the default.
RESTORING = "Restoring"
NORMAL: EventType = "Normal"
WARNING: EventType = "Warning"
# Events a record keeps for its last write: one a claimant, bounded so that a backend
# shared by many Ingresses keeps a small record (the rest are told, not kept).
MAX_OWED = 16


@dataclass(frozen=True)
class Intent:
    """A write about to be sent: recorded before the PATCH, so that a crash
    between the PATCH and its outcome is recognised after a restart."""

    value: int
    was: int
    request_id: str
    at: float  # Unix time it was decided


@dataclass(frozen=True)
class Record:
    """What the controller remembers of one backend service it manages.

    ``applied`` is the value it wrote and saw done (None: the value there is
    not its own); ``claims`` maps each Ingress key to the seconds it asked;
    ``desired`` is the largest claim when last decided. A value someone else
    wrote since, even one equal to ours, is theirs: ``applied`` lasts only
    while every read shows that very value.

    ``notes`` are the Events its last write owes (TimeoutApplied, TimeoutRestored),
    decided at ``notes_at``: written with the intent, so that a write found done
    later (a kill, a failed record write, a lost Lease) is still told, and kept
    with the outcome, so that a term that begins can tell what the apiserver does
    not have yet. Never more than ``MAX_OWED``.
    """

    desired: int | None
    applied: int | None
    claims: tuple[tuple[str, int], ...] = ()
    intent: Intent | None = None
    overridden: int = 0
    overridden_at: float = 0.0
    result: str = ""
    notes: tuple[Note, ...] = ()
    notes_at: float = 0.0

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
class Decision:
    """What to do to one backend service.

    Remember ``record`` (None: forget it) first; then, if ``write`` is set,
    PATCH it with ``record.intent``'s requestId and, once the operation is
    done, remember ``confirmed(decision)``. ``notes`` are recorded once the
    whole decision has taken effect.
    """

    ref: BackendRef
    write: int | None
    record: Record | None
    notes: tuple[Note, ...] = ()
    was: int | None = None
    restore: bool = False
    # Unix time at which this backend must be looked at again although nothing
    # changes (a stand-off ends, a write that may still land is given up): no
    # promise waits for a user's next edit.
    recheck: float | None = None


def decide(
    ref: BackendRef,
    fact: Backend | None,
    claimants: Mapping[str, Ingress | None],
    record: Record | None,
    settings: Settings,
    *,
    now: float,
    request_id: str,
) -> Decision:
    """The decision for ``ref``. ``claimants`` maps every Ingress key that claims it,
    or claimed it in ``record``, to its current facts (None: deleted or no longer ours)."""
    if fact is None:
        missing = tuple(
            Note(k, WARNING, "BackendNotFound", f"backend service {ref} does not exist (yet)")
            for k, ing in sorted(claimants.items())
            if ing is not None and ing.claims(ref)
        )
        return Decision(ref, None, None, missing)
    # A write found done that was never confirmed (a kill, a failed record write, a
    # lost Lease came between): its Events were never told, and are owed now.
    owed = (
        record.notes if record and record.intent and record.intent.value == fact.timeout_sec else ()
    )
    record = settle(record, fact.timeout_sec, now, settings)
    watched = {k: ing for k, ing in claimants.items() if in_scope(k, settings)}
    claims, refused = claims_on(fact, watched, record, settings)
    notes = [*owed, *(Note(k, WARNING, "ForeignBackend", _foreign(ref)) for k in sorted(refused))]
    if _claimed_outside(fact, record, settings):
        # Claimed from a namespace this controller no longer watches (and a backend
        # serves one namespace's Service, so no watched Ingress can own it): whoever
        # watches that namespace decides. Neither a write nor a restore, the record kept.
        return Decision(ref, None, record, tuple(notes))
    if not claims:
        return _release(fact, watched, record, settings, notes, now, request_id)
    return _hold(fact, claims, record, settings, notes, now, request_id)


def in_scope(key: str, settings: Settings) -> bool:
    """Whether the Ingress ``key`` (namespace/name) is in a namespace this controller
    watches. One outside is unknown, never taken as deleted."""
    return not settings.namespaces or key.partition("/")[0] in settings.namespaces


def _claimed_outside(fact: Backend, record: Record | None, settings: Settings) -> bool:
    """The record holds a claim from a namespace out of scope that still fits the
    backend as it is now: this cluster's, for a Service of that namespace."""
    if record is None or not of_cluster(fact.ref.name, settings.cluster_uid):
        return False
    home = (fact.service or "").partition("/")[0]
    return any(
        not in_scope(key, settings) and key.partition("/")[0] == home for key, _ in record.claims
    )


def settle(record: Record | None, value: int, now: float, settings: Settings) -> Record | None:
    """``record`` with its unconfirmed write resolved by the value now there.

    The value it wanted: the write happened (ours). The value it replaced,
    recently: it may still be on its way, so it stays pending. Anything
    else: someone else wrote since, or it never happened; either way what is
    there is no longer known to be ours (the write may have landed and been
    changed back since), so ``applied`` goes with the intent.
    """
    if record is None or record.intent is None:
        return record
    intent = record.intent
    if value == intent.value:
        return replace(record, applied=value, intent=None)
    if value == intent.was and now - intent.at < settings.intent_ttl:
        return record
    return replace(record, applied=None, intent=None)


def claims_on(
    fact: Backend,
    claimants: Mapping[str, Ingress | None],
    record: Record | None,
    settings: Settings,
) -> tuple[dict[str, int], set[str]]:
    """(Ingress key -> seconds it may ask of ``fact``, keys refused as not owners).

    An Ingress whose input turned invalid keeps what it asked before; every
    claim, kept ones too, is checked against the backend as it is now.
    """
    claims: dict[str, int] = {}
    refused: set[str] = set()
    for key, ingress in claimants.items():
        if ingress is None:
            continue
        ask = ingress.ask("timeout") if ingress.claims(fact.ref) else None
        asked = ask.of(_bare(fact.service, ingress.namespace), fact.port) if ask else None
        if ingress.problem is None and asked != KEEP:
            if asked is None:
                continue
            seconds = asked
        else:
            kept = record.claim_of(key) if record else None
            if kept is None:
                continue
            # Asked under an earlier, higher --max-timeout perhaps: never above today's.
            seconds = min(kept, settings.max_timeout)
        if owns(ingress, fact, settings):
            claims[key] = seconds
        elif fact.service != CLUSTER_DEFAULT_BACKEND:
            refused.add(key)
    return claims, refused


def _bare(service: str | None, namespace: str) -> str | None:
    """The Service name of ``service`` ("ns/name") when it is in ``namespace``."""
    ns, _, name = (service or "").partition("/")
    return name if ns == namespace and name else None


def owns(ingress: Ingress, fact: Backend, settings: Settings) -> bool:
    """This cluster made the backend, for a Service ``ingress`` routes to in its namespace."""
    return of_cluster(fact.ref.name, settings.cluster_uid) and fact.service in {
        f"{ingress.namespace}/{s}" for s in ingress.services
    }


def owner(ref: BackendRef, fact: Backend | None, settings: Settings) -> str | None:
    """The one namespace whose Ingresses may own ``ref`` (its Service's), "" for none
    (another cluster's name, no Service known), None when only a look at the backend
    can tell (``fact`` None). Claims from elsewhere never change its decision."""
    if not of_cluster(ref.name, settings.cluster_uid):
        return ""
    if fact is None:
        return None
    return fact.service.partition("/")[0] if fact.service else ""


def refusal(
    ingress: Ingress, ref: BackendRef, fact: Backend | None, settings: Settings
) -> Note | None:
    """The ForeignBackend warning ``ingress`` gets for asking of ``ref``; None when it
    may, when ``ref`` is the cluster default backend (named on every Ingress by
    ingress-gce, not the tenant), or when it is not known yet (``fact`` None for a
    name of this cluster: the backend's first look tells)."""
    if not ingress.claims(ref):
        return None
    if of_cluster(ref.name, settings.cluster_uid) and (
        fact is None or fact.service == CLUSTER_DEFAULT_BACKEND or owns(ingress, fact, settings)
    ):
        return None
    return Note(ingress.key, WARNING, "ForeignBackend", _foreign(ref))


def confirmed(decision: Decision) -> Record | None:
    """The record once ``decision``'s write is done: the value is ours, or, after a
    restore, nothing is left to remember."""
    record = decision.record
    if decision.restore or record is None or decision.write is None:
        return None if decision.restore else record
    return replace(record, applied=decision.write, intent=None, result="Applied")


def refused(decision: Decision, before: Record | None) -> Record | None:
    """The record once ``decision``'s write was refused for a stale fingerprint (412).

    What it decided stands (what it saw of the value, a revert it counted), but the
    412 proves this send did not land: its intent goes, or a value that someone else
    sets to the same number would pass for ours. Only an earlier send of that very
    request (``before``'s intent, the same requestId) may still land, and stays.
    """
    record = decision.record
    if record is None or record.intent is None:
        return record
    earlier = before.intent if before is not None else None
    if earlier is not None and earlier.request_id == record.intent.request_id:
        return replace(record, intent=earlier)
    return replace(record, intent=None)


def _hold(
    fact: Backend,
    claims: dict[str, int],
    record: Record | None,
    settings: Settings,
    notes: list[Note],
    now: float,
    request_id: str,
) -> Decision:
    ref, value = fact.ref, fact.timeout_sec
    desired = max(claims.values())
    pairs = tuple(sorted(claims.items()))
    previous = record or Record(None, None)
    told = _told(claims, previous, desired)
    notes += _conflicts(ref, claims, desired, told)
    same_wish = previous.desired == desired
    overridden = previous.overridden if same_wish else 0
    overridden_at = previous.overridden_at if same_wish else 0.0
    if overridden and now - overridden_at > settings.fight_window:
        overridden, overridden_at = 0, 0.0  # long ago: back off over, try again
    base = replace(
        previous,
        desired=desired,
        applied=_still_ours(previous, value),
        claims=pairs,
        overridden=overridden,
        overridden_at=overridden_at,
    )
    if value == desired:
        result = "Applied" if base.applied == desired else "AlreadySet"
        return Decision(ref, None, replace(base, result=result), tuple(notes))
    ends = overridden_at + settings.fight_window + 1
    if overridden >= settings.fight_limit:  # standing off; said so already
        return Decision(ref, None, replace(base, result="Overridden"), tuple(notes), recheck=ends)
    on_its_way = previous.intent is not None and previous.intent.value == desired
    if previous.applied == desired and not on_its_way:  # ours, changed by someone else
        overridden, overridden_at = overridden + 1, now
        if overridden >= settings.fight_limit:
            message = (
                f"timeoutSec of backend service {ref} was changed to {value}s by someone else "
                f"{overridden} times; not re-applying {desired}s for "
                f"{settings.fight_window:.0f}s (change the annotation to apply again)"
            )
            notes += [Note(k, WARNING, "TimeoutOverridden", message) for k in told]
            stand_off = replace(
                base, overridden=overridden, overridden_at=overridden_at, result="Overridden"
            )
            return Decision(
                ref, None, stand_off, tuple(notes), recheck=now + settings.fight_window + 1
            )
    intent = _intent(previous.intent, desired, value, now, request_id)
    message = f"set timeoutSec of backend service {ref} to {desired}s (was {value}s)"
    applied = [Note(k, NORMAL, "TimeoutApplied", message) for k in told]
    notes += applied
    pending = replace(
        base,
        intent=intent,
        overridden=overridden,
        overridden_at=overridden_at,
        result="Pending",
        notes=tuple(applied[:MAX_OWED]),
        notes_at=now,
    )
    return Decision(ref, desired, pending, tuple(notes), was=value)


def _still_ours(record: Record, value: int) -> int | None:
    """``record.applied`` if the value there is still that one, else None: whatever
    changed it since was someone else, and what they leave is theirs, even a value
    equal to one we once wrote."""
    return record.applied if record.applied == value else None


def _release(
    fact: Backend,
    claimants: Mapping[str, Ingress | None],
    record: Record | None,
    settings: Settings,
    notes: list[Note],
    now: float,
    request_id: str,
) -> Decision:
    """Nobody asks any more: put the default back if the value is still ours."""
    ref, value, default = fact.ref, fact.timeout_sec, settings.default_timeout
    if record is None or not of_cluster(ref.name, settings.cluster_uid):
        # Another cluster's backend is never ours to restore, whatever a record says
        # (an earlier version's records were kept before names were checked).
        return Decision(ref, None, None, tuple(notes))
    former = [k for k, _ in record.claims if claimants.get(k) is not None]
    if record.intent is not None and record.result == RESTORING:
        # A restore of ours that had not landed: the same write again, same requestId.
        # (A write of a claimed value that equals the default is no restore: it was
        # decided over a value that was not ours.)
        again = replace(record, intent=replace(record.intent, at=now))
        return Decision(ref, default, again, tuple(notes), was=value, restore=True)
    if record.intent is not None:
        # A write of ours may still land: remember it until it is settled, and look
        # again once it can no longer land.
        ours = _still_ours(record, value)
        kept = replace(record, applied=ours, desired=None, claims=(), result="Pending")
        due = record.intent.at + settings.intent_ttl + 1
        return Decision(ref, None, kept, tuple(notes), recheck=due)
    if record.applied is None or value == default:
        return Decision(ref, None, None, tuple(notes))
    if value == record.applied:
        message = f"restored timeoutSec of backend service {ref} to {default}s (was {value}s)"
        restored = [Note(k, NORMAL, "TimeoutRestored", message) for k in former]
        notes += restored
        intent = _intent(record.intent, default, value, now, request_id)
        restoring = replace(
            record,
            desired=None,
            claims=(),
            intent=intent,
            result=RESTORING,
            notes=tuple(restored[:MAX_OWED]),
            notes_at=now,
        )
        return Decision(ref, default, restoring, tuple(notes), was=value, restore=True)
    message = (
        f"left timeoutSec of backend service {ref} at {value}s: it is not the "
        f"{record.applied}s this controller set, so someone else changed it"
    )
    notes += [Note(k, NORMAL, "RestoreSkipped", message) for k in former]
    return Decision(ref, None, None, tuple(notes))


def _intent(previous: Intent | None, value: int, was: int, now: float, request_id: str) -> Intent:
    """A new intent; a retry of the same write keeps its requestId, so that GCP
    recognises it (and drops it if the first attempt landed after all). Its time is
    that of the latest send: ``settle`` gives a write up ``intent_ttl`` after it was
    last sent, not after it was first decided, or a retry late in that span would
    be given up while it may still land."""
    if previous is not None and previous.value == value and previous.was == was:
        return replace(previous, at=now)
    return Intent(value, was, request_id, now)


def _told(claims: dict[str, int], previous: Record, desired: int) -> list[str]:
    """Who hears of a decision on a shared backend: the claimants whose claim is new
    or changed since the record (each is told of its own change, once), else the one
    whose claim decides it (a write no claimant caused, such as a revert after
    someone else's change). Never all k claimants for one change."""
    before = dict(previous.claims)
    changed = sorted(k for k, seconds in claims.items() if before.get(k) != seconds)
    return changed or [min(k for k, seconds in claims.items() if seconds == desired)]


def _conflicts(
    ref: BackendRef, claims: dict[str, int], desired: int, told: list[str]
) -> list[Note]:
    """A warning for each claimant told whose ask is overruled by a larger one; the
    message names the deciding claimant and counts the rest, whatever their number."""
    losers = [k for k in told if claims[k] < desired]
    if not losers:
        return []
    decider = min(k for k, seconds in claims.items() if seconds == desired)
    return [
        Note(
            k,
            WARNING,
            "SharedBackendConflict",
            f"backend service {ref} is shared with {len(claims) - 1} other Ingress(es); "
            f"the largest timeout, {desired}s (asked by {decider}), applies, "
            f"not the {claims[k]}s asked here",
        )
        for k in losers
    ]


def _foreign(ref: BackendRef) -> str:
    # Never say whose it is: it may belong to another namespace or cluster.
    return (
        f"refused to change backend service {ref}: it is not one this cluster made for a "
        "Service this Ingress routes to in its own namespace"
    )
