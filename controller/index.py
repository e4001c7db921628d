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
from collections.abc import Iterable, Iterator
from typing import TypeAlias, TypeVar

from controller.model import BackendRef

T = TypeVar("T")
# Most backend services have one claimant and most Ingresses one record per backend:
# such an entry is that one item, not a set of one (a set is 216 bytes, a dict of one
# 184: at 10,000 Ingresses the difference is several MB of a 128 MiB limit).
Some: TypeAlias = T | set[T]


class ClaimIndex:
    """Backend service -> keys of the Ingresses whose annotations name it. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # backend service -> its one claimant's key, or namespace -> Ingress keys
        self._by_ref: dict[BackendRef, str | dict[str, Some[str]]] = {}
        self._recorded: dict[str, Some[BackendRef]] = {}

    def update(self, key: str, old: Iterable[BackendRef], new: Iterable[BackendRef]) -> None:
        """Move ``key`` from the backend services it named to those it names now."""
        old_refs, new_refs = set(old), set(new)
        with self._lock:
            for ref in old_refs - new_refs:
                self._unclaim(ref, key)
            for ref in new_refs - old_refs:
                self._claim(ref, key)

    def _claim(self, ref: BackendRef, key: str) -> None:
        entry = self._by_ref.get(ref)
        if entry is None or entry == key:
            self._by_ref[ref] = key
            return
        if isinstance(entry, str):
            entry = self._by_ref[ref] = {_namespace(entry): entry}
        namespace = _namespace(key)
        entry[namespace] = _added(entry.get(namespace), key)

    def _unclaim(self, ref: BackendRef, key: str) -> None:
        entry = self._by_ref.get(ref)
        if entry is None or isinstance(entry, str):
            if entry == key:
                del self._by_ref[ref]
            return
        namespace = _namespace(key)
        keys = _removed(entry.get(namespace), key)
        if keys is None:
            entry.pop(namespace, None)
        else:
            entry[namespace] = keys
        if len(entry) == 1:
            [only] = entry.values()
            if isinstance(only, str):
                self._by_ref[ref] = only
        elif not entry:
            del self._by_ref[ref]

    def record(self, ref: BackendRef, old: Iterable[str], new: Iterable[str]) -> None:
        """The record of ``ref`` listed the Ingress keys ``old`` and now lists ``new``."""
        old_keys, new_keys = set(old), set(new)
        with self._lock:
            for key in old_keys - new_keys:
                refs = _removed(self._recorded.get(key), ref)
                if refs is None:
                    self._recorded.pop(key, None)
                else:
                    self._recorded[key] = refs
            for key in new_keys - old_keys:
                self._recorded[key] = _added(self._recorded.get(key), ref)

    def recorded(self, key: str) -> set[BackendRef]:
        """The backend services whose records list ``key`` as a claimant."""
        with self._lock:
            return set(_each(self._recorded.get(key)))

    def claimants(self, ref: BackendRef, namespace: str | None = None) -> set[str]:
        """The keys naming ``ref``: all of them, or those of ``namespace`` alone."""
        with self._lock:
            entry = self._by_ref.get(ref)
            if entry is None or isinstance(entry, str):
                keys = set(_each(entry))
                return keys if namespace is None or _namespace(entry or "") == namespace else set()
            if namespace is not None:
                return set(_each(entry.get(namespace)))
            return {key for keys in entry.values() for key in _each(keys)}

    def refs(self) -> set[BackendRef]:
        with self._lock:
            return set(self._by_ref)

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_ref)


def _namespace(key: str) -> str:
    return key.partition("/")[0]


def _each(entry: Some[T] | None) -> Iterator[T]:
    if isinstance(entry, set):
        yield from entry
    elif entry is not None:
        yield entry


def _added(entry: Some[T] | None, item: T) -> Some[T]:
    """``entry`` with ``item`` in it (a set once there are two)."""
    if entry is None or entry == item:
        return item
    if isinstance(entry, set):
        entry.add(item)
        return entry
    return {entry, item}


def _removed(entry: Some[T] | None, item: T) -> Some[T] | None:
    """``entry`` without ``item`` (the one item left once there is one; None for none)."""
    if isinstance(entry, set):
        entry.discard(item)
        if len(entry) > 1:
            return entry
        return next(iter(entry), None)
    return None if entry == item else entry
