"""The running controller: informer -> index -> work queue -> workers -> reconciler.

Owns the threads and their lifecycle: load the records, list the backend
services, queue what needs a look, then serve the queue; resync every period
(jittered) by listing the backend services again and queueing every one it
watches; bring back by itself every key a reconcile asks to see again later;
stop taking work on ``stop`` and let in-flight reconciles end.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from controller import plan
from controller.finishers import Finishers
from controller.gcp.backends import Compute, GcpError
from controller.gcp.cache import BackendCache
from controller.index import ClaimIndex
from controller.ingress import Ingress, from_object
from controller.kube.client import KubeClient, unreachable
from controller.kube.events import (
    EventQueue,
    EventRecorder,
    EventType,
    ObjectRef,
    Owed,
    Recorder,
    told_before,
)
from controller.kube.watch import Backoff, Informers, wait_on
from controller.metrics import Metrics, ReconcileResult
from controller.model import GLOBAL, BackendRef, Settings
from controller.plan import Record
from controller.queue import WorkQueue
from controller.reconciler import IngressKey, Key, Outcome, Reconciler
from controller.records import Records

log = logging.getLogger(__name__)
T = TypeVar("T")

INGRESSES = "/apis/networking.k8s.io/v1/ingresses"
NAMESPACED_INGRESSES = "/apis/networking.k8s.io/v1/namespaces/{namespace}/ingresses"
COMPONENT = "gke-ingress-timeout"
SLOW_RETRY = 300.0  # seconds before retrying what GCP refused for lack of rights or a resource
# Finishers a worker has: a GCP operation can take many seconds to be DONE, and each
# rest waits on its own while the worker sends the next write.
FINISHERS_PER_WORKER = 4
RESYNC_LANE = ""  # the queue lane of work found by a resync rather than by a tenant's change
# Ingresses a LIST page holds. A page is parsed as a stream, one Ingress at a time
# (kube/client.py), so its size bounds round trips, not memory: a tenant's 256 KiB
# Ingresses cost one of them at a time however many a page holds.
INGRESS_PAGE = 500
# An Event owed by a write is told at a term's start only this long after the write
# (the apiserver keeps Events an hour by default: an older one may have expired).
OWED_FOR = 3600.0


class Manager:
    """One controller: ``run`` it as the leader, or ``run_once``.

    ``namespace`` holds its records; ``legacy_configmap`` names the ConfigMap
    in which earlier versions kept them (moved over at start).
    """

    def __init__(
        self,
        *,
        kube: KubeClient,
        compute: Compute,
        settings: Settings,
        namespace: str,
        instance: str,
        legacy_configmap: str = "gke-ingress-timeout-state",
        workers: int = 4,
        resync_period: float = 600.0,
        slow_retry: float = SLOW_RETRY,
        dry_run: bool = False,
        rng: random.Random | None = None,
        wait: Callable[[threading.Event, float], None] = wait_on,
        informer_options: Mapping[str, Any] | None = None,
        metrics: Metrics | None = None,
        events: EventQueue | None = None,
    ) -> None:
        self.settings = settings
        self._compute = compute
        self._workers = workers
        self._resync_period = resync_period
        self._slow_retry = slow_retry
        self._legacy_configmap = legacy_configmap
        self._dry_run = dry_run
        self._rng = rng or random.Random()
        self._wait = wait
        self._may_write: Callable[[], bool] = lambda: True
        self._stop = threading.Event()  # ``run``'s, once it runs
        # An Ingress's own report (a Warning about what it asks) is quick and is what
        # its owner waits for: it goes ahead of backend work in its namespace's lane.
        self.queue: WorkQueue[Key] = WorkQueue(first=lambda key: isinstance(key, IngressKey))
        self.index = ClaimIndex()
        self.cache = BackendCache()
        self.informer: Informers[Ingress] = Informers(
            kube,
            ingress_paths(settings.namespaces),
            transform=functools.partial(from_object, settings=settings),
            on_change=self._on_ingress,
            rng=self._rng,
            **{"page_size": INGRESS_PAGE, **(informer_options or {})},
        )
        self.records = Records(
            kube, namespace, may_write=lambda: self._may_write(), on_change=self._on_record
        )
        self.metrics = metrics or Metrics()
        # The process's Event queue outlives a term (an outage that ends the term does not
        # throw its Events away); without one, this Manager has its own and runs it.
        self._own_events = events is None
        if events is None:  # not ``events or``: an empty queue is falsy (it has a length)
            recorder = EventRecorder(kube, component=COMPONENT, instance=instance)
            events = EventQueue(recorder, on_drop=self.metrics.event_dropped, posters=workers)
        self.events = events
        self._kube = kube
        self.reconciler = Reconciler(
            ingress=self.informer.get,
            index=self.index,
            records=self.records,
            compute=compute,
            cache=self.cache,
            recorder=_Counted(self.events, self.metrics.event),
            settings=settings,
            may_write=lambda: self._may_write(),
            stopping=lambda: self._stop.is_set(),
            dry_run=dry_run,
        )
        # The rest of each write (its operation, outcome, Events) is left to finishers,
        # which start it when no worker is on its way to a PATCH; a worker whose write
        # cannot wait there finishes it itself. They mostly wait on GCP's operations.
        self._finishers: Finishers[Key, Outcome] = Finishers(
            workers * FINISHERS_PER_WORKER, self._finish
        )
        self.ready = threading.Event()
        self.ran = False
        self._threads: list[threading.Thread] = []
        self.metrics.bind(
            queue_depth=lambda: len(self.queue),
            watch_restarts=lambda: self.informer.stats.restarts,
            lists=lambda: self.informer.stats.lists,
        )

    def healthy(self) -> bool:
        """No thread of ours died: the informer, every worker and every finisher run
        while we run."""
        return all(t.is_alive() for t in self._threads) and self._finishers.healthy()

    def run(self, stop: threading.Event, may_write: Callable[[], bool] | None = None) -> None:
        """Run until ``stop`` is set; returns once in-flight reconciles have finished.

        ``may_write`` is the leader's fence: no record or GCP write is sent
        unless it holds (default: always, for a single replica).
        """
        if self.ran:
            raise RuntimeError("a Manager runs once: make a new one for a new term")
        self.ran = True
        self._stop = stop
        if may_write is not None:
            self._may_write = may_write
        informer = threading.Thread(target=self.informer.run, args=(stop,), name="informer")
        events_stop = threading.Event()  # after the workers: their last Events go out too
        events = threading.Thread(target=self.events.run, args=(events_stop,), name="events")
        self._threads = [informer, events] if self._own_events else [informer]
        for thread in self._threads:
            thread.start()
        while not (self.informer.synced.is_set() or stop.is_set()):
            self._wait(stop, 0.1)
        if not stop.is_set() and self._retrying(stop, self._load_records):
            self.recall_events()
            self.tell_owed()
            self.start_sync()  # before the workers, so they start from the paged list
            self._finishers.start()
            workers = [
                threading.Thread(target=self._work, name=f"worker-{i}")
                for i in range(self._workers)
            ]
            self._threads += workers
            for w in workers:
                w.start()
            # Stop taking work the moment ``stop`` is set, even amid a resync's list.
            closer = threading.Thread(target=self._close_on, args=(stop,), name="closer")
            closer.start()
            self.ready.set()
            while not stop.is_set():
                self._wait(stop, self._resync_period * (1 + self._rng.uniform(0, 0.1)))
                if not stop.is_set():
                    self.resync()
            closer.join()
            for w in workers:
                w.join()
        informer.join()
        # What this term's records owe and the queue has not taken in yet stays owed:
        # the next term (here or elsewhere) tells it from its records.
        self.events.owe(tuple)
        events_stop.set()
        if self._own_events:
            events.join()
        self.ready.clear()
        self._threads = []

    def _close_on(self, stop: threading.Event) -> None:
        stop.wait()
        self.queue.shut_down()
        # The rests of writes waiting for a finisher start now, side by side, beside
        # the workers' last decisions (whose rests the workers finish themselves): each
        # ends as a reconcile begun at the stop would.
        self._finishers.stop()

    def _retrying(self, stop: threading.Event, action: Callable[[], object]) -> bool:
        backoff = Backoff(self._rng, time.monotonic)
        while not stop.is_set():
            try:
                action()
                return True
            except Exception as e:
                delay = backoff.next()
                level = logging.DEBUG if unreachable(e) else logging.WARNING
                log.log(level, "%s: %s; retrying in %.1fs", action.__name__, e, delay)
                self._wait(stop, delay)
        return False

    def _load_records(self) -> None:
        self.records.load()
        if self._may_write() and not self._dry_run:
            self.records.migrate(self._legacy_configmap)

    def recall_events(self) -> None:
        """Learn the Events posted before this term, so that the term's first decisions
        do not tell a standing condition again (without them, at worst they would)."""
        try:
            told = told_before(self._kube, COMPONENT, self.settings.namespaces)
        except Exception as e:  # a lack of rights to list Events must not stop the term
            log.warning("cannot read the Events posted before: %s; repeats may be posted", e)
            return
        recalled = self.events.recorder.recall(told)
        log.info("recalled %d recent Events posted before this term", recalled)

    def tell_owed(self) -> None:
        """Tell the Events that the records say their last writes owe, unless the
        apiserver has them (a kill or a lost Lease may have come before they went out),
        and those of this term's writes the queue had no room for (``EventQueue.owe``).
        A write still unsettled is left to its decision, which tells them if it landed.
        A restore's record may be gone once it is done: only TimeoutApplied is set aside."""
        self.events.owe(self._owed, reasons=("TimeoutApplied",))

    def _owed(self) -> Iterator[Owed]:
        """The Events the records owe, read as the queue takes them. Which writes owe
        them is noted first: a write made since is told by its own decision, not here."""
        now = time.time()
        owing = []
        for ref in self.records.refs():
            record = self.records.get(ref)
            if record is None or record.intent is not None or now - record.notes_at > OWED_FOR:
                continue
            if record.notes:
                owing.append((ref, record.notes_at))
        if owing:
            log.info("Events owed by %d earlier writes told (unless already posted)", len(owing))
        for ref, notes_at in owing:
            record = self.records.get(ref)
            if record is None or record.intent is not None or record.notes_at != notes_at:
                continue  # written since: that write's decision tells what it owes
            for note in record.notes:
                ingress = self.informer.get(note.key)
                if ingress is None:
                    continue
                obj = ObjectRef(
                    "Ingress", "networking.k8s.io/v1", ingress.namespace, ingress.name, ingress.uid
                )
                yield Owed(obj, note.type, note.reason, note.message, notes_at)

    def start_sync(self) -> None:
        """Queue everything once: every claimed or recorded backend, every Ingress problem."""
        self.refresh_backends()
        refs = self.index.refs() | set(self.records.refs())
        self._add(refs, RESYNC_LANE)
        # The backends are known now: an ask of another's gets its warning once.
        problems = [k for k, ing in self.informer.items() if self._to_report(ing)]
        for key in problems:
            self.queue.add(IngressKey(key), key.partition("/")[0])
        self.metrics.synced(time.time())
        log.info(
            "start: %d backend services and %d Ingress problems queued", len(refs), len(problems)
        )

    def resync(self) -> None:
        """List the backend services, then queue every one claimed or recorded, as an
        informer's resync does: each is decided from the fresh list (no Compute call
        for one listed), so whatever a missed event or a lost term left undone is done."""
        changed = self.refresh_backends()
        watched = self.index.refs() | set(self.records.refs())
        self._add(watched, RESYNC_LANE)
        self.metrics.synced(time.time())
        log.info(
            "resync: %d backend services queued, %d changed behind our back",
            len(watched),
            len(changed & watched),
        )

    def refresh_backends(self) -> set[BackendRef]:
        """Refill the backend cache from the paged lists; the refs whose facts changed."""
        scopes = [GLOBAL] + ([self.settings.region] if self.settings.region else [])
        began = self.cache.began()
        deadline = self._compute.deadline()  # one for every scope: a stop waits on it
        listed = (b for scope in scopes for b in self._compute.backends(scope, deadline=deadline))
        try:
            # Page by page into the cache: a resync never holds a second copy of them all.
            return self.cache.fill(scopes, listed, began)
        except GcpError as e:
            level = logging.INFO if e.kind == "transient" else logging.WARNING
            log.log(level, "listing backend services failed: %s; reconciles will GET each", e)
            return set()

    def _on_ingress(self, kind: str, key: str, old: Ingress | None, new: Ingress | None) -> None:
        old_refs = old.refs if old is not None else ()
        new_refs = new.refs if new is not None else ()
        self.index.update(key, old_refs, new_refs)
        if old == new:
            return  # a relist, or a change of nothing the decisions read (health flips)
        namespace = key.partition("/")[0]
        # A backend known to be no Ingress's of this namespace (the cluster default,
        # another cluster's, another namespace's Service) is not this change's concern:
        # the change costs the size of this Ingress, however many others name it.
        refs = {r for r in {*old_refs, *new_refs} if self._owner(r) in (None, namespace)}
        self._add(refs | self.index.recorded(key), namespace)
        if new is None:
            return
        new_problem = bool(new.problems) and (old is None or old.problems != new.problems)
        asks_anew = old is None or (old.refs, old.asks, old.services) != (
            new.refs,
            new.asks,
            new.services,
        )
        if new_problem or (asks_anew and self._to_report(new)):
            self.queue.add(IngressKey(key), namespace)

    def _owner(self, ref: BackendRef) -> str | None:
        """The namespace that may own ``ref`` (see plan.owner); None: not looked at yet."""
        known, fact = self.cache.get(ref)
        return plan.owner(ref, fact if known else None, self.settings)

    def _to_report(self, ingress: Ingress) -> bool:
        """Whether the Ingress's own report has something to say: a problem of its input,
        or an ask of a backend service known not to be its own."""
        if ingress.problems:
            return True
        for ref in ingress.refs:
            known, fact = self.cache.get(ref)
            if plan.refusal(ingress, ref, fact if known else None, self.settings) is not None:
                return True
        return False

    def _on_record(self, ref: BackendRef, old: Record | None, new: Record | None) -> None:
        self.index.record(
            ref,
            old.ingresses() if old else (),
            new.ingresses() if new else (),
        )

    def _add(self, refs: Iterable[BackendRef], lane: str) -> None:
        for ref in sorted(refs):
            self.queue.add(ref, lane)
            # A write of it still being finished holds it: a tenant's change waits on
            # that, so it starts now. A resync's look can wait (it would otherwise start
            # every waiting rest at once, each on a thread of its own).
            if lane != RESYNC_LANE:
                self._finishers.expedite(ref)

    def _work(self) -> None:
        while (key := self.queue.get()) is not None:
            with self._finishers.path():
                outcome = self._step(key, self.reconciler.begin, key)
            # The rest of a write (its operation, outcome, Events) goes to the finishers
            # and the worker takes the next backend; the key stays taken until it is
            # done, so the next decision on it waits, others do not.
            if outcome.rest is not None and self._finishers.hand(key, outcome):
                continue
            self._finish(key, outcome)

    def _finish(self, key: Key, outcome: Outcome, waited: float = 0.0) -> None:
        self._done(key, self._step(key, lambda out: self.reconciler.finish(out, waited), outcome))

    def _done(self, key: Key, outcome: Outcome) -> None:
        self.queue.done(key)
        self.metrics.observe_reconcile(_result(outcome), outcome.error_kind or None)
        if outcome.retry == "soon":
            self.queue.add_rate_limited(key, RESYNC_LANE)
        elif outcome.retry == "slow":
            self.queue.add_after(key, self._slow_retry, RESYNC_LANE)
        else:
            self.queue.forget(key)
            if outcome.recheck is not None:
                self.queue.add_after(key, outcome.recheck, RESYNC_LANE)

    def _step(self, key: Key, step: Callable[[T], Outcome], arg: T) -> Outcome:
        try:
            return step(arg)
        except Exception as e:  # a bug: retry, not crash
            log.exception("reconcile %s failed", key)
            return Outcome(
                str(key), retry="soon", error=f"{type(e).__name__}: {e}", error_kind="exception"
            )

    def run_once(self, may_write: Callable[[], bool] | None = None) -> list[Outcome]:
        """Reconcile every claimed and recorded backend service once, without watching.

        ``may_write`` is the fence, as for ``run``.
        """
        if may_write is not None:
            self._may_write = may_write
        self.informer.list_once()
        self._load_records()
        self.recall_events()
        self.start_sync()
        outcomes = []
        while (key := self.queue.get(timeout=0)) is not None:
            outcome = self._step(key, self.reconciler.reconcile, key)
            self.queue.done(key)
            if not isinstance(key, IngressKey):
                outcomes.append(outcome)
        self.events.flush()
        return outcomes


class _Counted:
    """A Recorder that counts each Event by type and reason, then hands it on."""

    def __init__(self, inner: Recorder, count: Callable[[str, str], None]) -> None:
        self._inner, self._count = inner, count

    def record(self, ref: ObjectRef, type: EventType, reason: str, message: str) -> None:
        self._count(type, reason)
        self._inner.record(ref, type, reason, message)


def ingress_paths(namespaces: Iterable[str]) -> dict[str, str]:
    """The Ingress collections to list and watch: each namespace's own, when the
    controller is scoped to some, so that it never receives the rest of the cluster."""
    scoped = sorted(namespaces)
    if not scoped:
        return {"": INGRESSES}
    return {ns: NAMESPACED_INGRESSES.format(namespace=ns) for ns in scoped}


def _result(outcome: Outcome) -> ReconcileResult:
    if outcome.retry == "soon":
        return "retry"
    return "error" if outcome.error else "ok"
