"""Leader election with a coordination.k8s.io/v1 Lease (client-go's leaderelection, small).

Owns acquiring, renewing and releasing one Lease, and telling the leader's
work when to stop. Expiry is judged by when we saw the record change on our
own monotonic clock, never by the remote timestamps, so clock skew is harmless.
A term ends the moment the Lease is in doubt (no renewal within the renew
deadline), as in client-go: a renewal that comes back later does not revive it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from controller.kube.client import KubeClient, KubeError, Timeout, unreachable
from controller.kube.watch import Wait, wait_on

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseConfig:
    """renew_deadline must be below lease_duration: the leader has to give up
    before anyone else may consider the lease expired."""

    namespace: str
    name: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    @property
    def path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/{self.name}"


def micro_time(moment: datetime) -> str:
    """A metav1.MicroTime: RFC 3339 in UTC with microseconds."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def expired(observed_at: float, lease_duration: float, now: float) -> bool:
    """Whether a record last seen changing at observed_at (local clock) has run out."""
    return now >= observed_at + lease_duration


def claim(
    old: Mapping[str, Any] | None, identity: str, lease_duration: float, now: datetime
) -> dict[str, Any]:
    """The spec that makes identity the holder: a create (old None), a renewal or a takeover."""
    stamp = micro_time(now)
    spec: dict[str, Any] = {
        "holderIdentity": identity,
        # the field is whole seconds; rounding up never shortens what we promise
        "leaseDurationSeconds": max(1, math.ceil(lease_duration)),
        "acquireTime": stamp,
        "renewTime": stamp,
        "leaseTransitions": 0,
    }
    if old is None:
        return spec
    transitions = int(old.get("leaseTransitions") or 0)
    if old.get("holderIdentity") == identity:
        spec["acquireTime"] = old.get("acquireTime") or stamp
        spec["leaseTransitions"] = transitions
    else:
        spec["leaseTransitions"] = transitions + 1
    return spec


def released(old: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The spec that hands the lease back: no holder, expiring one second after it is seen."""
    stamp = micro_time(now)
    return {
        "holderIdentity": "",
        "leaseDurationSeconds": 1,
        "acquireTime": stamp,
        "renewTime": stamp,
        "leaseTransitions": int(old.get("leaseTransitions") or 0),
    }


class LeaderElector:
    """Campaigns for one Lease and runs the leader's work while it holds it.

    is_leader is set while a term runs. run() is one term (or a campaign that
    gave up); call it again to campaign for the next.
    """

    def __init__(
        self,
        kube: KubeClient,
        config: LeaseConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        wait: Wait = wait_on,
    ) -> None:
        self._kube = kube
        self.config = config
        self._clock = clock
        self._now = now
        self._wait = wait
        self.is_leader = threading.Event()
        self._lease: dict[str, Any] | None = None  # the last Lease read or written
        self._observed_at = 0.0
        self._renewed_at = 0.0  # our clock when the last successful renewal was sent
        # The current term's: set when the Lease is in doubt (the fence then stays shut
        # for the rest of the term), and the term's ``lost``.
        self._in_doubt = threading.Event()
        self._lost = threading.Event()

    def __repr__(self) -> str:
        c = self.config
        return f"LeaderElector({c.namespace}/{c.name}, identity={c.identity!r})"

    def run(
        self,
        stop: threading.Event,
        on_started_leading: Callable[[threading.Event], None],
        *,
        give_up_after: float | None = None,
    ) -> bool:
        """Campaign until leader, then run on_started_leading(lost) in a thread and renew.

        ``lost`` tells the work to wind down: set when stop is set (the lease
        is then still renewed until the work has returned, so in-flight writes
        finish under it, and released after) or when the Lease is in doubt
        (then ``holding()`` is already false, and stays false: nothing more
        may be written in this term). Returns with is_leader clear, after
        on_started_leading has returned: True if it led, False if stop was set
        or ``give_up_after`` seconds passed before it could take the Lease.
        """
        renewed = self._acquire(stop, give_up_after)
        if renewed is None:
            return False
        lost = threading.Event()
        self._lost, self._in_doubt = lost, threading.Event()
        self._renewed_at = renewed
        self.is_leader.set()
        log.info("%s: became leader", self)
        worker = threading.Thread(
            target=self._lead, args=(on_started_leading, lost), name=f"leader {self.config.name}"
        )
        worker.start()
        stopped = False
        try:
            stopped = self._renew(stop, lost, worker)
        finally:
            self.is_leader.clear()
            lost.set()
            if not stopped:
                log.info("%s: lost leadership", self)
            # The work must be finished before a successor can start, so the
            # lease is handed back only after it returns.
            worker.join()
        if stopped:
            self._release()
        return True

    def holding(self) -> bool:
        """The fence: True only while the lease is surely ours, judged on our own clock.

        False from the moment the last successful renewal is renew_deadline
        old, even before the renewing thread has noticed: a successor may
        take over lease_duration after that renewal, never sooner. Once False
        it stays False for the rest of the term, and the term's ``lost`` is
        set: a worker refused a write in the gap must not find the fence open
        again afterwards, as if nothing had been dropped; the next term
        starts over from what is stored.
        """
        if not self.is_leader.is_set() or self._in_doubt.is_set():
            return False
        if self._clock() < self._renewed_at + self.config.renew_deadline:
            return True
        self._doubt()
        return False

    def holder(self) -> str:
        """The holderIdentity of the Lease as last read or written ("" for none)."""
        spec = (self._lease or {}).get("spec") or {}
        return str(spec.get("holderIdentity") or "")

    def _doubt(self) -> None:
        if not self._in_doubt.is_set():
            self._in_doubt.set()
            log.warning(
                "%s: no renewal for %.1f s: the Lease is in doubt, this term ends",
                self,
                self.config.renew_deadline,
            )
        self._lost.set()

    def _lead(
        self, on_started_leading: Callable[[threading.Event], None], lost: threading.Event
    ) -> None:
        try:
            on_started_leading(lost)
        except Exception:
            log.exception("%s: on_started_leading failed", self)

    def _acquire(self, stop: threading.Event, give_up_after: float | None) -> float | None:
        """The clock when the winning request was sent, or None if stopped (or out of
        patience) first."""
        give_up_at = None if give_up_after is None else self._clock() + give_up_after
        while not stop.is_set():
            started = self._clock()
            if self._try(self.config.renew_deadline):
                return started
            if give_up_at is not None and self._clock() + self.config.retry_period > give_up_at:
                return None
            self._wait(stop, self.config.retry_period)
        return None

    def _renew(
        self, stop: threading.Event, lost: threading.Event, worker: threading.Thread
    ) -> bool:
        """Renew until stopped and the work has returned (True), or until the Lease
        is in doubt or taken (False)."""
        config = self.config
        delay = config.retry_period
        while True:
            self._wait(stop, delay)
            if stop.is_set():
                lost.set()  # wind down; renewing goes on while in-flight work ends
                worker.join(timeout=delay)
                if not worker.is_alive():
                    return True
            started = self._clock()
            if not self.holding():
                return False
            budget = self._renewed_at + config.renew_deadline - started
            if self._try(budget):
                # A renewal that came back too late leaves the term in doubt: the
                # fence may have been shut meanwhile, and it is never opened again.
                if not self.holding():
                    return False
                self._renewed_at = started
                delay = config.retry_period
                continue
            if self.holder() != config.identity:
                log.warning("%s: the lease is now held by %r", self, self.holder())
                return False
            left = self._renewed_at + config.renew_deadline - self._clock()
            delay = max(0.0, min(config.retry_period, left))

    def _try(self, budget: float) -> bool:
        """One client-go tryAcquireOrRenew: True if we hold the lease after it."""
        config = self.config
        timeout = self._timeout(budget)
        try:
            try:
                lease = self._kube.request("GET", config.path, timeout=timeout).json()
            except KubeError as exc:
                if exc.status != 404:
                    raise
                self._write("POST", self._created(), timeout)
                return True
            spec = lease.get("spec") or {}
            if self._lease is None or spec != self._lease.get("spec"):
                self._observed_at = self._clock()
            self._lease = lease
            holder = spec.get("holderIdentity") or ""
            duration = float(spec.get("leaseDurationSeconds") or config.lease_duration)
            if (
                holder
                and holder != config.identity
                and not expired(self._observed_at, duration, self._clock())
            ):
                return False
            new_spec = claim(spec, config.identity, config.lease_duration, self._now())
            # metadata carries the resourceVersion we read: a 409 means someone wrote since
            self._write("PUT", {**lease, "spec": new_spec}, timeout)
            return True
        except KubeError as exc:
            if exc.status == 409:
                log.debug("%s: lost a race for the lease: %s", self, exc.message)
            elif unreachable(exc):
                log.debug("%s: %s", self, exc)  # the client's Outage has told of it
            else:
                log.warning("%s: %s", self, exc)
            return False
        except Exception as exc:
            # refused connections and timeouts: the network, which renew_deadline is for
            level = logging.DEBUG if unreachable(exc) else logging.WARNING
            log.log(level, "%s: %s: %s", self, type(exc).__name__, exc)
            return False

    def _created(self) -> dict[str, Any]:
        config = self.config
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": config.name, "namespace": config.namespace},
            "spec": claim(None, config.identity, config.lease_duration, self._now()),
        }

    def _write(self, method: str, body: dict[str, Any], timeout: Timeout) -> None:
        path = self.config.path
        if method == "POST":
            path = path.rsplit("/", 1)[0]
        lease = self._kube.request(method, path, json=body, timeout=timeout).json()
        self._lease = lease
        self._observed_at = self._clock()

    def _timeout(self, budget: float) -> Timeout:
        # A request must not outlive the renew deadline, or a leader cut off
        # from the apiserver would go on acting after others took over.
        connect, read = self._kube.timeout
        return (min(connect, budget), min(read, budget))

    def _release(self) -> None:
        """client-go's ReleaseOnCancel: hand the lease over now instead of letting it expire."""
        if self._lease is None or self.holder() != self.config.identity:
            return
        lease = {**self._lease, "spec": released(self._lease.get("spec") or {}, self._now())}
        try:
            self._write("PUT", lease, self._timeout(self.config.renew_deadline))
        except Exception as exc:
            log.warning("%s: could not release the lease, it will expire: %s", self, exc)
            return
        log.info("%s: released the lease", self)
