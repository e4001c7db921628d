"""The rest of each write, done beside the workers without standing in their way.

A worker records a write's intent and sends its PATCH: that is the path from a
change to its effect. The rest (the wait on the operation, the outcome record,
its Events, the read-back of the fingerprint) changes nothing a user waits for,
but it writes to the same apiserver and takes the same interpreter. So it is
handed here, into a backlog, and a finisher starts it when the path is quiet:
once no worker has been on the path for ``quiet`` seconds, or once it has
waited ``patience`` seconds, whichever comes first; the oldest first, as
finishers come free.

It starts at once, on a thread of its own if no finisher is free, when it is in
the way: when the key it holds is wanted again (``expedite``: the next decision
on that backend waits for it), and when the finishers stop (every waiting rest
then runs side by side, so that a stop takes the longest one rest can take, not
their sum).

``hand`` refuses, and the worker finishes its write itself, once ``room`` rests
wait or one of them has waited past its patience for a free finisher: the
finishers do not keep up, and the workers slow down to their pace rather than
pile up rests. A rest's wait here holds no thread, so it does not count against
its reconcile's deadline: ``finish`` is told how long it waited.

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
ROOM = 256  # rests that may wait at once


class Finishers(Generic[K, T]):
    """``count`` threads that run ``finish(key, item, waited)`` for each item handed
    in, ``waited`` being the seconds it waited here; more only for rests in the way."""

    def __init__(
        self,
        count: int,
        finish: Callable[[K, T, float], None],
        *,
        quiet: float = QUIET,
        patience: float = PATIENCE,
        room: int = ROOM,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._count = count
        self._finish = finish
        self._quiet = quiet
        self._patience = patience
        self._room = room
        self._clock = clock
        self._cond = threading.Condition()
        self._waiting: OrderedDict[K, tuple[T, float]] = OrderedDict()  # key -> (item, handed)
        self._urgent: list[K] = []  # keys in the way, in the order they were found so
        self._running = 0  # rests taken and not yet done
        self._helping = 0  # threads started for urgent rests that have not taken one yet
        self._on_path = 0
        self._quiet_since = clock()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._helpers: list[threading.Thread] = []

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
        """Leave ``item`` to be finished; False when it cannot wait here (see the
        module's docstring): the caller finishes it itself."""
        with self._cond:
            if self._stopping or key in self._waiting or len(self._waiting) >= self._room:
                return False
            if self._waiting:
                _, handed = next(iter(self._waiting.values()))
                if self._clock() - handed > self._patience:
                    return False  # overdue, and no finisher free for it
            self._waiting[key] = (item, self._clock())
            self._cond.notify_all()
            return True

    def expedite(self, key: K) -> None:
        """``key`` is wanted again: if its rest waits here, it starts at once."""
        with self._cond:
            if key in self._waiting and key not in self._urgent:
                self._urgent.append(key)
                self._help()
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
        """Start every waiting rest now, side by side, and return once all are done.
        ``hand`` refuses from here on."""
        with self._cond:
            self._stopping = True
            self._urgent += [key for key in self._waiting if key not in self._urgent]
            self._help()
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()
        self._threads = []
        while True:
            with self._cond:
                helpers = self._helpers = [h for h in self._helpers if h.is_alive()]
            if not helpers:
                return
            for thread in helpers:
                thread.join()

    def take(self, wait: bool = True) -> tuple[K, T, float] | None:
        """The next rest due and the seconds it waited, or None: at once if none is due
        and not ``wait``, else once the finishers stop and none waits. The caller runs
        it, then ``done()``."""
        with self._cond:
            while True:
                now = self._clock()
                key = self._due(now)
                if key is not None:
                    item, handed = self._waiting.pop(key)
                    if key in self._urgent:
                        self._urgent.remove(key)
                    self._running += 1
                    return key, item, max(now - handed, 0.0)
                if not wait or (self._stopping and not self._waiting):
                    return None
                self._cond.wait(self._until_due(now))

    def done(self) -> None:
        """A rest ``take`` handed out has been run: its finisher is free again."""
        with self._cond:
            self._running -= 1
            self._cond.notify_all()

    def _due(self, now: float) -> K | None:
        if not self._waiting:
            return None
        if self._urgent:
            return self._urgent[0]
        oldest, (_, handed) = next(iter(self._waiting.items()))
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

    def _help(self) -> None:
        """Under the lock: start a thread for each urgent rest that no finisher is free
        to start now (none before ``start``: the caller takes what is due)."""
        if not self._threads:
            return
        free = max(self._count - self._running, 0)
        for _ in range(len(self._urgent) - free - self._helping):
            self._helping += 1
            thread = threading.Thread(target=self._run_one, name="finisher-urgent", daemon=True)
            self._helpers = [h for h in self._helpers if h.is_alive()] + [thread]
            thread.start()

    def _run_one(self) -> None:
        with self._cond:
            self._helping -= 1
        if (taken := self.take(wait=False)) is not None:
            self._run_taken(taken)

    def _run(self) -> None:
        while (taken := self.take()) is not None:
            self._run_taken(taken)

    def _run_taken(self, taken: tuple[K, T, float]) -> None:
        try:
            self._finish(*taken)
        finally:
            self.done()
