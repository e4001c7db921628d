"""The decisions, pure: one backend service's facts -> what to write and remember.

No I/O, no clock, no randomness: ``decide`` takes the backend as last read,
the Ingresses that claim it, the record of what this controller did before,
the time and a fresh requestId, and returns one Decision. Every managed field
(a row of fields.py) is decided by the same code under the same rules:
ownership (this cluster, this namespace, this Ingress's Services), shared
backends (largest wins), restores of only what we wrote, crash recovery of an
unconfirmed write and the stop-fighting rule. The fields that differ travel
in one PATCH under one intent, so they are table- and property-tested together.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from dataclasses import field as slot
from typing import Literal

from controller.fields import FIELDS, Field
from controller.ingress import KEEP, Ingress
from controller.model import Backend, BackendRef, Settings, of_cluster

# The default backend ingress-gce adds to every load balancer's backends
# annotation: never ours to change from a user namespace, and not worth a warning.
CLUSTER_DEFAULT_BACKEND = "kube-system/default-http-backend"
EventType = Literal["Normal", "Warning"]
NORMAL: EventType = "Normal"
WARNING: EventType = "Warning"
# How a record's last decision ended, the most telling first: a record shows the
# first of these any of its fields ended with.
RESULTS = ("Pending", "Restoring", "Overridden", "AlreadySet", "Applied", "Migrated")
# Events a record keeps for its last write: one a claimant, bounded so that a backend
# shared by many Ingresses keeps a small record (the rest are told, not kept).
MAX_OWED = 16


@dataclass(frozen=True, slots=True)
class Intent:
    """A write about to be sent: recorded before the PATCH, so that a crash
    between the PATCH and its outcome is recognised after a restart.

    ``values`` holds (field, value, was) for every field the one PATCH sets;
    ``restores`` names those it puts back to their default because nobody asks
    any more (a value asked that equals the default is no restore).
    """

    values: tuple[tuple[str, int, int], ...]
    request_id: str
    at: float  # Unix time it was last sent
    restores: frozenset[str] = frozenset()
    # The fingerprint it was sent against ("": not known, a record of an earlier
    # version). While the backend still has it, nothing was written since: neither
    # this write nor anyone else's.
    fingerprint: str = ""

    def of(self, field: str) -> tuple[int, int] | None:
        """(value, was) of ``field`` in this write, or None when it does not set it."""
        return next(((v, w) for name, v, w in self.values if name == field), None)


@dataclass(frozen=True, slots=True)
class State:
    """What the controller remembers of one field of one backend service.

    ``applied`` is the value it wrote and saw done (None: the value there is
    not its own); ``claims`` maps each Ingress key to the seconds it asked;
    ``desired`` is the largest claim when last decided. A value someone else
    wrote since, even one equal to ours, is theirs: ``applied`` lasts only
    while every read shows that very value.
    """

    desired: int | None = None
    applied: int | None = None
    claims: tuple[tuple[str, int], ...] = ()
    overridden: int = 0
    overridden_at: float = 0.0

    def claim_of(self, key: str) -> int | None:
        return dict(self.claims).get(key)


EMPTY = State()


@dataclass(frozen=True, slots=True)
class Record:
    """What the controller remembers of one backend service it manages: a State per
    field it manages there (none empty), the write in flight, how the last decision ended.

    ``notes`` are the Events its last write (of every field it set) owes
    (TimeoutApplied, TimeoutRestored), decided at ``notes_at``: written with the
    intent, so that a write found done later (a kill, a failed record write, a lost
    Lease) is still told, and kept with the outcome, so that a term that begins can
    tell what the apiserver does not have yet. Never more than ``MAX_OWED``.
    """

    fields: tuple[tuple[str, State], ...] = ()
    intent: Intent | None = None
    result: str = ""
    notes: tuple[Note, ...] = ()
    notes_at: float = 0.0

    def state(self, field: str) -> State:
        return dict(self.fields).get(field, EMPTY)

    def ingresses(self) -> set[str]:
        """The key of every Ingress that claims any field."""
        return {k for _, state in self.fields for k, _ in state.claims}


@dataclass(frozen=True, slots=True)
class Note:
    """An Event to record on the Ingress ``key``."""

    key: str
    type: EventType
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    """What to do to one backend service.

    Remember ``record`` (None: forget it) first; then, if ``writes`` (field ->
    value) is not empty, PATCH them in one body with ``record.intent``'s
    requestId and, once the operation is done, remember ``confirmed(decision)``.
    ``restores`` are the written fields that go back to their default.
    ``notes`` are recorded once the whole decision has taken effect.
    """

    ref: BackendRef
    writes: Mapping[str, int]
    record: Record | None
    notes: tuple[Note, ...] = ()
    was: Mapping[str, int] = slot(default_factory=dict)
    restores: frozenset[str] = frozenset()
    # Unix time at which this backend must be looked at again although nothing
    # changes (a stand-off ends, a write that may still land is given up): no
    # promise waits for a user's next edit.
    recheck: float | None = None


@dataclass(frozen=True)
class _Part:
    """One field's share of a decision."""

    state: State  # EMPTY: forget the field
    write: int | None = None
    was: int | None = None
    restore: bool = False
    keep_intent: bool = False  # its part of a write in flight stays (nothing new sent)
    result: str = ""
    notes: tuple[Note, ...] = ()
    owes: tuple[Note, ...] = ()  # those of ``notes`` its write owes until it is done
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
        return Decision(ref, {}, None, missing)
    # A write found done that was never confirmed (a kill, a failed record write, a
    # lost Lease came between): its Events were never told, and are owed now.
    owed = record.notes if record and _done(record.intent, fact) else ()
    record = settle(record, fact, now, settings)
    watched = {k: ing for k, ing in claimants.items() if in_scope(k, settings)}
    asked = {f.name: claims_on(f, fact, watched, record, settings) for f in FIELDS}
    refused = {key for _, foreign in asked.values() for key in foreign}
    notes = [*owed, *(Note(k, WARNING, "ForeignBackend", _foreign(ref)) for k in sorted(refused))]
    if _claimed_outside(fact, record, settings):
        # Claimed from a namespace this controller no longer watches (and a backend
        # serves one namespace's Service, so no watched Ingress can own it): whoever
        # watches that namespace decides. Neither a write nor a restore, the record kept.
        return Decision(ref, {}, record, tuple(notes))
    if not of_cluster(ref.name, settings.cluster_uid):
        # Another cluster's backend is never ours to restore, whatever a record says
        # (an earlier version's records were kept before names were checked).
        return Decision(ref, {}, None, tuple(notes))
    parts = {
        f.name: _decide_field(f, fact, asked[f.name][0], watched, record, settings, now)
        for f in FIELDS
    }
    return _combine(ref, parts, record, notes, now, request_id, fact.fingerprint)


def _decide_field(
    f: Field,
    fact: Backend,
    claims: dict[str, int],
    claimants: Mapping[str, Ingress | None],
    record: Record | None,
    settings: Settings,
    now: float,
) -> _Part:
    """Field ``f``'s part: held for its claims, or released when nobody asks it."""
    state = record.state(f.name) if record else EMPTY
    intent = record.intent if record else None
    if not claims:
        return _release(f, fact, claimants, state, intent, settings, now)
    return _hold(f, fact, claims, state, intent, settings, now)


def _combine(
    ref: BackendRef,
    parts: Mapping[str, _Part],
    record: Record | None,
    notes: list[Note],
    now: float,
    request_id: str,
    fingerprint: str,
) -> Decision:
    """One decision from every field's part: one PATCH of every field that changes."""
    writes = {name: p.write for name, p in parts.items() if p.write is not None}
    was = {name: p.was for name, p in parts.items() if p.was is not None}
    restores = frozenset(name for name in writes if parts[name].restore)
    previous = record.intent if record else None
    states = {name: p.state for name, p in parts.items()}
    if writes:
        wanted = tuple((name, value, was[name]) for name, value in writes.items())
        sent = Intent(wanted, request_id, now, restores, fingerprint)
        intent: Intent | None = _intent(previous, sent)
        # The part of an earlier write, of a field not written now, that may still land
        # is given up with it: whatever that field shows from now on is not known to be
        # ours, so it is never restored.
        for name, _, _ in previous.values if previous else ():
            if name not in writes and parts[name].keep_intent:
                states[name] = replace(states[name], applied=None)
    else:
        kept = tuple(
            (name, v, w)
            for name, v, w in (previous.values if previous else ())
            if parts[name].keep_intent
        )
        intent = _narrowed(previous, kept) if previous and kept else None
    fields = tuple((name, state) for name, state in states.items() if state != EMPTY)
    results = {p.result for p in parts.values()}
    result = next((r for r in RESULTS if r in results), record.result if record else "")
    if writes:  # a new write owes its own Events; until then, the last one's are kept
        owes = tuple(n for name in writes for n in parts[name].owes)[:MAX_OWED]
        owed_at = now
    else:
        owes, owed_at = (record.notes, record.notes_at) if record else ((), 0.0)
    kept_record = Record(fields, intent, result, owes, owed_at) if fields or intent else None
    for p in parts.values():
        notes += p.notes
    rechecks = [p.recheck for p in parts.values() if p.recheck is not None]
    return Decision(
        ref,
        writes,
        kept_record,
        tuple(notes),
        was={name: was[name] for name in writes},
        restores=restores,
        recheck=min(rechecks, default=None),
    )


def in_scope(key: str, settings: Settings) -> bool:
    """Whether the Ingress ``key`` (namespace/name) is in a namespace this controller
    watches. One outside is unknown, never taken as deleted."""
    return not settings.namespaces or key.partition("/")[0] in settings.namespaces


def _claimed_outside(fact: Backend, record: Record | None, settings: Settings) -> bool:
    """The record holds a claim, on any field, from a namespace out of scope that still
    fits the backend as it is now: this cluster's, for a Service of that namespace."""
    if record is None or not of_cluster(fact.ref.name, settings.cluster_uid):
        return False
    home = (fact.service or "").partition("/")[0]
    return any(
        not in_scope(key, settings) and key.partition("/")[0] == home for key in record.ingresses()
    )


def settle(record: Record | None, fact: Backend, now: float, settings: Settings) -> Record | None:
    """``record`` with its unconfirmed write resolved, field by field, by the values now there.

    The value it wanted: the write happened (ours). The value it replaced,
    under the fingerprint it was sent against: nothing was written since.
    Recently, the write may still be on its way, so it stays pending; after
    ``intent_ttl`` it never landed and goes, and what was ours before it is
    ours still. Anything else: someone else wrote since (also one who put the
    replaced value back over ours), or it never happened; either way what is
    there is no longer known to be ours, so ``applied`` goes with the intent.
    """
    if record is None or record.intent is None:
        return record
    intent = record.intent
    states = dict(record.fields)
    pending = []
    for name, value, was in intent.values:
        there = fact.value(name)
        if there == value:
            states[name] = replace(states.get(name, EMPTY), applied=value)
        elif there == was and _unwritten(intent, fact):
            if now - intent.at < settings.intent_ttl:
                pending.append((name, value, was))
            elif not intent.fingerprint:  # nothing tells whether anyone wrote since
                states[name] = replace(states.get(name, EMPTY), applied=None)
        else:
            # Given up: what is there is no longer known to be ours (the write may have
            # landed and been changed back since, also to the value it replaced).
            states[name] = replace(states.get(name, EMPTY), applied=None)
    fields = tuple((f.name, states[f.name]) for f in FIELDS if states.get(f.name, EMPTY) != EMPTY)
    return replace(record, fields=fields, intent=_narrowed(intent, tuple(pending)))


def claims_on(
    f: Field,
    fact: Backend,
    claimants: Mapping[str, Ingress | None],
    record: Record | None,
    settings: Settings,
) -> tuple[dict[str, int], set[str]]:
    """(Ingress key -> seconds it may ask of field ``f`` of ``fact``, keys refused as
    not owners).

    An Ingress whose input (or this field's part of it) turned invalid keeps what
    it asked before; every claim, kept ones too, is checked against the backend
    as it is now.
    """
    claims: dict[str, int] = {}
    refused: set[str] = set()
    for key, ingress in claimants.items():
        if ingress is None:
            continue
        asked = _asked(f, ingress, fact)
        if asked == KEEP:
            kept = record.state(f.name).claim_of(key) if record else None
            if kept is None:
                continue
            # Asked under an earlier, higher maximum perhaps: never above today's.
            seconds = min(kept, f.maximum(settings))
        elif asked is None:
            continue
        else:
            seconds = asked
        if owns(ingress, fact, settings):
            claims[key] = seconds
        elif fact.service != CLUSTER_DEFAULT_BACKEND:
            refused.add(key)
    return claims, refused


def _asked(f: Field, ingress: Ingress, fact: Backend) -> int | Literal["keep"] | None:
    """What ``ingress``'s own input asks of field ``f`` of ``fact``: seconds, KEEP (what
    it asked before stays) or None."""
    if ingress.problem is not None:
        return KEEP
    ask = ingress.ask(f.name) if ingress.claims(fact.ref) else None
    if ask is None:
        return None
    namespace, _, service = (fact.service or "").partition("/")
    return ask.of(service if namespace == ingress.namespace else None, fact.port)


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
    """The record once ``decision``'s write is done: each value written is ours, and
    each field restored has nothing left to remember."""
    record = decision.record
    if record is None or not decision.writes:
        return record
    states = dict(record.fields)
    for name, value in decision.writes.items():
        if name in decision.restores:
            states.pop(name, None)
        else:
            states[name] = replace(states.get(name, EMPTY), applied=value)
    fields = tuple((f.name, states[f.name]) for f in FIELDS if states.get(f.name, EMPTY) != EMPTY)
    return replace(record, fields=fields, intent=None, result="Applied") if fields else None


def refused(decision: Decision, before: Record | None) -> Record | None:
    """The record once ``decision``'s write was refused for a stale fingerprint (412).

    What it decided stands (what it saw of the values, a revert it counted), but the
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
    f: Field,
    fact: Backend,
    claims: dict[str, int],
    state: State,
    intent: Intent | None,
    settings: Settings,
    now: float,
) -> _Part:
    ref, value = fact.ref, fact.value(f.name)
    desired = max(claims.values())
    pairs = tuple(sorted(claims.items()))
    told = _told(claims, state, desired)
    notes = _conflicts(f, ref, claims, desired, told)
    same_wish = state.desired == desired
    overridden = state.overridden if same_wish else 0
    overridden_at = state.overridden_at if same_wish else 0.0
    if overridden and now - overridden_at > settings.fight_window:
        overridden, overridden_at = 0, 0.0  # long ago: back off over, try again
    base = replace(
        state,
        desired=desired,
        applied=_still_ours(state, value),
        claims=pairs,
        overridden=overridden,
        overridden_at=overridden_at,
    )
    if value == desired:
        result = "Applied" if base.applied == desired else "AlreadySet"
        return _Part(base, keep_intent=True, result=result, notes=tuple(notes))
    ends = overridden_at + settings.fight_window + 1
    if overridden >= settings.fight_limit:  # standing off; said so already
        return _Part(base, keep_intent=True, result="Overridden", notes=tuple(notes), recheck=ends)
    pending = intent.of(f.name) if intent else None
    on_its_way = pending is not None and pending[0] == desired
    if state.applied == desired and not on_its_way:  # ours, changed by someone else
        overridden, overridden_at = overridden + 1, now
        if overridden >= settings.fight_limit:
            message = (
                f"{f.label} of backend service {ref} was changed to {value}s by someone else "
                f"{overridden} times; not re-applying {desired}s for "
                f"{settings.fight_window:.0f}s (change the annotation to apply again)"
            )
            notes += [Note(k, WARNING, "TimeoutOverridden", message) for k in told]
            stand_off = replace(base, overridden=overridden, overridden_at=overridden_at)
            recheck = now + settings.fight_window + 1
            return _Part(
                stand_off,
                keep_intent=True,
                result="Overridden",
                notes=tuple(notes),
                recheck=recheck,
            )
    message = f"set {f.label} of backend service {ref} to {desired}s (was {value}s)"
    applied = tuple(Note(k, NORMAL, "TimeoutApplied", message) for k in told)
    notes += applied
    pending_state = replace(base, overridden=overridden, overridden_at=overridden_at)
    return _Part(
        pending_state, write=desired, was=value, result="Pending", notes=tuple(notes), owes=applied
    )


def _still_ours(state: State, value: int) -> int | None:
    """``state.applied`` if the value there is still that one, else None: whatever
    changed it since was someone else, and what they leave is theirs, even a value
    equal to one we once wrote."""
    return state.applied if state.applied == value else None


def _release(
    f: Field,
    fact: Backend,
    claimants: Mapping[str, Ingress | None],
    state: State,
    intent: Intent | None,
    settings: Settings,
    now: float,
) -> _Part:
    """Nobody asks any more: put the default back if the value is still ours."""
    ref, value, default = fact.ref, fact.value(f.name), f.default(settings)
    former = [k for k, _ in state.claims if claimants.get(k) is not None]
    pending = intent.of(f.name) if intent else None
    if pending is not None and intent is not None and f.name in intent.restores:
        # A restore of ours that had not landed: the same write again, same requestId.
        return _Part(state, write=default, was=value, restore=True, result="Restoring")
    if pending is not None and intent is not None:
        # A write of ours may still land: remember it until it is settled, and look
        # again once it can no longer land.
        kept = replace(state, applied=_still_ours(state, value), desired=None, claims=())
        due = intent.at + settings.intent_ttl + 1
        return _Part(kept, keep_intent=True, result="Pending", recheck=due)
    if state.applied is None or value == default:
        return _Part(EMPTY)
    if value == state.applied:
        message = f"restored {f.label} of backend service {ref} to {default}s (was {value}s)"
        notes = tuple(Note(k, NORMAL, "TimeoutRestored", message) for k in former)
        restoring = replace(state, desired=None, claims=())
        return _Part(
            restoring,
            write=default,
            was=value,
            restore=True,
            result="Restoring",
            notes=notes,
            owes=notes,
        )
    message = (
        f"left {f.label} of backend service {ref} at {value}s: it is not the "
        f"{state.applied}s this controller set, so someone else changed it"
    )
    return _Part(EMPTY, notes=tuple(Note(k, NORMAL, "RestoreSkipped", message) for k in former))


def _done(intent: Intent | None, fact: Backend) -> bool:
    """``intent``'s write is there: every value it sets is what ``fact`` holds."""
    return intent is not None and all(fact.value(name) == v for name, v, _ in intent.values)


def _unwritten(intent: Intent, fact: Backend) -> bool:
    """Nothing was written to ``fact`` since ``intent`` was sent, as far as can be told."""
    return not intent.fingerprint or intent.fingerprint == fact.fingerprint


def _narrowed(intent: Intent, values: tuple[tuple[str, int, int], ...]) -> Intent | None:
    """``intent`` with only ``values`` of it still pending (None: nothing)."""
    names = {name for name, _, _ in values}
    return replace(intent, values=values, restores=intent.restores & names) if values else None


def _intent(previous: Intent | None, sent: Intent) -> Intent:
    """A new intent; a retry of the same write keeps its requestId, so that GCP
    recognises it (and drops it if the first attempt landed after all). Its time is
    that of the latest send: ``settle`` gives a write up ``intent_ttl`` after it was
    last sent, not after it was first decided, or a retry late in that span would
    be given up while it may still land."""
    if previous is not None and _same_write(previous, sent):
        return replace(previous, at=sent.at, fingerprint=sent.fingerprint)
    return sent


def _same_write(a: Intent, b: Intent) -> bool:
    return (set(a.values), a.restores) == (set(b.values), b.restores)


def _told(claims: dict[str, int], previous: State, desired: int) -> list[str]:
    """Who hears of a decision on a shared backend: the claimants whose claim is new
    or changed since the record (each is told of its own change, once), else the one
    whose claim decides it (a write no claimant caused, such as a revert after
    someone else's change). Never all k claimants for one change."""
    before = dict(previous.claims)
    changed = sorted(k for k, seconds in claims.items() if before.get(k) != seconds)
    return changed or [min(k for k, seconds in claims.items() if seconds == desired)]


def _conflicts(
    f: Field, ref: BackendRef, claims: dict[str, int], desired: int, told: list[str]
) -> list[Note]:
    """A warning for each claimant told whose ask is overruled by a larger one; the
    message names the field and the deciding claimant and counts the rest, whatever
    their number."""
    losers = [k for k in told if claims[k] < desired]
    if not losers:
        return []
    decider = min(k for k, seconds in claims.items() if seconds == desired)
    noun = "timeout" if f.name == "timeout" else f.label
    return [
        Note(
            k,
            WARNING,
            "SharedBackendConflict",
            f"backend service {ref} is shared with {len(claims) - 1} other Ingress(es); "
            f"the largest {noun}, {desired}s (asked by {decider}), applies, "
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
