"""What the controller did to each backend service, one BackendTimeout object each.

Each record has its own resourceVersion, so a write is small, conflicts are
per backend service, and nothing is capped by one object's size. The intent
of a write is recorded before it is sent and its outcome after (plan.py says
which), every write needs the Lease (``may_write``), and a 409 means someone
else wrote: read again, never overwrite. ``migrate`` moves the one-ConfigMap
records of earlier versions over, so an upgrade forgets nothing.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from controller.fields import FIELDS, TIMEOUT
from controller.gcp.backends import NotLeader
from controller.kube.client import KubeClient, KubeError
from controller.model import BackendRef
from controller.plan import EMPTY, MAX_OWED, NORMAL, WARNING, Intent, Note, Record, State

log = logging.getLogger(__name__)

GROUP = "ingress-timeout.dev"
VERSION = "v1"
KIND = "BackendTimeout"
PLURAL = "backendtimeouts"
MANAGED_BY = {"app.kubernetes.io/managed-by": "gke-ingress-timeout"}


class RecordConflict(Exception):
    """Someone else wrote the record since we read it; it has been read again."""


def object_name(ref: BackendRef) -> str:
    """A DNS subdomain: "<scope>.<name>", both lowercase DNS labels already."""
    return f"{ref.scope}.{ref.name}"


def encode(ref: BackendRef, record: Record) -> dict[str, Any]:
    """The spec of the BackendTimeout for ``record``: per managed field what is
    desired, applied and claimed, and the one write in flight."""
    intent = record.intent
    return {
        "backend": {"scope": ref.scope, "name": ref.name},
        "fields": {name: _encode_state(state) for name, state in record.fields},
        "intent": None
        if intent is None
        else {
            "values": {
                name: {"value": v, "was": w, "restore": name in intent.restores}
                for name, v, w in intent.values
            },
            "requestId": intent.request_id,
            "at": _stamp(intent.at),
            "fingerprint": intent.fingerprint,
        },
        "result": record.result,
        "notes": [
            {"ingress": n.key, "type": n.type, "reason": n.reason, "message": n.message}
            for n in record.notes
        ],
        "notesAt": _stamp(record.notes_at) if record.notes_at else None,
    }


def _encode_state(state: State) -> dict[str, Any]:
    return {
        "desired": state.desired,
        "applied": state.applied,
        "claims": dict(state.claims),
        "overridden": state.overridden,
        "overriddenAt": _stamp(state.overridden_at) if state.overridden_at else None,
    }


def decode(obj: dict[str, Any]) -> tuple[BackendRef, Record] | None:
    """The record of a BackendTimeout; None (and a log line) for anything unreadable.

    Records of versions that managed the timeout only keep its state at the top
    of the spec and an intent of one value; they read as the timeout's.
    """
    name = (obj.get("metadata") or {}).get("name", "?")
    try:
        spec = obj["spec"]
        ref = BackendRef(str(spec["backend"]["scope"]), str(spec["backend"]["name"]))
        raw_fields = dict(spec["fields"] or {}) if "fields" in spec else {TIMEOUT.name: spec}
        states = {str(k): _decode_state(v) for k, v in raw_fields.items()}
        fields = tuple(
            (f.name, states[f.name]) for f in FIELDS if states.get(f.name, EMPTY) != EMPTY
        )
        record = Record(
            fields,
            _decode_intent(spec.get("intent")),
            str(spec.get("result") or ""),
            notes=tuple(_note(n) for n in spec.get("notes") or ())[:MAX_OWED],
            notes_at=_unix(spec["notesAt"]) if spec.get("notesAt") else 0.0,
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        log.warning("ignoring unreadable %s %s", KIND, name)
        return None
    if not ref.scope or not ref.name or object_name(ref) != name:
        log.warning("ignoring %s %s: its name is not its backend's", KIND, name)
        return None
    return ref, record


def _decode_state(raw: dict[str, Any]) -> State:
    return State(
        desired=_int_or_none(raw.get("desired")),
        applied=_int_or_none(raw.get("applied")),
        claims=tuple(sorted((str(k), int(v)) for k, v in (raw.get("claims") or {}).items())),
        overridden=int(raw.get("overridden") or 0),
        overridden_at=_unix(raw["overriddenAt"]) if raw.get("overriddenAt") else 0.0,
    )


def _decode_intent(raw: dict[str, Any] | None) -> Intent | None:
    if raw is None:
        return None
    restores: set[str] = set()
    if "values" in raw:
        given = {str(k): v for k, v in raw["values"].items()}
        known = {f.name: given[f.name] for f in FIELDS if f.name in given}  # the table's order
        values = tuple((k, int(v["value"]), int(v["was"])) for k, v in known.items())
        restores = {k for k, v in known.items() if v.get("restore") is True}
    else:
        # One value, the timeout's. Whether it was a restore is not recorded: taken as a
        # write, it stays pending until settled, and a value it leaves is restored then.
        values = ((TIMEOUT.name, int(raw["value"]), int(raw["was"])),)
    if not values:
        return None
    fingerprint = str(raw.get("fingerprint") or "")
    return Intent(values, str(raw["requestId"]), _unix(raw["at"]), frozenset(restores), fingerprint)


class Records:
    """Every BackendTimeout of one namespace, read at ``load`` and then written through.

    Only the leader writes, and per backend service only the worker that holds
    its key, so the memory copy is the truth between loads; a 409 says otherwise.
    """

    def __init__(
        self,
        kube: KubeClient,
        namespace: str,
        *,
        may_write: Callable[[], bool] = lambda: True,
        on_change: Callable[[BackendRef, Record | None, Record | None], None] = (
            lambda ref, old, new: None
        ),
    ) -> None:
        """``on_change(ref, old, new)`` hears of every record loaded, written or read again."""
        self._kube = kube
        self._on_change = on_change
        self.namespace = namespace
        self._path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
        self._may_write = may_write
        self._lock = threading.Lock()
        # ref -> (record or None if unreadable, resourceVersion)
        self._items: dict[BackendRef, tuple[Record | None, str]] = {}
        self.writes = 0

    def __repr__(self) -> str:
        return f"Records({self._path}, {len(self._items)} backends)"

    def load(self) -> None:
        """Read every record (paged)."""
        items, _ = self._kube.list(self._path, keep=_entry)
        with self._lock:
            old, self._items = self._items, {ref: (rec, rv) for ref, rec, rv in filter(None, items)}
        for ref in old.keys() | self._items.keys():
            self._changed(ref, old.get(ref), self._items.get(ref))

    def _changed(
        self,
        ref: BackendRef,
        old: tuple[Record | None, str] | None,
        new: tuple[Record | None, str] | None,
    ) -> None:
        before, after = old[0] if old else None, new[0] if new else None
        if before != after:
            self._on_change(ref, before, after)

    def get(self, ref: BackendRef) -> Record | None:
        with self._lock:
            entry = self._items.get(ref)
        return None if entry is None else entry[0]

    def refs(self) -> list[BackendRef]:
        with self._lock:
            return list(self._items)

    def put(self, ref: BackendRef, record: Record | None) -> None:
        """Make the stored record ``record`` (None: delete it). No request when it already is.

        Raises NotLeader without the Lease, RecordConflict after a 409 (the
        record has been read again: decide again), KubeError otherwise.
        """
        with self._lock:
            current = self._items.get(ref)
        if current is None and record is None:
            return
        if current is not None and current[0] == record and record is not None:
            return
        if not self._may_write():
            raise NotLeader(f"{KIND} {object_name(ref)} not written: no longer the leader")
        path = f"{self._path}/{object_name(ref)}"
        try:
            if record is None:
                assert current is not None
                body = {"preconditions": {"resourceVersion": current[1]}}
                try:
                    self._kube.request("DELETE", path, json=body)
                except KubeError as e:
                    if e.status != 404:
                        raise
                with self._lock:
                    self._items.pop(ref, None)
                self._changed(ref, current, None)
            else:
                stored = self._store(ref, record, path, current)
                new = (record, str(stored["metadata"]["resourceVersion"]))
                with self._lock:
                    self._items[ref] = new
                self._changed(ref, current, new)
            self.writes += 1
        except KubeError as e:
            if e.status != 409:
                raise
            self._reread(ref, path)
            raise RecordConflict(f"{KIND} {object_name(ref)} changed since read: {e}") from e

    def _store(
        self,
        ref: BackendRef,
        record: Record,
        path: str,
        current: tuple[Record | None, str] | None,
    ) -> dict[str, Any]:
        """Create or replace the object. One deleted under us (``kubectl delete``, the CRD
        reinstalled) is created again: the record is the controller's memory, and a
        replace that can only ever answer 404 would leave its backend stuck."""
        if current is not None:
            try:
                return self._kube.put(path, self._object(ref, record, current[1]))
            except KubeError as e:
                if e.status != 404:
                    raise
                log.info("%s %s was deleted by someone else; creating it again", KIND, path)
        return self._kube.post(self._path, self._object(ref, record, None))

    def _reread(self, ref: BackendRef, path: str) -> None:
        try:
            entry = _entry(self._kube.get(path))
        except KubeError as e:
            if e.status != 404:
                raise
            entry = None
        new = None if entry is None else (entry[1], entry[2])
        with self._lock:
            old = self._items.pop(ref, None)
            if new is not None:
                self._items[ref] = new
        self._changed(ref, old, new)

    def _object(self, ref: BackendRef, record: Record, version: str | None) -> dict[str, Any]:
        # No field ownership: only this controller writes records, and whole. An entry
        # of nothing keeps managedFields empty, which spares the apiserver its tracking
        # on each write (a fifth of a record PUT's time) and shortens every reply.
        metadata: dict[str, Any] = {
            "name": object_name(ref),
            "labels": MANAGED_BY,
            "managedFields": [{}],
        }
        if version is not None:
            metadata["resourceVersion"] = version
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "metadata": metadata,
            "spec": encode(ref, record),
        }

    def migrate(self, configmap: str) -> int:
        """Move the records an earlier version kept in ``configmap`` here, then delete it.

        Safe to repeat after a crash at any point: a record already here wins,
        and the ConfigMap goes only once all of its entries are.
        """
        path = f"/api/v1/namespaces/{self.namespace}/configmaps/{configmap}"
        try:
            old = self._kube.get(path)
        except KubeError as e:
            if e.status == 404:
                return 0
            raise
        moved = 0
        for key, value in (old.get("data") or {}).items():
            entry = _legacy(key, value)
            if entry is None or self.get(entry[0]) is not None:
                continue
            try:
                self.put(*entry)
            except RecordConflict:
                continue  # one is there already: it is newer than the ConfigMap
            moved += 1
        if not self._may_write():
            raise NotLeader(f"ConfigMap {configmap} not deleted: no longer the leader")
        try:
            self._kube.request("DELETE", path)
        except KubeError as e:
            if e.status != 404:
                raise
        log.info("moved %d records from ConfigMap %s to %s objects", moved, configmap, KIND)
        return moved


def _entry(obj: dict[str, Any]) -> tuple[BackendRef, Record | None, str] | None:
    meta = obj.get("metadata") or {}
    decoded = decode(obj)
    if decoded is None:
        ref = _ref_of_name(str(meta.get("name", "")))
        return None if ref is None else (ref, None, str(meta.get("resourceVersion", "")))
    return decoded[0], decoded[1], str(meta.get("resourceVersion", ""))


def _ref_of_name(name: str) -> BackendRef | None:
    scope, _, backend = name.partition(".")
    return BackendRef(scope, backend) if scope and backend else None


def _legacy(key: str, value: str) -> tuple[BackendRef, Record] | None:
    """One entry of the old ConfigMap: ``<scope>.<name>`` -> {applied, claims, overridden}.

    Its ``applied`` is not kept: version 0.1 wrote the wanted value there whenever
    it kept an entry, also for a value that was there before it, so it cannot tell
    a value 0.1 wrote from one someone else did. Such a backend is left as it is
    when nobody asks any more; the claims carry over.
    """
    ref = _ref_of_name(key)
    try:
        body = json.loads(value)
        claims = tuple(sorted((str(k), int(v)) for k, v in body["claims"].items()))
        overridden = int(body.get("overridden", 0))
    except (ValueError, TypeError, KeyError, AttributeError):
        log.warning("not migrating unreadable ConfigMap entry %s", key)
        return None
    if ref is None:
        return None
    desired = max((s for _, s in claims), default=None)
    state = State(desired, None, claims, overridden=overridden)
    return ref, Record(((TIMEOUT.name, state),), result="Migrated")


def _note(raw: dict[str, Any]) -> Note:
    """An Event a record owes, as ``encode`` wrote it."""
    kind = raw["type"]
    if kind not in (NORMAL, WARNING):
        raise ValueError(f"not an Event type: {kind!r}")
    return Note(str(raw["ingress"]), kind, str(raw["reason"]), str(raw["message"]))


def _int_or_none(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"not an integer: {value!r}")
    return int(value)


def _stamp(unix: float) -> str:
    return datetime.fromtimestamp(unix, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _unix(stamp: object) -> float:
    if not isinstance(stamp, str):
        raise TypeError(f"not a timestamp: {stamp!r}")
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
