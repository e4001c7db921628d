"""The list-then-watch informer: a local cache of one collection, kept current.

Owns resourceVersion bookkeeping, bookmarks, 410 relists, reconnect backoff and
the store of transformed objects (client-go's reflector + store, small). It
tells a consumer which key changed and nothing else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from controller.kube.client import KubeClient, KubeError, WatchStream, unreachable

log = logging.getLogger(__name__)

T = TypeVar("T")
# A watch the server ends sooner than this after it opened is a failure to back off from.
QUICK_WATCH = 1.0
Clock = Callable[[], float]
Wait = Callable[[threading.Event, float], object]


def wait_on(stop: threading.Event, seconds: float) -> None:
    """The default wait between retries: returns early when stop is set."""
    stop.wait(seconds)


def object_key(obj: dict[str, Any]) -> str:
    """`namespace/name`, or `name` for a cluster-scoped object."""
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    return f"{namespace}/{meta['name']}" if namespace else str(meta["name"])


class Backoff:
    """Reconnect delays: 0.8 s doubling to a 30 s cap, plus up to 100 % jitter.

    The sequence starts again once 2 minutes have passed without a failure.
    """

    def __init__(
        self,
        rng: random.Random,
        clock: Clock,
        *,
        initial: float = 0.8,
        cap: float = 30.0,
        reset_after: float = 120.0,
    ) -> None:
        self._rng = rng
        self._clock = clock
        self._initial = initial
        self._cap = cap
        self._reset_after = reset_after
        self._base = initial
        self._last_failure: float | None = None

    def next(self) -> float:
        """The delay before the next attempt, counting this call as a failure."""
        now = self._clock()
        if self._last_failure is not None and now - self._last_failure >= self._reset_after:
            self._base = self._initial
        self._last_failure = now
        delay = self._base * (1.0 + self._rng.random())
        self._base = min(self._base * 2.0, self._cap)
        return delay

    def reset(self) -> None:
        """Start the sequence again: the server was there after all."""
        self._base = self._initial


@dataclass
class InformerStats:
    """Counters for metrics and tests; written by the run() thread only."""

    lists: int = 0
    watches: int = 0
    restarts: int = 0
    relists_after_410: int = 0
    expired_continues: int = 0
    events: int = 0


class Informer(Generic[T]):
    """Keeps `transform(obj)` for every object under `path`, keyed by object_key().

    on_change(event_type, key, old, new) is called from the run() thread after
    the store changed, with the value before and after (None: not stored):
    ADDED, MODIFIED, DELETED from the watch; SYNC for every key a LIST returns,
    as it arrives, and DELETED for keys that a LIST no longer returns, at its end.
    transform returns None for an object not worth keeping; an object it fails
    on is logged and left out.
    """

    def __init__(
        self,
        kube: KubeClient,
        path: str,
        *,
        transform: Callable[[dict[str, Any]], T | None],
        on_change: Callable[[str, str, T | None, T | None], None],
        rng: random.Random | None = None,
        wait: Wait = wait_on,
        clock: Clock = time.monotonic,
        min_watch_timeout: int = 300,
        max_watch_timeout: int = 600,
        read_timeout: float = 100.0,
        page_size: int = 500,
    ) -> None:
        """min/max_watch_timeout 0 leave each watch's duration to the server."""
        self._kube = kube
        self._path = path
        self._transform = transform
        self._on_change = on_change
        self._rng = rng or random.Random()
        self._wait = wait
        self._clock = clock
        self._backoff = Backoff(self._rng, clock)
        self._streaming = False  # the current attempt got as far as an open stream
        self._watch_timeouts = (min_watch_timeout, max_watch_timeout)
        self._read_timeout = read_timeout
        self._page_size = page_size
        self.synced = threading.Event()
        self.stats = InformerStats()
        self._lock = threading.Lock()
        self._store: dict[str, T] = {}
        self._resource_version = ""
        self._stream: WatchStream | None = None

    def get(self, key: str) -> T | None:
        with self._lock:
            return self._store.get(key)

    def items(self) -> list[tuple[str, T]]:
        with self._lock:
            return list(self._store.items())

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._store)

    def list_once(self) -> None:
        """One LIST into the store, notifying as run() does; for a single pass."""
        self._list()

    def run(self, stop: threading.Event) -> None:
        """List, then watch, until stop is set. Never raises: failures back off and retry."""
        threading.Thread(
            target=self._abort_on, args=(stop,), name=f"informer-stop {self._path}", daemon=True
        ).start()
        must_list = True
        while not stop.is_set():
            self._streaming = False
            opened = self._clock()
            try:
                if must_list:
                    self._list()
                    must_list = False
                opened = self._clock()
                self._watch(stop)
                # The server ended the watch normally: resume where it stopped, at
                # once, unless it keeps ending them as soon as they start.
                self.stats.restarts += 1
                if self._clock() - opened >= QUICK_WATCH or stop.is_set():
                    continue
                delay = self._backoff.next()
                log.info("WATCH %s ended at once; watching again in %.1fs", self._path, delay)
            except KubeError as exc:
                if stop.is_set():
                    break
                self.stats.restarts += 1
                if exc.status == 410 and not must_list:
                    # The server answers, so list now: a backoff grown while it was
                    # down would only leave the cache stale for longer.
                    log.info("WATCH %s: %s; listing again", self._path, exc.message)
                    self.stats.relists_after_410 += 1
                    must_list = True
                    continue
                # An apiserver that cannot answer now has been told of by the client.
                level = logging.DEBUG if unreachable(exc) else logging.WARNING
                log.log(level, "%s: %s; retrying", self._path, exc)
                delay = max(exc.retry_after or 0.0, self._backoff.next())
            except Exception as exc:
                if stop.is_set():
                    break
                # Read timeouts, refused connections and dropped streams end up here.
                level = logging.DEBUG if unreachable(exc) else logging.WARNING
                log.log(level, "%s: %s: %s; retrying", self._path, type(exc).__name__, exc)
                self.stats.restarts += 1
                if self._streaming and self._clock() - opened >= QUICK_WATCH:
                    # A stream that ran for a while broke (a middlebox reset it): the
                    # apiserver answers, so the delays grown while it did not are past.
                    self._backoff.reset()
                delay = self._backoff.next()
            self._wait(stop, delay)

    def _list(self) -> None:
        # A consistent read, paged: resourceVersion=0 would be served from the
        # apiserver's cache in one piece, whatever the limit. Each item is
        # transformed and stored as it is parsed, so neither a whole page nor a
        # second store is ever held: only the keys seen, to drop the rest at the end.
        seen: set[str] = set()
        resource_version, stale = self._pages(seen)
        if stale is not None:
            # The pages up to `stale` were read at a resourceVersion the watch from
            # `resource_version` does not cover: read that part again (at a newer one).
            again: set[str] = set()
            self._pages(again, until=stale)
            seen = {key for key in seen if key > stale} | again
        self.stats.lists += 1
        with self._lock:
            gone = [(key, value) for key, value in self._store.items() if key not in seen]
            for key, _ in gone:
                del self._store[key]
            count = len(self._store)
        self._resource_version = resource_version
        log.info("LIST %s: %d objects at resourceVersion %s", self._path, count, resource_version)
        for key, value in gone:
            self._notify("DELETED", key, value, None)
        self.synced.set()

    def _pages(self, seen: set[str], until: str | None = None) -> tuple[str, str | None]:
        """Page through the collection into the store, adding each key to ``seen``;
        stop past the key ``until``. Returns the resourceVersion to watch from, and
        the last key read before a continue token expired (None: consistent).

        An expired continue token goes on with the token the 410 carries (the rest
        at the current resourceVersion) rather than starting again from page one,
        which a large, slow collection might never get through.
        """
        token = ""
        last: str | None = None
        stale: str | None = None

        def store(obj: dict[str, Any]) -> None:
            nonlocal last
            key = object_key(obj)
            value = self._transformed(obj)
            with self._lock:
                old = self._store.pop(key, None)
                if value is not None:
                    self._store[key] = value
            seen.add(key)
            last = key
            self._notify("SYNC", key, old, value)

        while True:
            query = {"limit": str(self._page_size), **({"continue": token} if token else {})}
            try:
                meta = self._kube.list_page(self._path, query, store)
            except KubeError as exc:
                if exc.status != 410 or not token or not exc.continue_token:
                    raise
                log.info("LIST %s: continue token expired; going on from where it was", self._path)
                self.stats.expired_continues += 1
                stale, token = last, exc.continue_token
                continue
            token = str(meta.get("continue") or "")
            if not token or (until is not None and last is not None and last >= until):
                return str(meta.get("resourceVersion") or ""), stale

    def _watch(self, stop: threading.Event) -> None:
        low, high = self._watch_timeouts
        stream = self._kube.watch(
            self._path,
            resource_version=self._resource_version,
            timeout_seconds=self._rng.randint(low, high) if high > 0 else None,
            read_timeout=self._read_timeout,
        )
        self.stats.watches += 1
        self._streaming = True
        with self._current(stream, stop):
            for event in stream:
                if stop.is_set():
                    return
                self._handle(event)
        log.debug("WATCH %s ended at resourceVersion %s", self._path, self._resource_version)

    def _handle(self, event: dict[str, Any]) -> None:
        self.stats.events += 1
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            raise KubeError.from_status(obj)
        if kind in ("ADDED", "MODIFIED"):
            key = object_key(obj)
            value = self._transformed(obj)
            with self._lock:
                old = self._store.pop(key, None)
                if value is not None:
                    self._store[key] = value
            self._notify(kind, key, old, value)
        elif kind == "DELETED":
            key = object_key(obj)
            with self._lock:
                old = self._store.pop(key, None)
            self._notify(kind, key, old, None)
        elif kind != "BOOKMARK":
            log.warning("WATCH %s: ignoring an event of type %r", self._path, kind)
        resource_version = (obj.get("metadata") or {}).get("resourceVersion")
        if resource_version:
            self._resource_version = str(resource_version)

    def _transformed(self, obj: dict[str, Any]) -> T | None:
        try:
            return self._transform(obj)
        except Exception:
            log.exception("%s: cannot transform %s", self._path, object_key(obj))
            return None

    def _notify(self, kind: str, key: str, old: T | None, new: T | None) -> None:
        try:
            self._on_change(kind, key, old, new)
        except Exception:
            log.exception("%s: on_change(%s, %s) failed", self._path, kind, key)

    @contextlib.contextmanager
    def _current(self, stream: WatchStream, stop: threading.Event) -> Iterator[None]:
        with self._lock:
            self._stream = stream
        try:
            if stop.is_set():
                stream.abort()  # stop came while the watch was being opened
            yield
        finally:
            with self._lock:
                self._stream = None
            stream.close()

    def _abort_on(self, stop: threading.Event) -> None:
        stop.wait()
        with self._lock:
            if self._stream is not None:
                self._stream.abort()


class Informers(Generic[T]):
    """One Informer per collection path, seen as one store: for a controller scoped to
    some namespaces, a list and a watch of each of them, never of the whole cluster.

    Keys are ``namespace/name``; ``paths`` maps a namespace to its collection path,
    or "" to the cluster-wide one (then it is the only one).
    """

    def __init__(self, kube: KubeClient, paths: dict[str, str], **options: Any) -> None:
        """``options`` are every member's Informer options."""
        self._members: dict[str, Informer[T]] = {
            ns: Informer(kube, path, **options) for ns, path in paths.items()
        }
        self.synced = threading.Event()

    def _member(self, key: str) -> Informer[T] | None:
        return self._members.get("") or self._members.get(key.partition("/")[0])

    def get(self, key: str) -> T | None:
        member = self._member(key)
        return member.get(key) if member is not None else None

    def items(self) -> list[tuple[str, T]]:
        return [item for member in self._members.values() for item in member.items()]

    @property
    def stats(self) -> InformerStats:
        """The members' counters, added up."""
        total = InformerStats()
        for member in self._members.values():
            for field in dataclasses.fields(InformerStats):
                name = field.name
                setattr(total, name, getattr(total, name) + getattr(member.stats, name))
        return total

    def list_once(self) -> None:
        for member in self._members.values():
            member.list_once()
        self.synced.set()

    def run(self, stop: threading.Event) -> None:
        """Run every member until stop is set; ``synced`` once each has listed."""
        threads = [
            threading.Thread(target=m.run, args=(stop,), name=f"informer {ns or '*'}")
            for ns, m in self._members.items()
        ]
        for thread in threads:
            thread.start()
        for member in self._members.values():
            while not (member.synced.wait(0.1) or stop.is_set()):
                continue  # a member that cannot list yet retries with its own backoff
        if not stop.is_set():
            self.synced.set()
        for thread in threads:
            thread.join()
