"""What was last seen of each backend service: from the paged list, a GET or our own write.

Reconciles decide from here, so that a backend already listed costs no GET.
Owns freshness rules: a list refill never overwrites what a worker saw after
the list began, and it reports which backend services changed behind our back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from controller.model import Backend, BackendRef


class BackendCache:
    """Thread-safe; ``get`` answers (known, backend), backend None for "does not exist"."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[BackendRef, tuple[float, Backend | None]] = {}

    def get(self, ref: BackendRef) -> tuple[bool, Backend | None]:
        with self._lock:
            entry = self._entries.get(ref)
        return (False, None) if entry is None else (True, entry[1])

    def put(self, ref: BackendRef, backend: Backend | None) -> None:
        """Remember what a GET (None: 404) or a write showed just now."""
        with self._lock:
            self._entries[ref] = (self._clock(), backend)

    def drop(self, ref: BackendRef) -> None:
        with self._lock:
            self._entries.pop(ref, None)

    def began(self) -> float:
        """The stamp to pass to ``fill`` for a list that starts now."""
        return self._clock()

    def fill(
        self, scopes: Iterable[str], backends: Iterable[Backend], began: float
    ) -> set[BackendRef]:
        """Replace what is known of ``scopes`` by a complete list that began at ``began``.

        An entry put after ``began`` is newer than the list and is kept.
        Returns the backend services whose value, fingerprint or existence
        differs from what was known before (new ones included).
        """
        listed = {b.ref: b for b in backends}
        wanted = set(scopes)
        changed: set[BackendRef] = set()
        with self._lock:
            stamp = self._clock()
            for ref, backend in listed.items():
                old = self._entries.get(ref)
                if old is not None and old[0] > began:
                    continue
                if old is None or old[1] != backend:
                    changed.add(ref)
                self._entries[ref] = (stamp, backend)
            for ref in [r for r in self._entries if r.scope in wanted and r not in listed]:
                stamp_old, old_backend = self._entries[ref]
                if stamp_old > began:
                    continue
                if old_backend is not None:
                    changed.add(ref)
                del self._entries[ref]
        return changed

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
