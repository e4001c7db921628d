"""What was last seen of each backend service: from the paged list, a GET or our own write.

Reconciles decide from here, so that a backend already listed costs no GET.
Owns freshness rules: a list refill never overwrites what a worker saw after
the list began, unless it was our own write and the list shows another
fingerprint than the one that write replaced (then the list saw GCP after the
write: our value, or someone's change since); a GET sent before a list began
never overwrites that list, however late its answer; and it reports which
backend services changed behind our back.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

from controller.model import Backend, BackendRef


class _Entry(NamedTuple):
    stamp: float
    backend: Backend | None
    replacing: str | None  # for our own write: the fingerprint it replaced


class BackendCache:
    """Thread-safe; ``get`` answers (known, backend), backend None for "does not exist"."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[BackendRef, _Entry] = {}

    def get(self, ref: BackendRef) -> tuple[bool, Backend | None]:
        with self._lock:
            entry = self._entries.get(ref)
        return (False, None) if entry is None else (True, entry.backend)

    def put(
        self,
        ref: BackendRef,
        backend: Backend | None,
        *,
        replacing: str | None = None,
        asked: float | None = None,
    ) -> None:
        """Remember what a GET (None: 404) showed, or, with ``replacing`` (the
        fingerprint the write was made against), what our own write left.

        Our write is not remembered over a read that shows another fingerprint than the
        one it replaced: GCP took the write with that fingerprint, so such a read saw GCP
        after it (a list taken in before we heard DONE), and knows better.

        With ``asked`` (the ``began`` stamp taken when the read was sent): whatever was
        put after it was sent (a list that began later) is the newer view, and the read
        is dropped; else it is stamped with the time it was sent, so that a list that
        began after it wins, however late its answer came."""
        with self._lock:
            old = self._entries.get(ref)
            if asked is not None and old is not None and old.stamp > asked:
                return
            if (
                replacing is not None
                and old is not None
                and old.replacing is None
                and old.backend is not None
                and old.backend.fingerprint != replacing
            ):
                return
            stamp = self._clock() if asked is None else asked
            self._entries[ref] = _Entry(stamp, backend, replacing)

    def drop(self, ref: BackendRef) -> None:
        with self._lock:
            self._entries.pop(ref, None)

    def began(self) -> float:
        """The stamp to pass to ``fill`` for a list that starts now (or to ``put`` for a
        read sent now)."""
        return self._clock()

    def fill(
        self, scopes: Iterable[str], backends: Iterable[Backend], began: float
    ) -> set[BackendRef]:
        """Replace what is known of ``scopes`` by a complete list that began at ``began``.

        ``backends`` is taken in as it comes (a paged list's pages are read while this
        runs, never held whole); if it raises midway, what it showed so far stays
        known and nothing is removed. An entry put after ``began`` is newer than the
        list and is kept; one the list shows unchanged keeps the object held.
        Returns the backend services whose value, fingerprint or existence
        differs from what was known before (new ones included).
        """
        wanted = set(scopes)
        listed: set[BackendRef] = set()
        changed: set[BackendRef] = set()
        for backend in backends:  # the next page is read outside the lock
            with self._lock:
                old = self._entries.get(backend.ref)
                if old is not None and old.stamp > began and not _after(backend, old):
                    held = old.backend
                else:
                    if old is None or not _same(old, backend):
                        changed.add(backend.ref)
                    elif old.backend == backend:
                        # Unchanged: keep the one held; the list's copy goes with its page.
                        backend = old.backend
                    self._entries[backend.ref] = _Entry(self._clock(), backend, None)
                    held = backend
                # A ref that stays held anyway: the list's own go with their pages.
                listed.add(held.ref if held is not None else backend.ref)
        with self._lock:
            for ref in [r for r in self._entries if r.scope in wanted and r not in listed]:
                old = self._entries[ref]
                if old.stamp > began:
                    continue
                if old.backend is not None:
                    changed.add(ref)
                del self._entries[ref]
        return changed

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def _after(listed: Backend, ours: _Entry) -> bool:
    """Whether ``listed`` shows GCP after our own write of ``ours``: its fingerprint is
    no longer the one that write replaced."""
    return ours.replacing is not None and listed.fingerprint != ours.replacing


def _same(known: _Entry, listed: Backend) -> bool:
    """Nothing changed behind our back: the same, or our own write with its fingerprint."""
    if known.backend is None or known.replacing is None:
        return known.backend == listed
    return dataclasses.replace(known.backend, fingerprint=listed.fingerprint) == listed
