"""What the controller applied, remembered in one ConfigMap so it survives a restart.

One data key per backend service it manages (``<scope>.<name>``), holding the
value it wrote and which Ingresses asked for what. The ConfigMap lives in the
controller's own namespace: a Role on one named ConfigMap is all it needs.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from typing import Any

from controller.kube.client import KubeClient, KubeError
from controller.model import BackendRef
from controller.plan import Record

log = logging.getLogger(__name__)


def encode(record: Record) -> str:
    body = {"applied": record.applied, "claims": dict(record.claims)}
    if record.overridden:
        body["overridden"] = record.overridden
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def decode(key: str, value: str) -> tuple[BackendRef, Record] | None:
    """Parse one data entry; None (and a log line) for anything unreadable."""
    scope, _, name = key.partition(".")
    try:
        body = json.loads(value)
        applied = body["applied"]
        claims = tuple(sorted((str(k), int(v)) for k, v in body["claims"].items()))
        record = Record(
            None if applied is None else int(applied), claims, int(body.get("overridden", 0))
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        log.warning("ignoring unreadable ledger entry %s", key)
        return None
    if not scope or not name:
        return None
    return BackendRef(scope, name), record


def data_key(ref: BackendRef) -> str:
    return f"{ref.scope}.{ref.name}"


class Ledger:
    """The ConfigMap, read once at start and then written through."""

    def __init__(self, kube: KubeClient, namespace: str, name: str) -> None:
        self._kube = kube
        self._path = f"/api/v1/namespaces/{namespace}/configmaps"
        self._name = name
        self._lock = threading.Lock()
        self._records: dict[BackendRef, Record] = {}
        self._version: str | None = None
        self._dirty = False  # in memory but not yet written

    def __repr__(self) -> str:
        return f"Ledger(configmap {self._path}/{self._name}, {len(self._records)} backends)"

    def load(self) -> None:
        with self._lock:
            self._load()

    def _load(self) -> None:
        try:
            obj = self._kube.get(f"{self._path}/{self._name}")
        except KubeError as e:
            if e.status != 404:
                raise
            self._records, self._version = {}, None
            return
        self._version = obj["metadata"]["resourceVersion"]
        entries = (decode(k, v) for k, v in (obj.get("data") or {}).items())
        self._records = dict(e for e in entries if e is not None)

    def snapshot(self) -> dict[BackendRef, Record]:
        with self._lock:
            return dict(self._records)

    def update(self, changes: Mapping[BackendRef, Record | None]) -> None:
        """Apply ``changes`` (None forgets a backend) and write the whole record through.

        The changes count in memory at once, even if the write fails: GCP was
        already changed, so forgetting it would lose what was ours. The write
        raises; the next ``update`` (the retried reconcile) writes it again.
        """
        with self._lock:
            wanted = _merged(self._records, changes)
            if wanted == self._records and not self._dirty:
                return
            self._records, self._dirty = wanted, True
            try:
                self._write(wanted)
            except KubeError as e:
                if e.status not in (404, 409):
                    raise
                self._refresh_version()  # we are the only writer: ours wins
                self._write(wanted)
            self._dirty = False

    def _refresh_version(self) -> None:
        try:
            current = self._kube.get(f"{self._path}/{self._name}")
            self._version = current["metadata"]["resourceVersion"]
        except KubeError as e:
            if e.status != 404:
                raise
            self._version = None

    def _write(self, records: Mapping[BackendRef, Record]) -> None:
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": self._name},
            "data": {data_key(ref): encode(rec) for ref, rec in sorted(records.items())},
        }
        if self._version is None:
            created = self._kube.post(self._path, body)
        else:
            body["metadata"]["resourceVersion"] = self._version
            created = self._kube.put(f"{self._path}/{self._name}", body)
        self._version = created["metadata"]["resourceVersion"]


def _merged(
    records: Mapping[BackendRef, Record], changes: Mapping[BackendRef, Record | None]
) -> dict[BackendRef, Record]:
    merged = dict(records)
    for ref, record in changes.items():
        if record is None:
            merged.pop(ref, None)
        else:
            merged[ref] = record
    return merged
