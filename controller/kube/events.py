"""Kubernetes Events (core v1) about the objects the controller acts on.

Owns aggregation (a repeat PATCHes the count of the Event already posted
instead of posting another), the per-object rate limit, their bounded memory,
and the queue that posts them off the workers' path and again after an outage.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal, Protocol, TypeVar

from controller.kube.client import KubeError, unreachable

log = logging.getLogger(__name__)

EventType = Literal["Normal", "Warning"]
K = TypeVar("K")
V = TypeVar("V")

# The apiserver rejects an Event note longer than 1 kB.
MESSAGE_LIMIT = 1024
# Locks that serialise the Events of one object (by uid), so others go out meanwhile.
STRIPES = 16


class EventSink(Protocol):
    """The part of the Kubernetes client the recorder needs."""

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]: ...

    def patch(
        self, path: str, body: dict[str, Any], *, patch_type: str = "merge"
    ) -> dict[str, Any]: ...


class Recorder(Protocol):
    """What posts an Event: the recorder itself, or the queue in front of it."""

    def record(self, ref: ObjectRef, type: EventType, reason: str, message: str) -> None: ...


@dataclass(frozen=True)
class ObjectRef:
    """Which object an Event is about."""

    kind: str
    api_version: str
    namespace: str
    name: str
    uid: str

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> ObjectRef:
        """The reference to a Kubernetes object as the API returns it."""
        meta = obj["metadata"]
        return cls(
            kind=obj["kind"],
            api_version=obj["apiVersion"],
            namespace=meta.get("namespace", ""),
            name=meta["name"],
            uid=meta["uid"],
        )


@dataclass
class _Series:
    """An Event already posted, and how often it has happened."""

    name: str
    count: int
    last_seen: float


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class EventRecorder:
    """Posts Events, aggregating repeats and rate-limiting each object.

    ``record`` never raises: an Event is worth less than the work that
    reports it, so failures are logged and dropped.
    """

    def __init__(
        self,
        kube: EventSink,
        *,
        component: str,
        instance: str,
        clock: Callable[[], float] = time.time,
        aggregate_window: float = 3600.0,
        per_object_burst: int = 25,
        per_object_refill: float = 1 / 300,
        cache_size: int = 4096,
    ) -> None:
        self._kube = kube
        self._component = component
        self._instance = instance
        self._clock = clock
        # Longer than a resync (10 min, jittered), whose repeated warnings must land on
        # one Event; an Event the apiserver expired meanwhile (--event-ttl) answers 404.
        self._window = aggregate_window
        self._burst = per_object_burst
        self._refill = per_object_refill
        self._cache_size = cache_size
        # The lock guards the maps and is never held across an HTTP call; one of the
        # stripe locks is, so that one object's Events go out in order (and a series'
        # count stays monotonic) while other objects' Events go out meanwhile.
        self._lock = threading.Lock()
        self._stripes = [threading.Lock() for _ in range(STRIPES)]
        self._series: OrderedDict[tuple[str, str, str, str], _Series] = OrderedDict()
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def record(
        self,
        ref: ObjectRef,
        type: EventType,
        reason: str,
        message: str,
        *,
        action: str = "Reconcile",
    ) -> None:
        """Post (or aggregate into) an Event about ``ref``; never raises."""
        if not self.deliver(ref, type, reason, message, action=action):
            subject = f"{type} {reason} on {ref.kind} {ref.namespace}/{ref.name}"
            log.warning("could not record event %s: the apiserver cannot take it", subject)

    def deliver(
        self,
        ref: ObjectRef,
        type: EventType,
        reason: str,
        message: str,
        *,
        action: str = "Reconcile",
    ) -> bool:
        """Like ``record``, but False when the apiserver could not be reached (or
        answered 429/5xx): then nothing was spent, and the Event may be tried again."""
        message = truncate_utf8(message, MESSAGE_LIMIT)
        subject = f"{type} {reason} on {ref.kind} {ref.namespace}/{ref.name}"
        with self._stripes[zlib.crc32(ref.uid.encode()) % STRIPES]:
            with self._lock:
                now = self._clock()
                if not self._take_token(ref.uid, now):
                    log.debug(
                        "event dropped by the per-object rate limit: %s: %s", subject, message
                    )
                    return True
            try:
                self._emit(ref, type, reason, message, action, now)
            except Exception as exc:
                if unreachable(exc):
                    with self._lock:
                        self._buckets[ref.uid].tokens += 1  # not spent: it did not go out
                    log.debug("could not record event %s yet: %s", subject, exc)
                    return False
                log.warning("could not record event %s: %s", subject, exc)
        return True

    def _take_token(self, uid: str, now: float) -> bool:
        bucket = self._buckets.get(uid)
        if bucket is None:
            bucket = _Bucket(tokens=float(self._burst), stamp=now)
            self._remember(self._buckets, uid, bucket)
        else:
            self._buckets.move_to_end(uid)
            elapsed = max(now - bucket.stamp, 0.0)
            bucket.tokens = min(float(self._burst), bucket.tokens + elapsed * self._refill)
            bucket.stamp = now
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True

    def _emit(
        self, ref: ObjectRef, type: EventType, reason: str, message: str, action: str, now: float
    ) -> None:
        namespace = ref.namespace or "default"
        events = f"/api/v1/namespaces/{namespace}/events"
        key = (ref.uid, type, reason, message)
        with self._lock:
            series = self._series.get(key)
            if series is not None:
                self._series.move_to_end(key)
        if series is not None and now - series.last_seen <= self._window:
            try:
                self._kube.patch(
                    f"{events}/{series.name}",
                    {"count": series.count + 1, "lastTimestamp": rfc3339(now)},
                    patch_type="merge",
                )
            except KubeError as exc:
                # The apiserver deletes Events after its --event-ttl (1 h by default).
                if exc.status != 404:
                    raise
            else:
                with self._lock:
                    series.count += 1
                    series.last_seen = now
                return
        created = self._kube.post(events, self._new_event(ref, type, reason, message, action, now))
        name = created["metadata"]["name"]
        with self._lock:
            self._remember(self._series, key, _Series(name=name, count=1, last_seen=now))

    def _new_event(
        self, ref: ObjectRef, type: EventType, reason: str, message: str, action: str, now: float
    ) -> dict[str, Any]:
        stamp = rfc3339(now)
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "generateName": f"{ref.name}.",
                "namespace": ref.namespace or "default",
            },
            "involvedObject": {
                "kind": ref.kind,
                "apiVersion": ref.api_version,
                "namespace": ref.namespace,
                "name": ref.name,
                "uid": ref.uid,
            },
            "type": type,
            "reason": reason,
            "message": message,
            "action": action,
            "source": {"component": self._component},
            "reportingComponent": self._component,
            "reportingInstance": self._instance,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }

    def _remember(self, cache: OrderedDict[K, V], key: K, value: V) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > self._cache_size:
            cache.popitem(last=False)


class EventQueue:
    """Hands Events to a recorder on a thread of its own, so that no worker waits on
    the apiserver for an Event, and keeps those the apiserver could not take (an
    outage) to post them when it is back. At most ``capacity`` wait; past that the
    oldest are dropped, with a log line.
    """

    def __init__(
        self,
        recorder: EventRecorder,
        *,
        capacity: int = 2000,
        retry: float = 2.0,
        wait: Callable[[threading.Event, float], object] = lambda stop, s: stop.wait(s),
    ) -> None:
        self._recorder = recorder
        self._capacity = capacity
        self._retry = retry
        self._wait = wait
        self._cond = threading.Condition()
        self._items: deque[tuple[ObjectRef, EventType, str, str]] = deque()
        self.dropped = 0

    def record(self, ref: ObjectRef, type: EventType, reason: str, message: str) -> None:
        with self._cond:
            if len(self._items) >= self._capacity:
                self._items.popleft()
                self.dropped += 1
                log.warning("%d Events waiting: dropped the oldest", self._capacity)
            self._items.append((ref, type, reason, message))
            self._cond.notify()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def run(self, stop: threading.Event) -> None:
        """Post Events as they come until ``stop``; then try what is left once."""
        waiting = False  # the apiserver could not be reached: say so once an outage
        while not stop.is_set():
            with self._cond:
                while not self._items and not stop.is_set():
                    self._cond.wait(0.5)
                if stop.is_set():
                    break
                item = self._items[0]
            if self._recorder.deliver(*item):
                with self._cond:
                    if self._items and self._items[0] is item:
                        self._items.popleft()
                if waiting:
                    log.info("the apiserver takes Events again; %d waiting", len(self))
                    waiting = False
                continue
            if not waiting:
                # The client has told of the outage; this says what it means here.
                log.info("cannot post Events for now; they wait (%d) and go out later", len(self))
                waiting = True
            self._wait(stop, self._retry)
        self.flush()

    def flush(self) -> None:
        """Post the waiting Events on this thread, until the apiserver cannot take one."""
        while True:
            with self._cond:
                if not self._items:
                    return
                item = self._items.popleft()
            if not self._recorder.deliver(*item):
                log.warning("%d Events could not be posted before stopping", len(self) + 1)
                return


def truncate_utf8(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, never inside a character."""
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    return raw[:limit].decode("utf-8", errors="ignore")


def rfc3339(seconds: float) -> str:
    """A Unix time as the apiserver writes timestamps: UTC, whole seconds, 'Z'."""
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
