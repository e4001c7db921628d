"""The rest of each write, done beside the workers without standing in their way.

A worker records a write's intent and sends its PATCH: that is the path from a
change to its effect. The rest (the wait on the operation, the outcome record,
its Events, the read-back of the fingerprint) changes nothing a user waits for,
but it writes to the same apiserver and takes the same interpreter. So it is
handed here, into a backlog, and a finisher starts it when the path is quiet:
once no worker has been on the path for ``quiet`` seconds, or once it has
waited ``patience`` seconds, whichever comes first.

It starts at once, too, when it is in the way: when the key it holds is wanted
again (``expedite``: the next decision on that backend waits for it), and when the
finishers stop. No more rests wait than there are finishers free for them: past
that, ``hand`` refuses and the worker finishes its write itself. So a rest never
queues behind others (its reconcile's deadline runs meanwhile), it starts within
``patience``, and a stop starts all those waiting side by side. (Starting the
waiting rests once every finisher was spoken for started them all at once, in
bursts that met the next change.)

Time follows ``clock``; the threads wait in real seconds, as
``threading.Condition`` does. Before ``start`` no thread runs: ``take(wait=False)``
and ``done()`` hand out what is due, so that tests never sleep.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

QUIET = 0.05  # seconds with no worker on the path before a rest starts
PATIENCE = 5.0  # seconds a rest waits at most for the path to be quiet


class Finishers(Generic[K, T]):
    """``count`` threads that run ``finish(key, item)`` for each item handed in, one
    at a time each: at most ``count`` rests wait or run at once."""

    def __init__(
        self,
        count: int,
        finish: Callable[[K, T], None],
        *,
        quiet: float = QUIET,
        patience: float = PATIENCE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._count = count
        self._finish = finish
        self._quiet = quiet
        self._patience = patience
        self._clock = clock
        self._cond = threading.Condition()
        self._waiting: OrderedDict[K, tuple[T, float]] = OrderedDict()  # key -> (item, handed)
        self._urgent: list[K] = []  # keys wanted again, in the order they were asked for
        self._running = 0
        self._on_path = 0
        self._quiet_since = clock()
        self._stopping = False
        self._threads: list[threading.Thread] = []

    def __len__(self) -> int:
        with self._cond:
            return len(self._waiting)

    @contextmanager
    def path(self) -> Iterator[None]:
        """Around a worker's way from a change to its PATCH: no rest starts during it
        (unless it is in the way) nor for ``quiet`` seconds after the last one ends."""
        with self._cond:
            self._on_path += 1
        try:
            yield
        finally:
            with self._cond:
                self._on_path -= 1
                if self._on_path == 0:
                    self._quiet_since = self._clock()
                    self._cond.notify_all()

    def hand(self, key: K, item: T) -> bool:
        """Leave ``item`` to be finished; False when no finisher is free for it (or the
        finishers are stopping): the caller finishes it itself."""
        with self._cond:
            busy = len(self._waiting) + self._running
            if self._stopping or busy >= self._count or key in self._waiting:
                return False
            self._waiting[key] = (item, self._clock())
            self._cond.notify_all()
            return True

    def expedite(self, key: K) -> None:
        """``key`` is wanted again: if its rest waits here, it starts at once."""
        with self._cond:
            if key in self._waiting and key not in self._urgent:
                self._urgent.append(key)
                self._cond.notify_all()

    def healthy(self) -> bool:
        """Every finisher thread started is still running."""
        return all(thread.is_alive() for thread in self._threads)

    def start(self) -> None:
        """Start the ``count`` finisher threads."""
        for i in range(self._count):
            thread = threading.Thread(target=self._run, name=f"finisher-{i}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self) -> None:
        """Start every waiting rest now (each has a finisher free for it, so they run
        side by side) and return once all are done. ``hand`` refuses from here on."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()
        self._threads = []

    def take(self, wait: bool = True) -> tuple[K, T] | None:
        """The next rest due, or None: at once if none is due and not ``wait``, else
        once the finishers stop and none waits. The caller runs it, then ``done()``."""
        with self._cond:
            while True:
                now = self._clock()
                key = self._due(now)
                if key is not None:
                    item, _ = self._waiting.pop(key)
                    if key in self._urgent:
                        self._urgent.remove(key)
                    self._running += 1
                    return key, item
                if not wait or (self._stopping and not self._waiting):
                    return None
                self._cond.wait(self._until_due(now))

    def _due(self, now: float) -> K | None:
        if not self._waiting:
            return None
        if self._urgent:
            return self._urgent[0]
        oldest, (_, handed) = next(iter(self._waiting.items()))
        if self._stopping:
            return oldest
        if self._on_path == 0 and now - self._quiet_since >= self._quiet:
            return oldest
        if now - handed >= self._patience:
            return oldest
        return None

    def _until_due(self, now: float) -> float | None:
        """Seconds until the oldest rest falls due if nothing else happens (None: no
        rest waits, so only a hand, an expedite, a path's end or a stop can wake us)."""
        if not self._waiting:
            return None
        _, handed = next(iter(self._waiting.values()))
        until = handed + self._patience - now
        if self._on_path == 0:
            until = min(until, self._quiet_since + self._quiet - now)
        return max(until, 0.001)

    def done(self) -> None:
        """A rest ``take`` handed out has been run: its finisher is free again."""
        with self._cond:
            self._running -= 1
            self._cond.notify_all()

    def _run(self) -> None:
        while (taken := self.take()) is not None:
            try:
                self._finish(*taken)
            finally:
                self.done()
