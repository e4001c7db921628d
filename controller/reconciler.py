"""One reconcile of one work item: a backend service, or an Ingress's own problems.

Level-triggered: whatever woke it, it reads the claims from the index, the
record and the freshest read of the backend at hand, asks plan.py, and makes
it so: record the intent, PATCH, wait, record the outcome. A 412 means read
again and decide again. It never raises for GCP, record or Event failures;
the Outcome tells the worker whether and how soon to try again.

``begin`` goes as far as the PATCH sent and leaves the rest of a write (the
operation's wait, the outcome, its Events) in the Outcome for ``finish``, so
that a worker can hand it on and take the next backend; ``reconcile`` does both.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

import requests

from controller import plan
from controller.fields import BY_NAME
from controller.gcp.backends import Compute, GcpError, Json, NotLeader
from controller.gcp.cache import BackendCache
from controller.index import ClaimIndex
from controller.ingress import Ingress
from controller.kube.client import KubeError, unreachable
from controller.kube.events import ObjectRef, Recorder
from controller.model import Backend, BackendRef, Settings
from controller.records import RecordConflict, Records

log = logging.getLogger(__name__)

# GCP answers that a retry will not change soon (permission, missing, refused value).
SLOW_KINDS = {
    "permission": "PermissionDenied",
    "not_found": "BackendNotFound",
    "invalid": "TimeoutRejected",
}
# Reads-and-decides after a stale fingerprint before the key goes back to the queue.
MAX_CONFLICTS = 4


@dataclass(frozen=True)
class IngressKey:
    """Work item: report the problems of one Ingress's own input (namespace/name)."""

    key: str


Key = BackendRef | IngressKey


@dataclass
class Outcome:
    """What a reconcile did (one line an action) and whether to retry: "", "soon" or "slow"."""

    key: str
    actions: list[str] = field(default_factory=list)
    retry: Literal["", "soon", "slow"] = ""
    error: str = ""
    error_kind: str = ""  # GcpError.kind, "records", "conflict" or "exception"
    # Without a retry: look again after this many seconds all the same (a stand-off
    # ends, an unsettled write is given up).
    recheck: float | None = None
    # The rest of a write whose PATCH went out (see Reconciler.finish); until it has
    # run, no other decision on this backend may begin.
    rest: Callable[[float], None] | None = field(default=None, repr=False, compare=False)


class Reconciler:
    """``reconcile(key)``; safe to call from several workers for different keys."""

    def __init__(
        self,
        *,
        ingress: Callable[[str], Ingress | None],
        index: ClaimIndex,
        records: Records,
        compute: Compute,
        cache: BackendCache,
        recorder: Recorder,
        settings: Settings,
        may_write: Callable[[], bool] = lambda: True,
        stopping: Callable[[], bool] = lambda: False,
        dry_run: bool = False,
        clock: Callable[[], float] = time.time,
        request_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self._ingress = ingress
        self._index = index
        self._records = records
        self._compute = compute
        self._cache = cache
        self._recorder = recorder
        self._settings = settings
        self.may_write = may_write
        self._stopping = stopping
        self._dry_run = dry_run
        self._clock = clock
        self._request_id = request_id
        self._lock = threading.Lock()
        self._told: dict[BackendRef, tuple[plan.Note, ...]] = {}  # last notes told, per backend

    def reconcile(self, key: Key) -> Outcome:
        """Decide about ``key`` and act on it to the end."""
        return self.finish(self.begin(key))

    def begin(self, key: Key) -> Outcome:
        """Decide about ``key`` and act on it as far as the PATCH sent; ``finish`` the
        Outcome for the rest. Until then the caller holds the key: the operation may
        still be running and the outcome is not recorded."""
        if isinstance(key, IngressKey):
            return self._report(key.key)
        out = Outcome(str(key))
        # One deadline for all of its Compute calls, the operation's wait too: a hung API
        # cannot hold a worker or a finisher (and a stopping replica) for longer than
        # the Deployment's grace period.
        deadline = self._compute.deadline()
        self._guarded(out, lambda: self._backend(key, out, deadline))
        return out

    def finish(self, out: Outcome, waited: float = 0.0) -> Outcome:
        """Wait for the write ``begin`` sent, record its outcome and tell its Events
        (nothing to do for an Outcome without one). ``waited``: the seconds it waited
        for a thread to run it since the PATCH, which its deadline does not count."""
        rest, out.rest = out.rest, None
        if rest is not None:
            self._guarded(out, functools.partial(rest, waited))
        return out

    def _guarded(self, out: Outcome, action: Callable[[], None]) -> None:
        """Run ``action``; a lost Lease or a record write that failed goes into ``out``."""
        try:
            action()
        except NotLeader as e:
            log.info("%s: %s", out.key, e)
            out.error, out.error_kind = str(e), "not_leader"
        except RecordConflict as e:
            log.info("%s: %s; deciding again", out.key, e)
            out.retry, out.error, out.error_kind = "soon", str(e), "conflict"
        except (KubeError, requests.RequestException) as e:
            # An unreachable apiserver has been told of once by the client.
            level = logging.DEBUG if unreachable(e) else logging.WARNING
            log.log(level, "%s: writing its record failed: %s; will retry", out.key, e)
            out.retry, out.error, out.error_kind = "soon", str(e), "records"

    def _report(self, key: str) -> Outcome:
        """The Ingress's own input refused, and its asks of backend services already
        known to be another's: told once per change of that Ingress, from here, and
        not at every decision about those backends."""
        ingress = self._ingress(key)
        if ingress is None:
            return Outcome(key)
        notes = [plan.Note(key, plan.WARNING, p.reason, p.message) for p in ingress.problems]
        for ref in ingress.refs:
            known, fact = self._cache.get(ref)
            note = plan.refusal(ingress, ref, fact if known else None, self._settings)
            if note is not None:
                notes.append(note)
        self._notes({key: ingress}, notes)
        return Outcome(key)

    def _backend(self, ref: BackendRef, out: Outcome, deadline: float) -> None:
        first = True  # the freshest read at hand first; after that, a GET
        for _ in range(MAX_CONFLICTS):
            record = self._records.get(ref)
            try:
                fact, looked = (
                    self._read(ref, deadline) if first else (self._get(ref, deadline), False)
                )
            except GcpError as e:
                self._failed(out, ref, self._claimants(ref, record, None), e)
                return
            first = False
            # A first look at a backend tells every claimant whether it is theirs;
            # after it, only its owner namespace's claims can change the decision.
            owner = None if looked else plan.owner(ref, fact, self._settings)
            claimants = self._claimants(ref, record, owner)
            decision = plan.decide(
                ref,
                fact,
                claimants,
                record,
                self._settings,
                now=float(int(self._clock())),
                request_id=self._request_id(),
            )
            if fact is None:
                self._missing(out, ref, decision, claimants)
                return
            if not decision.writes:
                if not self._dry_run:
                    self._records.put(ref, decision.record)
                self._tell(ref, claimants, decision.notes, repeat=False)
                self._recheck(out, decision)
                return
            if self._dry_run:
                line = _line(ref, decision)
                out.actions.append(f"would {line} (dry run)")
                log.info("dry run: would %s", line)
                return
            if not fact.fingerprint:  # we wrote it last: read its fingerprint, decide again
                continue
            try:
                operation = self._send(fact, decision, deadline)
            except GcpError as e:
                if e.status == 412:
                    log.info("%s: stale fingerprint; reading it and deciding again", ref)
                    self._records.put(ref, plan.refused(decision, record))
                    continue
                self._unwritten(out, decision, claimants, e)
                return
            out.rest = functools.partial(
                self._complete, out, fact, decision, record, claimants, operation, deadline
            )
            return
        out.retry, out.error_kind = "soon", "conflict"
        out.error = f"{ref}: fingerprint changed under each of {MAX_CONFLICTS} decisions"

    def _complete(
        self,
        out: Outcome,
        fact: Backend,
        decision: plan.Decision,
        before: plan.Record | None,
        claimants: Mapping[str, Ingress | None],
        operation: Json,
        deadline: float,
        waited: float,
    ) -> None:
        """The rest of a write whose PATCH went out: wait for its operation, remember
        what it wrote, record the outcome, tell the Events it owes, and read the
        fingerprint the write left. All under the reconcile's deadline, moved on by the
        seconds the rest ``waited`` for a thread (finishers.py): the deadline bounds how
        long a reconcile holds a thread, and a stop starts every waiting rest at once,
        so that one still ends within the same deadline from the stop."""
        deadline += waited
        ref = fact.ref
        try:
            self._compute.wait(ref, operation, may_write=self.may_write, deadline=deadline)
        except GcpError as e:
            if e.status == 412:
                log.info("%s: stale fingerprint; reading it and deciding again", ref)
                self._records.put(ref, plan.refused(decision, before))
                self._cache.drop(ref)
                out.retry, out.error, out.error_kind = "soon", str(e), "conflict"
                return
            self._unwritten(out, decision, claimants, e)
            return
        # What we wrote; a list that shows another fingerprint than the one we
        # replaced saw GCP after our write (and maybe someone's change since).
        written = replace(fact.with_values(decision.writes), fingerprint="")
        self._cache.put(ref, written, replacing=fact.fingerprint)
        self._records.put(ref, plan.confirmed(decision))
        line = _line(ref, decision)
        out.actions.append(line)
        log.info("%s", line)
        self._tell(ref, claimants, decision.notes, repeat=True)
        self._learn(out, written, deadline)

    def _learn(self, out: Outcome, written: Backend, deadline: float) -> None:
        """GCP does not answer a write with the fingerprint it leaves, and the next write
        to the backend needs it: read it now, while the backend is still held and (on a
        finisher) off the path of the next change, rather than on that change's path. A
        failed read costs nothing: the next write reads it then. A read that shows
        anything but what we wrote saw someone's change since: decide again now, as a
        resync would on finding it (the cache holds it now, so a resync would not)."""
        try:
            seen = self._get(written.ref, deadline)
        except GcpError as e:
            log.debug("%s: reading the fingerprint it was left with failed: %s", written.ref, e)
            return
        if seen is None or replace(seen, fingerprint="") != written:
            out.recheck = 0.0

    def _unwritten(
        self,
        out: Outcome,
        decision: plan.Decision,
        claimants: Mapping[str, Ingress | None],
        error: GcpError,
    ) -> None:
        """A write GCP refused or failed: a restore of a backend gone is done, else retry."""
        ref = decision.ref
        self._cache.drop(ref)
        if set(decision.writes) <= decision.restores and error.kind == "not_found":
            log.info("%s is gone; nothing to restore", ref)
            self._records.put(ref, None)
            return
        self._failed(out, ref, claimants, error)

    def _missing(
        self,
        out: Outcome,
        ref: BackendRef,
        decision: plan.Decision,
        claimants: Mapping[str, Ingress | None],
    ) -> None:
        """No such backend service (yet): ingress-gce may create it a moment after it
        names it, so a claimed one is read again slowly, with a GET, not the cache."""
        if not self._dry_run:
            self._records.put(ref, decision.record)
        self._cache.drop(ref)
        if decision.notes:
            out.retry, out.error_kind = "slow", "not_found"
            out.error = f"backend service {ref} does not exist (yet)"
        self._tell(ref, claimants, decision.notes, repeat=False)

    def _recheck(self, out: Outcome, decision: plan.Decision) -> None:
        if decision.recheck is not None:
            out.recheck = max(decision.recheck - self._clock(), 0.0)

    def _send(self, fact: Backend, decision: plan.Decision, deadline: float) -> Json:
        """Record the intent, PATCH with its requestId; the operation to wait for.

        The wait for a write token comes before the intent, not between it and its
        PATCH: a kill in that gap leaves an intent whose write nobody can tell from
        one still on its way, and a backend nobody asks of any more is then not
        restored until ``intent_ttl`` has passed (see ``plan.settle``). For the same
        reason a replica told to stop sends no write it has not recorded yet (a
        SIGKILL may follow): it is the next term's to decide."""
        assert decision.writes and decision.record is not None
        intent = decision.record.intent
        assert intent is not None
        self._compute.take_write_token()
        if self._stopping():
            raise NotLeader(f"{fact.ref}: stopping; the write is left to the next term")
        self._records.put(fact.ref, decision.record)
        return self._compute.patch(
            fact,
            decision.writes,
            request_id=intent.request_id,
            may_write=self.may_write,
            deadline=deadline,
            token_taken=True,
        )

    def _read(self, ref: BackendRef, deadline: float) -> tuple[Backend | None, bool]:
        """(the backend as last seen, or read now; whether it was read now: a first look)."""
        known, backend = self._cache.get(ref)
        return (backend, False) if known else (self._get(ref, deadline), True)

    def _get(self, ref: BackendRef, deadline: float) -> Backend | None:
        """A GET, remembered as of when it was sent: a list that began after that knows
        better, however late the answer comes."""
        asked = self._cache.began()
        backend = self._compute.get(ref, deadline=deadline)
        self._cache.put(ref, backend, asked=asked)
        return backend

    def _claimants(
        self, ref: BackendRef, record: plan.Record | None, namespace: str | None
    ) -> dict[str, Ingress | None]:
        """Who claims ``ref`` (in its record too): those of ``namespace``, or (None)
        everyone who names it."""
        keys = self._index.claimants(ref, namespace)
        if record is not None:
            keys.update(record.ingresses())
        return {k: self._ingress(k) for k in sorted(keys)}

    def _failed(
        self,
        out: Outcome,
        ref: BackendRef,
        claimants: Mapping[str, Ingress | None],
        error: GcpError,
    ) -> None:
        out.error, out.error_kind = str(error), error.kind
        reason = SLOW_KINDS.get(error.kind)
        if reason is None:
            # Compute failing is told once an episode by the client; a busy backend is normal.
            log.debug("%s: %s; will retry with backoff", ref, error)
            out.retry = "soon"
            return
        log.warning("%s: %s; will retry later", ref, error)
        out.retry = "slow"
        message = f"{error.method} {error.target}: {error.message}"
        notes = [
            plan.Note(k, plan.WARNING, reason, message)
            for k, ing in claimants.items()
            if ing is not None and ing.claims(ref)
        ]
        self._notes(claimants, notes)

    def _tell(
        self,
        ref: BackendRef,
        claimants: Mapping[str, Ingress | None],
        notes: tuple[plan.Note, ...],
        *,
        repeat: bool,
    ) -> None:
        """Record ``notes`` about ``ref``; those of a decision that changed nothing are
        told only when they differ from the last told about it, so a resync, which looks
        at every backend again, does not repeat a standing condition every period."""
        with self._lock:
            same = self._told.get(ref) == notes
            if notes:
                self._told[ref] = notes
            else:
                self._told.pop(ref, None)
        if repeat or not same:
            self._notes(claimants, notes)

    def _notes(self, ingresses: Mapping[str, Ingress | None], notes: Iterable[plan.Note]) -> None:
        for note in notes:
            ingress = ingresses.get(note.key)
            if ingress is None:  # deleted: nothing to attach an Event to
                log.info("%s: %s: %s", note.key, note.reason, note.message)
                continue
            ref = ObjectRef(
                "Ingress", "networking.k8s.io/v1", ingress.namespace, ingress.name, ingress.uid
            )
            self._recorder.record(ref, note.type, note.reason, note.message)


def _line(ref: BackendRef, decision: plan.Decision) -> str:
    """One log line for a write: ``set global/x timeoutSec 30s -> 3600s, ...``."""
    changes = ", ".join(
        f"{BY_NAME[name].label} {decision.was[name]}s -> {value}s"
        for name, value in decision.writes.items()
    )
    verb = "restore" if set(decision.writes) <= decision.restores else "set"
    return f"{verb} {ref} {changes}"
