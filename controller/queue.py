"""The work queue between the informer and the reconciler workers.

Owns de-duplication (a key is queued at most once and never handed to two
workers at once), delayed adds and per-key exponential retry backoff.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from collections.abc import Callable

# 2**64 times any sane base delay is far beyond any sane max delay; capping
# the exponent keeps the float arithmetic from overflowing.
_MAX_EXPONENT = 64


class WorkQueue:
    """A de-duplicating, rate-limited queue of string keys, safe across threads.

    Due times of delayed keys follow ``clock``; ``get(timeout)`` waits in real
    seconds, as ``threading.Condition`` does. With a fake clock, advance it and
    call ``poke()`` (or ``get(timeout=0)``) to release the keys that fell due.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        base_delay: float = 0.005,
        max_delay: float = 1000.0,
    ) -> None:
        self._clock = clock
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._cond = threading.Condition()
        self._ready: deque[str] = deque()
        # Keys that need a run: queued in _ready, or waiting for done().
        self._dirty: set[str] = set()
        self._processing: set[str] = set()
        # (due, seq, key); entries whose due differs from _due[key] are stale.
        self._heap: list[tuple[float, int, str]] = []
        self._due: dict[str, float] = {}
        self._seq = 0
        self._failures: dict[str, int] = {}
        self._shutting_down = False

    def add(self, key: str) -> None:
        """Queue ``key``; no-op if already queued, deferred to done() if in process."""
        with self._cond:
            self._add_locked(key)

    def add_after(self, key: str, delay: float) -> None:
        """Queue ``key`` once ``delay`` seconds of ``clock`` have passed.

        A key already waiting keeps the earlier of its two due times.
        """
        with self._cond:
            if self._shutting_down:
                return
            if delay <= 0:
                self._add_locked(key)
                return
            due = self._clock() + delay
            if key in self._due and self._due[key] <= due:
                return
            self._due[key] = due
            self._seq += 1
            heapq.heappush(self._heap, (due, self._seq, key))
            # Waiting workers recompute how long to sleep.
            self._cond.notify_all()

    def add_rate_limited(self, key: str) -> None:
        """Queue ``key`` after ``base_delay * 2**failures`` (capped), counting a failure."""
        with self._cond:
            failures = self._failures.get(key, 0)
            self._failures[key] = failures + 1
        exponent = min(failures, _MAX_EXPONENT)
        self.add_after(key, min(self._base_delay * 2**exponent, self._max_delay))

    def forget(self, key: str) -> None:
        """Reset the failure count of ``key`` (call after a successful run)."""
        with self._cond:
            self._failures.pop(key, None)

    def failures(self, key: str) -> int:
        """How many times ``key`` went through add_rate_limited since the last forget."""
        with self._cond:
            return self._failures.get(key, 0)

    def get(self, timeout: float | None = None) -> str | None:
        """Take a ready key and mark it in process; None on shut-down or timeout.

        The caller must call ``done(key)`` when finished with it.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._shutting_down:
                    return None
                now = self._clock()
                self._release_due(now)
                if self._ready:
                    key = self._ready.popleft()
                    self._dirty.discard(key)
                    self._processing.add(key)
                    return key
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    return None
                if self._heap:
                    until_due = max(self._heap[0][0] - now, 0.0)
                    wait = until_due if wait is None else min(wait, until_due)
                self._cond.wait(wait)

    def done(self, key: str) -> None:
        """Finish processing ``key``; re-queue it if it was added meanwhile."""
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty and not self._shutting_down:
                self._ready.append(key)
                self._cond.notify()

    def poke(self) -> None:
        """Release keys whose due time has passed and wake waiting workers."""
        with self._cond:
            self._release_due(self._clock())
            self._cond.notify_all()

    def shut_down(self) -> None:
        """Drop pending keys; every get() now returns None."""
        with self._cond:
            self._shutting_down = True
            self._ready.clear()
            self._dirty.clear()
            self._heap.clear()
            self._due.clear()
            self._cond.notify_all()

    def __len__(self) -> int:
        """Keys ready to be taken (delayed keys not yet due are not counted)."""
        with self._cond:
            return len(self._ready)

    def delayed(self) -> int:
        """Keys waiting for their due time."""
        with self._cond:
            return len(self._due)

    def _add_locked(self, key: str) -> None:
        if self._shutting_down or key in self._dirty:
            return
        self._dirty.add(key)
        if key in self._processing:
            return
        self._ready.append(key)
        self._cond.notify()

    def _release_due(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            due, _, key = heapq.heappop(self._heap)
            if self._due.get(key) == due:
                del self._due[key]
                self._add_locked(key)
