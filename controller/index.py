"""The index from backend service to the Ingresses that claim it (client-go's Indexer idea).

Updated from the old and the new facts of every Ingress event, so a change
costs the size of that Ingress, never a scan of the cluster; and from every
record written, so the backend services an Ingress claimed before (kept
claims, deletions) are found from its key alone. Claimants are kept by
namespace, because only one namespace's Ingresses can own a backend service
(its Service's): the cluster default backend, named on every Ingress, costs
its reconcile only the Ingresses of kube-system.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from controller.model import BackendRef


class ClaimIndex:
    """Backend service -> keys of the Ingresses whose annotations name it. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # backend service -> namespace -> Ingress keys
        self._by_ref: dict[BackendRef, dict[str, set[str]]] = {}
        self._recorded: dict[str, set[BackendRef]] = {}

    def update(self, key: str, old: Iterable[BackendRef], new: Iterable[BackendRef]) -> None:
        """Move ``key`` from the backend services it named to those it names now."""
        old_refs, new_refs = set(old), set(new)
        namespace = key.partition("/")[0]
        with self._lock:
            for ref in old_refs - new_refs:
                spaces = self._by_ref.get(ref)
                keys = spaces.get(namespace) if spaces is not None else None
                if spaces is not None and keys is not None:
                    keys.discard(key)
                    if not keys:
                        del spaces[namespace]
                    if not spaces:
                        del self._by_ref[ref]
            for ref in new_refs - old_refs:
                self._by_ref.setdefault(ref, {}).setdefault(namespace, set()).add(key)

    def record(self, ref: BackendRef, old: Iterable[str], new: Iterable[str]) -> None:
        """The record of ``ref`` listed the Ingress keys ``old`` and now lists ``new``."""
        old_keys, new_keys = set(old), set(new)
        with self._lock:
            for key in old_keys - new_keys:
                refs = self._recorded.get(key)
                if refs is not None:
                    refs.discard(ref)
                    if not refs:
                        del self._recorded[key]
            for key in new_keys - old_keys:
                self._recorded.setdefault(key, set()).add(ref)

    def recorded(self, key: str) -> set[BackendRef]:
        """The backend services whose records list ``key`` as a claimant."""
        with self._lock:
            return set(self._recorded.get(key, ()))

    def claimants(self, ref: BackendRef, namespace: str | None = None) -> set[str]:
        """The keys naming ``ref``: all of them, or those of ``namespace`` alone."""
        with self._lock:
            spaces = self._by_ref.get(ref, {})
            if namespace is not None:
                return set(spaces.get(namespace, ()))
            return {key for keys in spaces.values() for key in keys}

    def refs(self) -> set[BackendRef]:
        with self._lock:
            return set(self._by_ref)

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_ref)
