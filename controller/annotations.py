"""Parse and validate what users and ingress-gce write on an Ingress.

Users write ``<prefix>/timeout``; ingress-gce writes ``ingress.kubernetes.io/backends``
and the class annotation. Every function here is pure and raises ``Invalid``
with a message fit for a Warning Event.
"""

from __future__ import annotations

import json
import re

BACKENDS_ANNOTATION = "ingress.kubernetes.io/backends"
CLASS_ANNOTATION = "kubernetes.io/ingress.class"
GLOBAL_CLASSES = frozenset({"gce"})
REGIONAL_CLASSES = frozenset({"gce-internal", "gce-regional-external"})

# ASCII only: Python's \d would accept other scripts' digits.
_SECONDS = re.compile(r"[0-9]{1,12}", re.ASCII)
_DURATION = re.compile(r"(?:([0-9]{1,6})h)?(?:([0-9]{1,8})m)?(?:([0-9]{1,10})s)?", re.ASCII)
_GCE_NAME = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?", re.ASCII)
# ingress-gce writes about 80 bytes a backend service; anything far larger is not its.
MAX_BACKENDS_BYTES = 16384


class Invalid(ValueError):
    """An annotation value the controller refuses; the message says what is accepted."""


def timeout_key(prefix: str) -> str:
    return f"{prefix}/timeout"


def parse_timeout(raw: str, *, key: str, max_timeout: int) -> int:
    """Seconds from ``"3600"`` or a duration like ``"1h30m"``, within 1..max_timeout."""
    seconds = _to_seconds(raw)
    if seconds is None or not 1 <= seconds <= max_timeout:
        shown = raw if len(raw) <= 40 else raw[:40] + "..."
        raise Invalid(
            f"{key}={json.dumps(shown, ensure_ascii=True)} is not a valid timeout: use whole "
            f'seconds ("3600") or a duration ("90s", "15m", "1h", "1h30m") '
            f"from 1s to {max_timeout}s"
        )
    return seconds


def _to_seconds(raw: str) -> int | None:
    if _SECONDS.fullmatch(raw):
        return int(raw)
    match = _DURATION.fullmatch(raw)
    if not raw or match is None:
        return None
    hours, minutes, secs = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + secs


def parse_backends(raw: str, *, max_backends: int) -> tuple[str, ...]:
    """Backend-service names from ingress-gce's JSON object (name -> health).

    A bare health word (``Unknown``) means the load balancer is still being
    built: no names yet, not an error. The input is a tenant's to write, so
    its size, depth and number of names are bounded before anything else.
    """
    if raw.strip() in {"", "Unknown"}:
        return ()
    if len(raw) > MAX_BACKENDS_BYTES:
        raise Invalid(
            f"{BACKENDS_ANNOTATION} is {len(raw)} characters long, more than the "
            f"{MAX_BACKENDS_BYTES} ingress-gce ever writes; nothing was changed"
        )
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise Invalid(
            f"{BACKENDS_ANNOTATION} is not the JSON object ingress-gce writes "
            "(backend-service name -> health); nothing was changed"
        )
    if len(value) > max_backends:
        raise Invalid(
            f"{BACKENDS_ANNOTATION} names {len(value)} backend services, more than the "
            f"{max_backends} this controller accepts for one Ingress; nothing was changed"
        )
    bad = sorted(name for name in value if not _GCE_NAME.fullmatch(name))
    if bad:
        shown = bad[0] if len(bad[0]) <= 70 else bad[0][:70] + "..."
        raise Invalid(
            f"{BACKENDS_ANNOTATION} names {json.dumps(shown, ensure_ascii=True)}, "
            "which is not a backend-service name; nothing was changed"
        )
    return tuple(sorted(value))


def is_gce(ingress_class: str | None, class_name: str | None) -> bool:
    """Whether ingress-gce (and so this controller) serves an Ingress of this class."""
    if not ingress_class:
        return class_name is None
    return ingress_class in GLOBAL_CLASSES | REGIONAL_CLASSES


def scope(ingress_class: str | None, region: str) -> str:
    """``"global"``, or the region for the classes whose backend services are regional."""
    return region if ingress_class in REGIONAL_CLASSES else "global"
