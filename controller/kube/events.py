"""Kubernetes Events (core v1) about the objects the controller acts on.

Owns aggregation (a repeat PATCHes the count of the Event already posted
instead of posting another), the per-object rate limit, their bounded memory,
what the apiserver says was told before (``recall``, when a term begins), and
the queue that posts them off the workers' path, fairly across namespaces,
within a fixed memory ceiling, and again after an outage.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import math
import threading
import time
import zlib
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, Protocol, TypeVar

from controller.kube.client import KubeClient, KubeError, unreachable

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


def series_key(uid: str, type: str, reason: str, message: str) -> bytes:
    """The key of an Event series: a 16-byte digest of what makes two Events one, held
    in place of the strings (an entry of the maps of series takes 219 bytes, not 514;
    uid, type and reason hold no NUL, so the message, last, cannot shift them)."""
    text = "\0".join((uid, type, reason, message)).encode("utf-8", "surrogatepass")
    return hashlib.blake2b(text, digest_size=16).digest()


@dataclass(slots=True)
class _Series:
    """An Event already posted, and how often it has happened."""

    name: str
    count: int
    last_seen: float
    recalled: bool = False  # listed from the apiserver when this term began


@dataclass(slots=True)
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
        recall_limit: int = 50_000,
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
        self._recall_limit = recall_limit
        # The lock guards the maps and is never held across an HTTP call; one of the
        # stripe locks is, so that one object's Events go out in order (and a series'
        # count stays monotonic) while other objects' Events go out meanwhile.
        self._lock = threading.Lock()
        self._stripes = [threading.Lock() for _ in range(STRIPES)]
        self._series: OrderedDict[bytes, _Series] = OrderedDict()
        # The series the apiserver had when this term began (``recall``), apart: all of
        # them are kept (up to recall_limit), never pushed out by this term's posts, for
        # one forgotten would be posted again as a new Event when it is owed.
        self._recalled: dict[bytes, _Series] = {}
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
        """Post (or aggregate into) an Event about ``ref``, within its object's rate
        limit; never raises."""
        subject = f"{type} {reason} on {ref.kind} {ref.namespace}/{ref.name}"
        if not self.admit(ref.uid):
            log.debug("event dropped by the per-object rate limit: %s: %s", subject, message)
            return
        if not self.deliver(ref, type, reason, message, action=action):
            log.warning("could not record event %s: the apiserver cannot take it", subject)

    def now(self) -> float:
        """The time on this recorder's clock (which its rate limit keeps)."""
        return self._clock()

    def token_at(self, uid: str) -> float:
        """When, by this recorder's clock, the object has a token to spend again."""
        with self._lock:
            bucket = self._buckets.get(uid)
            if bucket is None or bucket.tokens >= 1:
                return self._clock()
            if self._refill <= 0:
                return math.inf
            return bucket.stamp + (1 - bucket.tokens) / self._refill

    def admit(self, uid: str) -> bool:
        """Spend one of the object's tokens; False when it has posted too much lately."""
        with self._lock:
            return self._take_token(uid, self._clock())

    def deliver(
        self,
        ref: ObjectRef,
        type: EventType,
        reason: str,
        message: str,
        *,
        count: int = 1,
        since: float | None = None,
        action: str = "Reconcile",
    ) -> bool:
        """Post ``count`` occurrences of an Event (or add them to the one posted), outside
        the rate limit (``admit`` is the caller's). False when the apiserver could not be
        reached (or answered 429/5xx): then nothing was spent, and it may be tried again.

        A Warning that the apiserver already had from us when this term began
        (``recall``) is a standing condition told again by the new term's first
        decisions: it is not posted or counted again within the aggregation window.
        An Event owed ``since`` a Unix time is not told again if one like it was
        posted (or counted) from then on.
        """
        message = truncate_utf8(message, MESSAGE_LIMIT)
        subject = f"{type} {reason} on {ref.kind} {ref.namespace}/{ref.name}"
        with self._stripes[zlib.crc32(ref.uid.encode()) % STRIPES]:
            now = self._clock()
            if type == "Warning" and self._told_before(ref, type, reason, message, now):
                log.debug("event already told before this term: %s: %s", subject, message)
                return True
            if since is not None and self.told_since(ref, type, reason, message, since):
                log.debug("event owed was told already: %s: %s", subject, message)
                return True
            try:
                self._emit(ref, type, reason, message, action, now, count)
            except Exception as exc:
                if unreachable(exc):
                    log.debug("could not record event %s yet: %s", subject, exc)
                    return False
                log.warning("could not record event %s: %s", subject, exc)
        return True

    def _told_before(
        self, ref: ObjectRef, type: EventType, reason: str, message: str, now: float
    ) -> bool:
        with self._lock:
            series = self._find(series_key(ref.uid, type, reason, message))
            if series is None or not series.recalled:
                return False
            series.recalled = False  # a repeat after this one is a new occurrence
            return now - series.last_seen <= self._window

    def told_since(
        self, ref: ObjectRef, type: EventType, reason: str, message: str, since: float
    ) -> bool:
        """Whether an Event like this one was posted (or counted), here or before this
        term (``recall``), at ``since`` (a Unix time) or later."""
        message = truncate_utf8(message, MESSAGE_LIMIT)
        with self._lock:
            series = self._find(series_key(ref.uid, type, reason, message))
            return series is not None and series.last_seen >= since

    def recall(self, events: Iterable[Mapping[str, Any]]) -> int:
        """Learn the Events this component posted before (listed from the apiserver when
        a term begins), so that repeats add to them rather than start new ones, and a
        standing condition is not told twice. Returns how many were recent enough."""
        now = self._clock()
        recalled = 0
        with self._lock:
            self._recalled = {}
        for event in events:
            told = _told(event, self._component)
            if told is None or now - told[1].last_seen > self._window:
                continue
            key, series = told
            with self._lock:
                known = self._series.get(key)
                if known is not None and known.last_seen > series.last_seen:
                    known.recalled = True
                elif len(self._recalled) < self._recall_limit:
                    self._series.pop(key, None)
                    self._recalled[key] = series
            recalled += 1
        return recalled

    def _find(self, key: bytes) -> _Series | None:
        """The series of ``key``, posted in this term or recalled (under the lock)."""
        return self._series.get(key) or self._recalled.get(key)

    def _take_token(self, uid: str, now: float) -> bool:
        bucket = self._buckets.get(uid)
        if bucket is None:
            bucket = _Bucket(tokens=float(self._burst), stamp=now)
            self._remember(self._buckets, uid, bucket, self._cache_size)
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
        self,
        ref: ObjectRef,
        type: EventType,
        reason: str,
        message: str,
        action: str,
        now: float,
        count: int,
    ) -> None:
        namespace = ref.namespace or "default"
        events = f"/api/v1/namespaces/{namespace}/events"
        key = series_key(ref.uid, type, reason, message)
        with self._lock:
            series = self._recalled.pop(key, None)
            if series is not None:  # told again in this term: one of its own from now on
                self._remember(self._series, key, series, self._cache_size)
            series = self._series.get(key)
            if series is not None:
                self._series.move_to_end(key)
        if series is not None and now - series.last_seen <= self._window:
            try:
                self._kube.patch(
                    f"{events}/{series.name}",
                    {"count": series.count + count, "lastTimestamp": rfc3339(now)},
                    patch_type="merge",
                )
            except KubeError as exc:
                # The apiserver deletes Events after its --event-ttl (1 h by default).
                if exc.status != 404:
                    raise
            else:
                with self._lock:
                    series.count += count
                    series.last_seen = now
                return
        body = self._new_event(ref, type, reason, message, action, now, count)
        created = self._kube.post(events, body)
        name = created["metadata"]["name"]
        with self._lock:
            self._remember(
                self._series, key, _Series(name=name, count=count, last_seen=now), self._cache_size
            )

    def _new_event(
        self,
        ref: ObjectRef,
        type: EventType,
        reason: str,
        message: str,
        action: str,
        now: float,
        count: int,
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
            "count": count,
        }

    @staticmethod
    def _remember(cache: OrderedDict[K, V], key: K, value: V, size: int) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > size:
            cache.popitem(last=False)


class _Held:
    """Events held past their object's rate limit: the latest per object (uid), oldest
    first, with a count per namespace, so that the one to let go when there are too many
    is the oldest of the namespace holding the most, never one of a quiet namespace's
    for a noisy one's."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, tuple[_Waiting, int]] = OrderedDict()
        self._namespaces: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, uid: str) -> tuple[_Waiting, int] | None:
        return self._items.get(uid)

    def put(self, uid: str, held: tuple[_Waiting, int]) -> None:
        self.pop(uid)
        self._items[uid] = held
        self._namespaces[held[0].ref.namespace] += 1

    def pop(self, uid: str) -> tuple[_Waiting, int] | None:
        held = self._items.pop(uid, None)
        if held is not None:
            namespace = held[0].ref.namespace
            self._namespaces[namespace] -= 1
            if not self._namespaces[namespace]:
                del self._namespaces[namespace]
        return held

    def evict(self) -> _Waiting:
        """Let go of the oldest Event of the namespace holding the most (there is one)."""
        most = max(self._namespaces, key=self._namespaces.__getitem__)
        uid = next(u for u, (w, _) in self._items.items() if w.ref.namespace == most)
        held = self.pop(uid)
        assert held is not None
        return held[0]

    def clear(self) -> None:
        self._items.clear()
        self._namespaces.clear()


DropReason = Literal["rate_limited", "namespace_full", "queue_full", "stopped"]
DROP_REASONS: tuple[DropReason, ...] = ("rate_limited", "namespace_full", "queue_full", "stopped")
# Seconds without a drop, with an Event posted since, that end a drop episode.
QUIET = 10.0


@dataclass
class _Waiting:
    """An Event waiting in the queue, with the repeats folded into it meanwhile."""

    ref: ObjectRef
    type: EventType
    reason: str
    message: str
    count: int
    seq: int  # order of arrival, across the lane's two lines
    since: float | None = None  # see EventQueue.record

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.ref.uid, self.type, self.reason, self.message)


@dataclass(frozen=True, slots=True)
class Owed:
    """An Event a write owes since ``since`` (a Unix time): told already, maybe."""

    ref: ObjectRef
    type: EventType
    reason: str
    message: str
    since: float


@dataclass
class _Lane:
    """One namespace's waiting Events: Warnings and the rest apart, so that the
    oldest Warning is at hand when something must be dropped."""

    warnings: deque[_Waiting] = field(default_factory=deque)
    normals: deque[_Waiting] = field(default_factory=deque)

    def __len__(self) -> int:
        return len(self.warnings) + len(self.normals)

    def push(self, item: _Waiting, *, front: bool = False) -> None:
        line = self.warnings if item.type == "Warning" else self.normals
        if front:
            line.appendleft(item)
        else:
            line.append(item)

    def pop_oldest(self) -> _Waiting:
        w, n = self.warnings, self.normals
        if w and (not n or w[0].seq < n[0].seq):
            return w.popleft()
        return n.popleft()


class _Drops:
    """Counts every dropped Event (``on_drop(reason)``) and says so once an episode:
    a WARNING at the first drop, an INFO once Events go out again and ``quiet``
    seconds have passed without a drop."""

    def __init__(
        self, on_drop: Callable[[DropReason], None], clock: Callable[[], float], quiet: float
    ) -> None:
        self._on_drop = on_drop
        self._clock = clock
        self._quiet = quiet
        self._lock = threading.Lock()
        self._began: float | None = None
        self._last = 0.0
        self._counts: dict[DropReason, int] = {}

    def counted(self, reason: DropReason) -> None:
        """A drop the caller has told of itself."""
        self._on_drop(reason)

    def dropped(self, reason: DropReason, what: str) -> None:
        self._on_drop(reason)
        now = self._clock()
        with self._lock:
            first = self._began is None
            if first:
                self._began = now
            self._last = now
            self._counts[reason] = self._counts.get(reason, 0) + 1
        if first:
            log.warning(
                "dropping Events: %s; further drops are counted in "
                "gke_ingress_timeout_events_dropped_total, not logged, until they stop",
                what,
            )
        else:
            log.debug("dropped an Event: %s", what)

    def calm(self) -> None:
        """An Event went out: the episode ends if no drop came for ``quiet`` seconds."""
        now = self._clock()
        with self._lock:
            if self._began is None or now - self._last < self._quiet:
                return
            counts, length = self._counts, self._last - self._began
            self._began, self._counts = None, {}
        by_reason = ", ".join(f"{n} {r}" for r, n in sorted(counts.items()))
        log.info(
            "Events are no longer dropped: %d dropped over %.1f s (%s)",
            sum(counts.values()),
            length,
            by_reason,
        )


class EventQueue:
    """Hands Events to a recorder on a thread of its own, so that no worker waits on
    the apiserver for an Event, and keeps those the apiserver could not take (an
    outage) to post them when it is back. It belongs to the process, not to one
    leadership term: an outage that ends a term does not throw its Events away.

    The spam filter comes first: the per-object rate limit, and a repeat of an
    Event that still waits is folded into it (one POST or PATCH with its count).
    Past its object's limit only the latest Event is kept (up to ``capacity`` of
    them), and queued when the object's next token comes: its final state is told.
    Waiting Events are served a namespace at a time, in turn, like the work queue,
    so a tenant flooding its own namespace delays only itself. Memory has a fixed
    ceiling: at most ``per_namespace`` Events wait for one namespace and
    ``capacity`` in all; past that the noisiest namespace's oldest Warning goes
    first (a Warning tells of a condition that a later decision tells again; a
    Normal Event tells of something done), and a Normal Event that the records
    still owe is set aside rather than dropped (``owe``). Every drop is counted
    (``on_drop``) and logged once an episode.

    ``posters`` threads post side by side (the recorder keeps one object's Events
    in order), so that Events keep up with writes that no longer wait for them.

    The Events that earlier writes owe (``owe``, when a term begins) are no flood
    to drop from: one the apiserver already has is settled without a slot, and the
    others are taken from their source only while their namespace has half its
    share free and the queue half its capacity, so they never push anything out
    and never leave the Events of the term's own decisions without room.
    """

    def __init__(
        self,
        recorder: EventRecorder,
        *,
        capacity: int = 2000,
        per_namespace: int = 500,
        retry: float = 2.0,
        wait: Callable[[threading.Event, float], object] = lambda stop, s: stop.wait(s),
        on_drop: Callable[[DropReason], None] = lambda reason: None,
        clock: Callable[[], float] = time.monotonic,
        quiet: float = QUIET,
        posters: int = 1,
    ) -> None:
        self.recorder = recorder
        self._posters = posters
        self._capacity = capacity
        self._per_namespace = min(per_namespace, capacity)
        self._retry = retry
        self._wait = wait
        self._drops = _Drops(on_drop, clock, quiet)
        self._cond = threading.Condition()
        self._lanes: dict[str, _Lane] = {}
        self._turns: deque[str] = deque()  # lanes with Events waiting, in serving order
        self._waiting: dict[tuple[str, str, str, str], _Waiting] = {}
        self._size = 0
        self._seq = 0
        self._unreachable = False  # the apiserver could not take one: said once an outage
        # The owed Events not yet taken in (``owe``); the lock keeps one poster at a time
        # on the source, which reads the records as it goes.
        self._feeding = threading.Lock()
        self._owed: Iterator[Owed] | None = None
        self._next_owed: Owed | None = None  # taken from the source, waiting for room
        # Under the condition's lock: where owed Events come from, which reasons the
        # records owe, and whether one of those was set aside for lack of room.
        self._owing: Callable[[], Iterable[Owed]] | None = None
        self._reasons: frozenset[str] = frozenset()
        self._set_aside = False
        # Events past their object's rate limit, the latest per object (uid), and when
        # each object's next token comes (recorder's clock, entry, uid): a heap.
        self._held = _Held()
        self._due: list[tuple[float, int, str]] = []

    def record(
        self,
        ref: ObjectRef,
        type: EventType,
        reason: str,
        message: str,
        *,
        since: float | None = None,
    ) -> None:
        """Queue an Event; ``since``: it may have been told already, and is not told
        again if the apiserver (or this process) has it from that Unix time on."""
        message = truncate_utf8(message, MESSAGE_LIMIT)
        if since is not None and self.recorder.told_since(ref, type, reason, message, since):
            return  # settled: no token, no slot
        item = _Waiting(ref, type, reason, message, 1, 0, since)
        if not self.recorder.admit(ref.uid):
            self._hold(item)
            return
        self._unhold(item)
        self._enqueue(ref, type, reason, message, since, item.count)

    def _enqueue(
        self,
        ref: ObjectRef,
        type: EventType,
        reason: str,
        message: str,
        since: float | None,
        count: int = 1,
    ) -> None:
        """Queue an Event within the ceilings (its token spent)."""
        key = (ref.uid, type, reason, message)
        dropped: tuple[DropReason, _Waiting] | None = None
        with self._cond:
            waiting = self._waiting.get(key)
            if waiting is not None:
                # An owed one (``since``) and one alike are one occurrence: most likely
                # the same write's, told by its decision and owed by its record.
                if since is None and waiting.since is None:
                    waiting.count += count
                elif since is None:
                    waiting.since = None  # told now, whatever the apiserver has
                return
            self._seq += 1
            item = _Waiting(ref, type, reason, message, count, self._seq, since)
            lane = self._lanes.get(ref.namespace)
            if lane is not None and len(lane) >= self._per_namespace:
                dropped = ("namespace_full", self._evict(ref.namespace, item))
            elif self._size >= self._capacity:
                noisiest = max(self._lanes, key=lambda ns: len(self._lanes[ns]))
                dropped = ("queue_full", self._evict(noisiest, item))
            if dropped is None or dropped[1] is not item:
                self._push(item)
                self._cond.notify()
            if dropped is not None and self._owed_by_records(dropped[1]):
                self._set_aside = True
                log.debug("set aside, to be told from the records: %s", dropped[1].key)
                return
        if dropped is not None:
            why, gone = dropped
            what = (
                f"{gone.type} {gone.reason} on {gone.ref.kind} {gone.ref.namespace}/"
                f"{gone.ref.name}: {self._describe(why, gone.ref.namespace)}"
            )
            self._drops.dropped(why, what)

    def _hold(self, item: _Waiting) -> None:
        """Keep an Event past its object's rate limit until its next token: the latest
        one per object (it tells the object's state now, say the final InvalidTimeout of
        an annotation edited many times), within ``capacity`` in all: past it, the
        oldest of the namespace holding the most goes, so a flood keeps only its own."""
        uid, gone = item.ref.uid, []
        with self._cond:
            held = self._held.pop(uid)
            if held is None:
                self._seq += 1
                entry = self._seq
                heapq.heappush(self._due, (self.recorder.token_at(uid), entry, uid))
            else:
                entry = held[1]
                if held[0].key == item.key:
                    item.count += held[0].count  # a repeat: one Event with its count
                else:
                    gone.append(held[0])
            self._held.put(uid, (item, entry))
            if len(self._held) > self._capacity:
                gone.append(self._held.evict())
            if len(self._due) > 2 * self._capacity:  # entries of Events no longer held
                self._due = [d for d in self._due if (self._held.get(d[2]) or (None, 0))[1] == d[1]]
                heapq.heapify(self._due)
            self._cond.notify()
        for old in gone:
            self._drop_held(old)

    def _unhold(self, item: _Waiting) -> None:
        """``item`` goes in with a token of its object: an Event held for the object is
        older, and is told by it (folded, if alike) or no more (counted)."""
        with self._cond:
            held = self._held.pop(item.ref.uid)
        if held is None:
            return
        if held[0].key == item.key:
            item.count += held[0].count
            return
        self._drop_held(held[0])

    def _drop_held(self, old: _Waiting) -> None:
        subject = f"{old.type} {old.reason} on {old.ref.kind} {old.ref.namespace}/{old.ref.name}"
        self._drops.dropped("rate_limited", f"{subject}: more than its object may post")

    def _release(self) -> None:
        """Queue the held Events whose token has come."""
        ready = []
        with self._cond:
            now = self.recorder.now()
            while self._due and self._due[0][0] <= now:
                _, entry, uid = heapq.heappop(self._due)
                held = self._held.get(uid)
                if held is None or held[1] != entry:
                    continue
                if not self.recorder.admit(uid):
                    heapq.heappush(self._due, (self.recorder.token_at(uid), entry, uid))
                    continue
                self._held.pop(uid)
                ready.append(held[0])
        for item in ready:
            self._enqueue(item.ref, item.type, item.reason, item.message, item.since, item.count)

    def owe(self, owing: Callable[[], Iterable[Owed]], *, reasons: Iterable[str] = ()) -> None:
        """Tell the Events that earlier writes owe, unless the apiserver has them: taken
        from ``owing()`` as the queue has room (see the class), in place of any source
        given before (a new term's records say again what is owed).

        An Event of one of ``reasons`` (those the records keep owing until they are
        written again) is not dropped for lack of room: it is set aside, and
        ``owing()`` is read again once the queue has room, which tells it then."""
        with self._feeding:
            self._owed, self._next_owed = iter(owing()), None
        with self._cond:
            self._owing, self._reasons, self._set_aside = owing, frozenset(reasons), False
            self._cond.notify()

    def owes(self) -> bool:
        """Whether owed Events remain to be taken in (or were set aside)."""
        with self._feeding, self._cond:
            return self._owed is not None or self._next_owed is not None or self._set_aside

    def _owed_by_records(self, item: _Waiting) -> bool:
        return self._owing is not None and item.type == "Normal" and item.reason in self._reasons

    def _next(self) -> Owed | None:
        """The next owed Event (under ``_feeding``); the records read again when one was
        set aside and the source before has run out."""
        if self._next_owed is not None:
            waiting, self._next_owed = self._next_owed, None
            return waiting
        while True:
            if self._owed is not None:
                item = next(self._owed, None)
                if item is not None:
                    return item
                self._owed = None
            with self._cond:
                owing, again, self._set_aside = self._owing, self._set_aside, False
            if not again or owing is None:
                return None
            self._owed = iter(owing())

    def _feed(self) -> None:
        """Take owed Events in while there is room to spare; those told already take none."""
        with self._feeding:
            while (item := self._next()) is not None:
                ref, message = item.ref, truncate_utf8(item.message, MESSAGE_LIMIT)
                if self.recorder.told_since(ref, item.type, item.reason, message, item.since):
                    continue
                with self._cond:
                    lane = self._lanes.get(ref.namespace)
                    if self._size >= max(self._capacity // 2, 1) or (
                        lane is not None and len(lane) >= max(self._per_namespace // 2, 1)
                    ):
                        self._next_owed = item
                        return
                self.record(ref, item.type, item.reason, message, since=item.since)

    def _describe(self, why: DropReason, namespace: str) -> str:
        if why == "namespace_full":
            return f"{self._per_namespace} Events already wait for namespace {namespace}"
        return f"{self._capacity} Events already wait; namespace {namespace} has the most"

    def _evict(self, namespace: str, incoming: _Waiting) -> _Waiting:
        """Drop the oldest Warning waiting for ``namespace``; else ``incoming`` if it is
        a Warning for it; else its oldest Event. Returns what was dropped."""
        lane = self._lanes[namespace]
        if lane.warnings:
            gone = lane.warnings.popleft()
        elif incoming.type == "Warning" and incoming.ref.namespace == namespace:
            return incoming
        else:
            gone = lane.normals.popleft()
        self._size -= 1
        del self._waiting[gone.key]
        if not lane:
            del self._lanes[namespace]
            self._turns.remove(namespace)
        return gone

    def _push(self, item: _Waiting, *, front: bool = False) -> None:
        namespace = item.ref.namespace
        lane = self._lanes.get(namespace)
        if lane is None:
            lane = self._lanes[namespace] = _Lane()
            if front:
                self._turns.appendleft(namespace)
            else:
                self._turns.append(namespace)
        lane.push(item, front=front)
        self._waiting[item.key] = item
        self._size += 1

    def _pop(self) -> _Waiting | None:
        """The oldest Event of the namespace whose turn it is (it then goes last)."""
        if not self._turns:
            return None
        namespace = self._turns.popleft()
        lane = self._lanes[namespace]
        item = lane.pop_oldest()
        if lane:
            self._turns.append(namespace)
        else:
            del self._lanes[namespace]
        del self._waiting[item.key]
        self._size -= 1
        return item

    def _put_back(self, item: _Waiting) -> None:
        """An Event the apiserver could not take: first in line again (or folded into
        the repeat that arrived meanwhile)."""
        with self._cond:
            waiting = self._waiting.get(item.key)
            if waiting is not None:
                waiting.count += item.count
            else:
                self._push(item, front=True)

    def __len__(self) -> int:
        with self._cond:
            return self._size

    def waiting(self) -> int:
        """Events not posted yet: those in the queue and those held for a token."""
        with self._cond:
            return self._size + len(self._held)

    def _deliver(self, item: _Waiting) -> bool:
        return self.recorder.deliver(
            item.ref, item.type, item.reason, item.message, count=item.count, since=item.since
        )

    def run(self, stop: threading.Event) -> None:
        """Post Events as they come until ``stop`` (on this thread and ``posters - 1``
        more); then try what is left once."""
        name = threading.current_thread().name
        helpers = [
            threading.Thread(target=self._post, args=(stop,), name=f"{name}-{i}", daemon=True)
            for i in range(1, self._posters)
        ]
        for helper in helpers:
            helper.start()
        self._post(stop)
        for helper in helpers:
            helper.join()
        self.flush()

    def _post(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._release()
            self._feed()
            with self._cond:
                if not self._size:
                    self._cond.wait(0.5)  # for an Event, or owed ones (``owe``)
                    continue
                item = self._pop()
            assert item is not None
            if self._deliver(item):
                self._drops.calm()
                with self._cond:
                    back, self._unreachable = self._unreachable, False
                if back:
                    log.info("the apiserver takes Events again; %d waiting", len(self))
                continue
            self._put_back(item)
            with self._cond:
                first, self._unreachable = not self._unreachable, True
            if first:
                # The client has told of the outage; this says what it means here.
                log.info("cannot post Events for now; they wait (%d) and go out later", len(self))
            self._wait(stop, self._retry)

    def flush(self) -> None:
        """Post the waiting Events on this thread, until the apiserver cannot take one;
        what is left then is dropped (counted as ``stopped``), with the Events held for
        a token. Owed Events not taken in yet are not dropped: the records still owe
        them, and the next term tells them."""
        with self._feeding, self._cond:
            self._owed, self._next_owed, self._owing, self._set_aside = None, None, None, False
        while True:
            with self._cond:
                item = self._pop()
            if item is None:
                break
            if not self._deliver(item):
                self._put_back(item)
                break
            self._drops.calm()
        with self._cond:
            left = self._size + len(self._held)
            while self._pop() is not None:
                pass
            self._held.clear()
            self._due = []
        if not left:
            return
        log.warning("%d Events could not be posted before stopping", left)
        for _ in range(left):
            self._drops.counted("stopped")


def _told(event: Mapping[str, Any], component: str) -> tuple[bytes, _Series] | None:
    """(series key, series) of an Event ``component`` posted; None if it is not one
    of ours or lacks what a series needs."""
    try:
        if (event.get("source") or {}).get("component") != component:
            return None
        meta, involved = event["metadata"], event["involvedObject"]
        key = series_key(
            str(involved["uid"]),
            str(event["type"]),
            str(event["reason"]),
            str(event.get("message") or ""),
        )
        last = event.get("lastTimestamp") or event.get("eventTime") or meta["creationTimestamp"]
        series = _Series(
            name=str(meta["name"]),
            count=int(event.get("count") or 1),
            last_seen=_unix(str(last)),
            recalled=True,
        )
        return key, series
    except (KeyError, TypeError, ValueError):
        return None


def told_before(kube: KubeClient, component: str, namespaces: Iterable[str]) -> list[Any]:
    """The Events ``component`` posted that the apiserver still has, in ``namespaces``
    (every namespace if empty), a page at a time, each kept as little as a series needs."""
    selector = {"fieldSelector": f"source={component}"}
    paths = [f"/api/v1/namespaces/{ns}/events" for ns in sorted(namespaces)] or ["/api/v1/events"]
    told: list[Any] = []
    for path in paths:
        items, _ = kube.list(path, selector, keep=lambda e: _slim(e, component))
        told.extend(e for e in items if e is not None)
    return told


def _slim(event: dict[str, Any], component: str) -> dict[str, Any] | None:
    """What ``recall`` reads of an Event, and nothing of anyone else's."""
    if _told(event, component) is None:
        return None
    keep = ("type", "reason", "message", "count", "lastTimestamp", "eventTime", "source")
    meta = event["metadata"]
    return {
        **{k: event.get(k) for k in keep},
        "metadata": {k: meta.get(k) for k in ("name", "namespace", "creationTimestamp")},
        "involvedObject": {"uid": event["involvedObject"]["uid"]},
    }


def _unix(stamp: str) -> float:
    """An RFC 3339 time as the apiserver writes it ('Z', maybe with fractions) -> Unix."""
    text = stamp.replace("Z", "+00:00")
    return datetime.fromisoformat(text).timestamp()


def truncate_utf8(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, never inside a character."""
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    return raw[:limit].decode("utf-8", errors="ignore")


def rfc3339(seconds: float) -> str:
    """A Unix time as the apiserver writes timestamps: UTC, whole seconds, 'Z'."""
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
