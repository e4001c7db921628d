"""One reconcile of one Ingress key: read current state, ask plan.py, apply, record.

Level-triggered: whatever woke it, it reads the Ingress cache, the ledger and
the backend services as they are now. It never raises for a GCP or event
failure; the Outcome tells the worker whether and how soon to try again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from controller import plan
from controller.gcp.backends import Compute, GcpError
from controller.ingress import Ingress
from controller.kube.events import EventRecorder, ObjectRef
from controller.ledger import Ledger
from controller.model import Backend, BackendRef

log = logging.getLogger(__name__)

# GCP answers that a retry will not change soon (permission, missing, refused value).
SLOW_KINDS = {
    "permission": "PermissionDenied",
    "not_found": "BackendNotFound",
    "invalid": "TimeoutRejected",
}


@dataclass
class Outcome:
    """What a reconcile did (one line an action) and whether to retry: "", "soon" or "slow"."""

    key: str
    actions: list[str] = field(default_factory=list)
    retry: Literal["", "soon", "slow"] = ""
    error: str = ""
    error_kind: str = ""  # GcpError.kind, or "exception"


class BackendCache:
    """Backend services from the last paged ``list``, used instead of one GET each.

    Entries are trusted for ``ttl`` seconds; a stale fingerprint is caught by
    the 412 on the write anyway. A value that changed behind an entry (the
    console, say) is seen at the next resync, whose list refills the cache.
    """

    def __init__(self, ttl: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl, self._clock = ttl, clock
        self._lock = threading.Lock()
        self._entries: dict[BackendRef, tuple[float, Backend]] = {}

    def fill(self, backends: Iterable[Backend]) -> None:
        now = self._clock()
        with self._lock:
            self._entries = {b.ref: (now, b) for b in backends}

    def put(self, backend: Backend) -> None:
        with self._lock:
            self._entries[backend.ref] = (self._clock(), backend)

    def drop(self, ref: BackendRef) -> None:
        with self._lock:
            self._entries.pop(ref, None)

    def fresh(self, ref: BackendRef) -> Backend | None:
        with self._lock:
            entry = self._entries.get(ref)
        if entry is None or self._clock() - entry[0] > self._ttl:
            return None
        return entry[1]


class Reconciler:
    """``reconcile(key)`` for one Ingress key; safe to call from several workers,
    each with its own Compute (``compute`` returns this thread's)."""

    def __init__(
        self,
        *,
        ingresses: Callable[[], Mapping[str, Ingress]],
        ledger: Ledger,
        compute: Callable[[], Compute],
        recorder: EventRecorder,
        settings: plan.Settings,
        backends: BackendCache | None = None,
        dry_run: bool = False,
    ) -> None:
        self._ingresses = ingresses
        self._ledger = ledger
        self._compute = compute
        self._recorder = recorder
        self._settings = settings
        self._backends = backends or BackendCache()
        self._dry_run = dry_run

    def reconcile(self, key: str) -> Outcome:
        out = Outcome(key)
        ingresses = self._ingresses()
        records = self._ledger.snapshot()
        facts: dict[BackendRef, Backend | None] = {}
        for ref in sorted(plan.backends_to_read(key, ingresses, records, self._settings)):
            try:
                facts[ref] = self._read(ref)
            except GcpError as e:
                self._failed(out, ingresses, e)
        decided = plan.decide(key, ingresses, facts, records, self._settings)
        self._record(ingresses, decided.notes)
        changes: dict[BackendRef, plan.Record | None] = {}
        for step in decided.steps:
            if self._apply(out, ingresses, facts[step.ref], step):
                changes[step.ref] = step.record
        if not self._dry_run:
            self._ledger.update(changes)
        return out

    def _read(self, ref: BackendRef) -> Backend | None:
        cached = self._backends.fresh(ref)
        return cached if cached is not None else self._compute().get(ref)

    def _apply(
        self,
        out: Outcome,
        ingresses: Mapping[str, Ingress],
        fact: Backend | None,
        step: plan.Step,
    ) -> bool:
        if step.set_to is not None and fact is not None:
            verb = "restore" if step.restore else "set"
            line = f"{verb} {step.ref} timeoutSec {step.was}s -> {step.set_to}s"
            if self._dry_run:
                out.actions.append(f"would {line} (dry run)")
                log.info("dry run: would %s for %s", line, out.key)
                return False
            try:
                self._backends.put(self._compute().set_timeout(fact, step.set_to))
            except GcpError as e:
                self._backends.drop(step.ref)
                if step.restore and e.kind == "not_found":
                    log.info("%s: %s is gone; nothing to restore", out.key, step.ref)
                    return True  # forget it, as the plan does for a backend found missing
                self._failed(out, ingresses, e)
                return False
            out.actions.append(line)
            log.info("%s for %s", line, out.key)
        self._record(ingresses, step.notes)
        return True

    def _failed(self, out: Outcome, ingresses: Mapping[str, Ingress], error: GcpError) -> None:
        out.error, out.error_kind = str(error), error.kind
        reason = SLOW_KINDS.get(error.kind)
        if reason is None:
            log.warning("%s: %s; will retry with backoff", out.key, error)
            out.retry = out.retry or "soon"
            return
        log.warning("%s: %s; will retry later", out.key, error)
        out.retry = "soon" if out.retry == "soon" else "slow"
        message = f"{error.method} {error.target}: {error.message}"
        self._record(ingresses, [plan.Note(out.key, plan.WARNING, reason, message)])

    def _record(self, ingresses: Mapping[str, Ingress], notes: Iterable[plan.Note]) -> None:
        for note in notes:
            ingress = ingresses.get(note.key)
            if ingress is None:  # deleted: nothing to attach an Event to
                log.info("%s: %s: %s", note.key, note.reason, note.message)
                continue
            ref = ObjectRef(
                "Ingress", "networking.k8s.io/v1", ingress.namespace, ingress.name, ingress.uid
            )
            self._recorder.record(ref, note.type, note.reason, note.message)
