"""The list-then-watch informer: a local cache of one collection, kept current.

Owns resourceVersion bookkeeping, bookmarks, 410 relists, reconnect backoff and
the store of transformed objects (client-go's reflector + store, small). It
tells a consumer which key changed and nothing else.
"""

from __future__ import annotations

import contextlib
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
    events: int = 0


class Informer(Generic[T]):
    """Keeps `transform(obj)` for every object under `path`, keyed by object_key().

    on_change(event_type, key, old, new) is called from the run() thread after
    the store changed, with the value before and after (None: not stored):
    ADDED, MODIFIED, DELETED from the watch; SYNC for every key after a LIST,
    and DELETED for keys that a LIST no longer returns. transform returns None
    for an object not worth keeping; an object it fails on is logged and left out.
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
        # apiserver's cache in one piece, whatever the limit, and a large
        # cluster's Ingresses would then be held whole at once. Each page is
        # transformed as it arrives, so only what the store keeps stays.
        items, resource_version = self._kube.list(
            self._path,
            limit=self._page_size,
            keep=lambda obj: (object_key(obj), self._transformed(obj)),
        )
        self.stats.lists += 1
        fresh: dict[str, T] = {key: value for key, value in items if value is not None}
        with self._lock:
            old, self._store = self._store, fresh
        self._resource_version = resource_version
        log.info(
            "LIST %s: %d objects at resourceVersion %s", self._path, len(fresh), resource_version
        )
        for key, value in fresh.items():
            self._notify("SYNC", key, old.get(key), value)
        for key in old.keys() - fresh.keys():
            self._notify("DELETED", key, old[key], None)
        self.synced.set()

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
