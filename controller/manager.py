"""The running controller: informer -> work queue -> workers -> reconciler, plus resync.

Owns the threads and their lifecycle: start after the first LIST, resync every
period (jittered), stop taking work on ``stop`` and let in-flight reconciles end.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from controller import plan
from controller.gcp.backends import Compute, GcpError
from controller.ingress import Ingress, from_object
from controller.kube.client import KubeClient
from controller.kube.events import EventRecorder
from controller.kube.watch import Backoff, Informer, wait_on
from controller.ledger import Ledger
from controller.metrics import Metrics, ReconcileResult
from controller.queue import WorkQueue
from controller.reconciler import BackendCache, Outcome, Reconciler

log = logging.getLogger(__name__)

INGRESSES = "/apis/networking.k8s.io/v1/ingresses"
COMPONENT = "gke-ingress-timeout"
SLOW_RETRY = 300.0  # seconds before retrying what GCP refused for lack of rights or a resource


class Manager:
    """One controller: ``run`` it as the leader, or ``run_once``. ``state`` is the
    (namespace, name) of the ledger ConfigMap."""

    def __init__(
        self,
        *,
        kube: KubeClient,
        compute: Callable[[], Compute],
        settings: plan.Settings,
        state: tuple[str, str],
        instance: str,
        workers: int = 4,
        resync_period: float = 600.0,
        dry_run: bool = False,
        rng: random.Random | None = None,
        wait: Callable[[threading.Event, float], None] = wait_on,
        informer_options: Mapping[str, Any] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self._kube = kube
        self._compute = compute
        self._workers = workers
        self._resync_period = resync_period
        self._rng = rng or random.Random()
        self._wait = wait
        self.queue = WorkQueue()
        self.informer: Informer[Ingress] = Informer(
            kube,
            INGRESSES,
            transform=functools.partial(from_object, timeout_key=settings.timeout_key),
            on_change=lambda _kind, key: self.queue.add(key),
            rng=self._rng,
            **(informer_options or {}),
        )
        # Where reconciles read Ingresses: the informer's store, or run_once's LIST.
        self._source: Callable[[], Mapping[str, Ingress]] = lambda: dict(self.informer.items())
        self.ledger = Ledger(kube, *state)
        self.backends = BackendCache()
        self.reconciler = Reconciler(
            ingresses=lambda: self._source(),
            ledger=self.ledger,
            compute=compute,
            recorder=EventRecorder(kube, component=COMPONENT, instance=instance),
            settings=settings,
            backends=self.backends,
            dry_run=dry_run,
        )
        self.ready = threading.Event()
        self._threads: list[threading.Thread] = []
        self.metrics = metrics or Metrics()
        self.metrics.bind(
            queue_depth=lambda: len(self.queue),
            watch_restarts=lambda: self.informer.stats.restarts,
        )

    def healthy(self) -> bool:
        """No thread of ours died: the informer and every worker run while we run."""
        return all(t.is_alive() for t in self._threads)

    def run(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set; returns once in-flight reconciles have finished."""
        informer = threading.Thread(target=self.informer.run, args=(stop,), name="informer")
        self._threads = [informer]
        informer.start()
        while not (self.informer.synced.is_set() or stop.is_set()):
            self._wait(stop, 0.1)
        if not stop.is_set() and self._load_ledger(stop):
            self.resync()  # before the workers, so they start from the paged list
            workers = [
                threading.Thread(target=self._work, name=f"worker-{i}")
                for i in range(self._workers)
            ]
            self._threads += workers
            for w in workers:
                w.start()
            self.ready.set()
            while not stop.is_set():
                self._wait(stop, self._resync_period * (1 + self._rng.uniform(0, 0.1)))
                if not stop.is_set():
                    self.resync()
            self.queue.shut_down()
            for w in workers:
                w.join()
        informer.join()
        self.ready.clear()
        self._threads = []

    def _load_ledger(self, stop: threading.Event) -> bool:
        backoff = Backoff(self._rng, time.monotonic)
        while not stop.is_set():
            try:
                self.ledger.load()
                return True
            except Exception as e:
                delay = backoff.next()
                log.warning("cannot read %r: %s; retrying in %.1fs", self.ledger, e, delay)
                self._wait(stop, delay)
        return False

    def resync(self) -> None:
        """Refresh the backend list and enqueue every key: level-triggered catch-up."""
        self.refresh_backends()
        keys = set(self.informer.keys())
        keys.update(k for rec in self.ledger.snapshot().values() for k, _ in rec.claims)
        for key in sorted(keys):
            self.queue.add(key)
        self.metrics.synced(time.time())
        log.info("resync: %d Ingresses queued", len(keys))

    def refresh_backends(self) -> None:
        scopes = ["global"] + ([self.settings.region] if self.settings.region else [])
        try:
            compute = self._compute()
            self.backends.fill(b for scope in scopes for b in compute.list(scope).values())
        except GcpError as e:
            log.warning("listing backend services failed: %s; reconciles will GET each", e)

    def _work(self) -> None:
        while (key := self.queue.get()) is not None:
            outcome = self._reconcile(key)
            self.queue.done(key)
            self.metrics.observe_reconcile(_result(outcome), outcome.error_kind or None)
            if outcome.retry == "soon":
                self.queue.add_rate_limited(key)
            elif outcome.retry == "slow":
                self.queue.add_after(key, SLOW_RETRY)
            else:
                self.queue.forget(key)

    def _reconcile(self, key: str) -> Outcome:
        try:
            return self.reconciler.reconcile(key)
        except Exception as e:  # an apiserver hiccup writing the ledger, a bug: retry, not crash
            log.exception("reconcile %s failed", key)
            return Outcome(
                key, retry="soon", error=f"{type(e).__name__}: {e}", error_kind="exception"
            )

    def run_once(self) -> list[Outcome]:
        """Reconcile every Ingress (and every remembered one) once, without watching."""
        items, _ = self._kube.list(INGRESSES)
        watched = self.settings.namespaces
        ingresses: dict[str, Ingress] = {}
        for obj in items:
            ing = from_object(obj, timeout_key=self.settings.timeout_key)
            if not watched or ing.namespace in watched:
                ingresses[ing.key] = ing
        self._source = lambda: ingresses
        self.ledger.load()
        self.refresh_backends()
        keys = set(ingresses)
        keys.update(k for rec in self.ledger.snapshot().values() for k, _ in rec.claims)
        return [self._reconcile(key) for key in sorted(keys)]


def _result(outcome: Outcome) -> ReconcileResult:
    if outcome.retry == "soon":
        return "retry"
    return "error" if outcome.error else "ok"
