"""The fields of a backend service this controller manages: one row each.

A row says everything the other stages need to know of a field: the
annotations users ask it with, its bounds, the value restored when nobody
asks any more, and where it sits in a Compute BackendService (for reads and
for the PATCH body). plan.py decides every row under the same rules, the
records keep a state per row, and the PATCH carries every row that differs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from controller.model import Settings

# Compute's own bounds (the API refuses anything else with 400).
API_MAX_TIMEOUT = 2147483647
API_MAX_DRAINING = 3600


@dataclass(frozen=True)
class Field:
    """One managed field of a backend service."""

    name: str  # in records, claims, log lines
    path: tuple[str, ...]  # where it sits in a BackendService, e.g. ("timeoutSec",)
    annotation: str  # <prefix>/<annotation>: one duration for every backend of the Ingress
    per_service: str | None  # <prefix>/<per_service>: a JSON object, Service -> duration
    minimum: int
    api_default: int  # what a backend service has when the field is absent
    maximum: Callable[[Settings], int]  # the largest value an Ingress may ask
    default: Callable[[Settings], int]  # restored when nobody asks any more

    @property
    def noun(self) -> str:
        """What its Warning calls a value: ``a valid draining timeout``. The admission policy
        derives the same from the key (after the prefix, dashes spaces): keep them one."""
        return self.annotation.replace("-", " ")

    @property
    def label(self) -> str:
        """How Compute (and so our messages) call it: ``connectionDraining.drainingTimeoutSec``."""
        return ".".join(self.path)

    def read(self, item: Mapping[str, Any]) -> int:
        """Its value in a BackendService as Compute returns it; absent means the API's default."""
        value: Any = item
        for part in self.path:
            value = value.get(part) if isinstance(value, Mapping) else None
        if isinstance(value, bool) or not isinstance(value, int):
            return self.api_default
        return value

    def body(self, value: int) -> dict[str, Any]:
        """The part of a merge-patch body that sets it to ``value``."""
        patch: dict[str, Any] = {self.path[-1]: value}
        for part in reversed(self.path[:-1]):
            patch = {part: patch}
        return patch


TIMEOUT = Field(
    name="timeout",
    path=("timeoutSec",),
    annotation="timeout",
    per_service="timeouts",
    minimum=1,
    api_default=30,
    maximum=lambda s: s.max_timeout,
    default=lambda s: s.default_timeout,
)
# 0 disables draining; ingress-gce writes it only from a BackendConfig that sets it.
DRAINING = Field(
    name="draining",
    path=("connectionDraining", "drainingTimeoutSec"),
    annotation="draining-timeout",
    per_service=None,
    minimum=0,
    api_default=0,
    maximum=lambda s: API_MAX_DRAINING,
    default=lambda s: s.default_draining_timeout,
)
FIELDS: tuple[Field, ...] = (TIMEOUT, DRAINING)
BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}


def patch_body(values: Mapping[str, int], fingerprint: str) -> dict[str, Any]:
    """One merge-patch body setting every field of ``values`` (name -> value), fenced by
    ``fingerprint``: the fields that differ travel together, under one fingerprint."""
    body: dict[str, Any] = {}
    for name, value in values.items():
        for key, part in BY_NAME[name].body(value).items():
            if isinstance(part, dict) and isinstance(body.get(key), dict):
                body[key] = {**body[key], **part}
            else:
                body[key] = part
    return {**body, "fingerprint": fingerprint}
