"""The work queue between the informer and the reconciler workers.

Owns de-duplication (a key is queued at most once and never handed to two
workers at once), fairness (ready keys are handed out round-robin across
lanes, one lane a namespace, so a busy tenant cannot starve another), urgency
within a lane (keys the queue was told go first, such as an Ingress's own
report, are taken before the lane's other keys at its turn, and only at its
turn), delayed adds and per-key exponential retry backoff.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

# 2**64 times any sane base delay is far beyond any sane max delay; capping
# the exponent keeps the float arithmetic from overflowing.
_MAX_EXPONENT = 64


class WorkQueue(Generic[K]):
    """A de-duplicating, rate-limited, fair queue of hashable keys, safe across threads.

    ``add(key, lane)`` puts a key in line in ``lane``; ``get`` takes from the
    lanes in turn. A key added from several lanes while it waits stands in line
    in each and runs once, at the first turn that reaches it: so no tenant can
    push another's key to the back of its own long line by naming it first.

    ``first(key)`` marks the keys that go ahead of the others in their lane: they
    are taken first at that lane's turn, never out of turn, so a tenant with
    many of them still has only its own turns.

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
        first: Callable[[K], bool] = lambda key: False,
    ) -> None:
        self._clock = clock
        self._first = first
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._cond = threading.Condition()
        # lane -> (keys that go first, the other keys) in line there (an entry whose
        # key is no longer dirty, or is being processed, is a stale place, skipped);
        # _turns: lanes with entries, in the order they are served.
        self._ready: dict[str, tuple[deque[K], deque[K]]] = {}
        self._turns: deque[str] = deque()
        # Keys that need a run (in line, or waiting for done()), with their lanes.
        self._dirty: dict[K, set[str]] = {}
        self._processing: set[K] = set()
        # (due, seq, key, lane); entries whose due differs from _due[key] are stale.
        self._heap: list[tuple[float, int, K, str]] = []
        self._due: dict[K, float] = {}
        self._seq = 0
        self._failures: dict[K, int] = {}
        self._shutting_down = False

    def add(self, key: K, lane: str = "") -> None:
        """Queue ``key``; no-op if already queued, deferred to done() if in process."""
        with self._cond:
            self._add_locked(key, lane)

    def add_after(self, key: K, delay: float, lane: str = "") -> None:
        """Queue ``key`` once ``delay`` seconds of ``clock`` have passed.

        A key already waiting keeps the earlier of its two due times.
        """
        with self._cond:
            if self._shutting_down:
                return
            if delay <= 0:
                self._add_locked(key, lane)
                return
            due = self._clock() + delay
            if key in self._due and self._due[key] <= due:
                return
            self._due[key] = due
            self._seq += 1
            heapq.heappush(self._heap, (due, self._seq, key, lane))
            # Waiting workers recompute how long to sleep.
            self._cond.notify_all()

    def add_rate_limited(self, key: K, lane: str = "") -> None:
        """Queue ``key`` after ``base_delay * 2**failures`` (capped), counting a failure."""
        with self._cond:
            failures = self._failures.get(key, 0)
            self._failures[key] = failures + 1
        exponent = min(failures, _MAX_EXPONENT)
        self.add_after(key, min(self._base_delay * 2**exponent, self._max_delay), lane)

    def forget(self, key: K) -> None:
        """Reset the failure count of ``key`` (call after a successful run)."""
        with self._cond:
            self._failures.pop(key, None)

    def failures(self, key: K) -> int:
        """How many times ``key`` went through add_rate_limited since the last forget."""
        with self._cond:
            return self._failures.get(key, 0)

    def get(self, timeout: float | None = None) -> K | None:
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
                key = self._pop()
                if key is not None:
                    del self._dirty[key]
                    self._processing.add(key)
                    return key
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    return None
                if self._heap:
                    until_due = max(self._heap[0][0] - now, 0.0)
                    wait = until_due if wait is None else min(wait, until_due)
                self._cond.wait(wait)

    def done(self, key: K) -> None:
        """Finish processing ``key``; re-queue it if it was added meanwhile."""
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty and not self._shutting_down:
                for lane in self._dirty[key]:
                    self._push(key, lane)
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
            self._turns.clear()
            self._dirty.clear()
            self._heap.clear()
            self._due.clear()
            self._cond.notify_all()

    def __len__(self) -> int:
        """Keys ready to be taken (delayed keys not yet due are not counted)."""
        with self._cond:
            return sum(1 for key in self._dirty if key not in self._processing)

    def delayed(self) -> int:
        """Keys waiting for their due time."""
        with self._cond:
            return len(self._due)

    def _add_locked(self, key: K, lane: str) -> None:
        if self._shutting_down:
            return
        lanes = self._dirty.get(key)
        if lanes is not None and lane in lanes:
            return
        if lanes is None:
            self._dirty[key] = {lane}
        else:
            lanes.add(lane)
        if key in self._processing:
            return
        self._push(key, lane)
        self._cond.notify()

    def _push(self, key: K, lane: str) -> None:
        line = self._ready.get(lane)
        if line is None:
            line = self._ready[lane] = (deque(), deque())
            self._turns.append(lane)
        line[0 if self._first(key) else 1].append(key)

    def _pop(self) -> K | None:
        """The next live key of the lane whose turn it is, those that go first before
        the others (that lane then goes last)."""
        while self._turns:
            lane = self._turns.popleft()
            first, rest = self._ready[lane]
            key = first.popleft() if first else rest.popleft()
            if first or rest:
                self._turns.append(lane)
            else:
                del self._ready[lane]
            if key in self._dirty and key not in self._processing:
                return key
        return None

    def _release_due(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            due, _, key, lane = heapq.heappop(self._heap)
            if self._due.get(key) == due:
                del self._due[key]
                self._add_locked(key, lane)
