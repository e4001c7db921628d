"""The controller's Prometheus metrics, on a registry of their own.

Owns the metric names, types and labels, and the few calls that feed them;
the manager, reconciler and Compute client call these, the server exposes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily

from controller.kube.events import DROP_REASONS, DropReason

PREFIX = "gke_ingress_timeout_"

ReconcileResult = Literal["ok", "error", "retry"]
RESULTS: tuple[ReconcileResult, ...] = ("ok", "error", "retry")


class _CallbackCounter:
    """A counter whose value is read from `read` at scrape time.

    For a count kept elsewhere (the informer's restarts), so that it is never
    copied and never drifts. Each leadership term has its own informer: `follow`
    adds what the last one counted, so the counter never goes back.
    """

    def __init__(self, name: str, documentation: str) -> None:
        self._name, self._documentation = name, documentation
        self._read: Callable[[], float] = lambda: 0.0
        self._before = 0.0

    def follow(self, read: Callable[[], float]) -> None:
        self._before += self._read()
        self._read = read

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self._name, self._documentation)

    def collect(self) -> Iterator[CounterMetricFamily]:
        value = self._before + self._read()
        yield CounterMetricFamily(self._name, self._documentation, value=value)


class Metrics:
    """One controller's metrics. Thread-safe: every method may be called from any thread.

    Each instance has its own `registry`, so tests and several controllers in
    one process do not share values.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reconciles_total = Counter(
            PREFIX + "reconciles_total",
            "Reconciles finished, by result: ok; retry (failed, retried with backoff); "
            "error (failed in a way that retrying soon will not fix).",
            ["result"],
            registry=self.registry,
        )
        self.reconcile_errors_total = Counter(
            PREFIX + "reconcile_errors_total",
            "Reconciles that failed, by kind of error.",
            ["kind"],
            registry=self.registry,
        )
        self.gcp_calls_total = Counter(
            PREFIX + "gcp_calls_total",
            "HTTP requests to the Compute API, by method and status code (0: no response).",
            ["method", "code"],
            registry=self.registry,
        )
        self.compute_budget = Gauge(
            PREFIX + "compute_budget_per_second",
            "Compute requests allowed per second, all workers together (--read-rate, "
            "--write-rate), by kind: read or write.",
            ["kind"],
            registry=self.registry,
        )
        self.compute_budget_wait_seconds_total = Counter(
            PREFIX + "compute_budget_wait_seconds_total",
            "Seconds Compute requests waited for the budget, by kind: read or write.",
            ["kind"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            PREFIX + "queue_depth",
            "Keys ready in the work queue, waiting for a worker.",
            registry=self.registry,
        )
        self.watch_restarts_total = _CallbackCounter(
            PREFIX + "watch_restarts_total",
            "Times the Ingress watch ended and was started again.",
        )
        self.registry.register(self.watch_restarts_total)
        self.ingress_lists_total = _CallbackCounter(
            PREFIX + "ingress_lists_total",
            "Times every Ingress was listed: at the start of a term, and when a watch "
            "could not resume where it stopped (410 Gone).",
        )
        self.registry.register(self.ingress_lists_total)
        self.last_sync_timestamp_seconds = Gauge(
            PREFIX + "last_sync_timestamp_seconds",
            "Unix time at which the last full resync finished queueing every key.",
            registry=self.registry,
        )
        self.leader = Gauge(
            PREFIX + "leader",
            "1 while this replica holds the Lease and may write (always 1 with "
            "--no-leader-elect), else 0.",
            registry=self.registry,
        )
        self.events_total = Counter(
            PREFIX + "events_total",
            "Events the controller decided to post about an Ingress, by type (Normal, "
            "Warning) and reason (InvalidTimeout, TimeoutOverridden, PermissionDenied, ...).",
            ["type", "reason"],
            registry=self.registry,
        )
        self.events_dropped_total = Counter(
            PREFIX + "events_dropped_total",
            "Events that never reached the apiserver, by reason: rate_limited (past its "
            "object's rate limit, replaced by a later Event of the object before a token "
            "came), namespace_full or queue_full (the waiting Events' memory "
            "ceiling; the noisiest namespace's oldest Warnings go first), stopped (the "
            "apiserver could not take them when the process stopped).",
            ["reason"],
            registry=self.registry,
        )
        self.events_waiting = Gauge(
            PREFIX + "events_waiting",
            "Events waiting to be posted (during an apiserver outage, behind a burst, or "
            "held past their object's rate limit).",
            registry=self.registry,
        )
        # Present from the first scrape, so rate() sees the first reconcile (and drop).
        for result in RESULTS:
            self.reconciles_total.labels(result=result)
        for reason in DROP_REASONS:
            self.events_dropped_total.labels(reason=reason)

    def observe_reconcile(self, result: ReconcileResult, error_kind: str | None = None) -> None:
        """Count one finished reconcile; with `error_kind` (a small fixed set), one error too."""
        self.reconciles_total.labels(result=result).inc()
        if error_kind is not None:
            self.reconcile_errors_total.labels(kind=error_kind).inc()

    def gcp_call(self, method: str, code: int) -> None:
        """Count one HTTP request to Compute; `code` 0 when no response came back."""
        self.gcp_calls_total.labels(method=method, code=str(code)).inc()

    def budget(self, kind: str, per_second: float) -> Callable[[float], None]:
        """Show the ``kind`` budget; returns what its limiter calls with each wait."""
        self.compute_budget.labels(kind=kind).set(per_second)
        waited = self.compute_budget_wait_seconds_total.labels(kind=kind)
        return waited.inc

    def bind(
        self,
        *,
        queue_depth: Callable[[], float],
        watch_restarts: Callable[[], float],
        lists: Callable[[], float] = lambda: 0.0,
    ) -> None:
        """Read the queue depth and the informer's counts from these at each scrape
        (a new term binds its own; the counts go on from the last term's).

        They are called on the server's threads, so they must be thread-safe.
        """
        self.queue_depth.set_function(queue_depth)
        self.watch_restarts_total.follow(watch_restarts)
        self.ingress_lists_total.follow(lists)

    def leading(self, holds: Callable[[], bool]) -> None:
        """Read whether this replica holds the Lease from ``holds`` at each scrape."""
        self.leader.set_function(lambda: 1.0 if holds() else 0.0)

    def event(self, type: str, reason: str) -> None:
        """Count one Event decided on (before it is queued for the apiserver)."""
        self.events_total.labels(type=type, reason=reason).inc()

    def event_dropped(self, reason: DropReason) -> None:
        """Count one Event that was not posted."""
        self.events_dropped_total.labels(reason=reason).inc()

    def bind_events(self, waiting: Callable[[], float]) -> None:
        """Read the number of waiting Events from ``waiting`` at each scrape."""
        self.events_waiting.set_function(waiting)

    def synced(self, timestamp: float) -> None:
        """Record that a resync finished at `timestamp` (Unix seconds)."""
        self.last_sync_timestamp_seconds.set(timestamp)

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)
