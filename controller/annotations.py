"""Parse and validate what users and ingress-gce write on an Ingress.

Users write ``<prefix>/timeout``, ``<prefix>/timeouts`` and
``<prefix>/draining-timeout``; ingress-gce writes ``ingress.kubernetes.io/backends``
and the class annotation. Every function here is pure and raises ``Invalid``
with a message fit for a Warning Event (the admission policy is checked
against these functions).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

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
# The per-Service map is a tenant's, bounded like the backends annotation.
MAX_MAP_BYTES = 16384
MAX_MAP_ENTRIES = 64
# A Service name (a DNS-1035 label), optionally ":" and a port number or IANA port name.
_SELECTOR = re.compile(
    r"([a-z]([-a-z0-9]{0,61}[a-z0-9])?)"
    r"(?::([1-9][0-9]{0,4}|(?=[-a-z0-9]*[a-z])[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?))?",
    re.ASCII,
)
_ACCEPTED = 'use whole seconds ("3600") or a duration ("90s", "15m", "1h", "1h30m")'


class Invalid(ValueError):
    """An annotation value the controller refuses; the message says what is accepted."""


def timeout_key(prefix: str) -> str:
    return f"{prefix}/timeout"


def parse_timeout(raw: str, *, key: str, max_timeout: int) -> int:
    """Seconds from ``"3600"`` or a duration like ``"1h30m"``, within 1..max_timeout."""
    return parse_duration(raw, key=key, minimum=1, maximum=max_timeout)


def parse_duration(raw: str, *, key: str, minimum: int, maximum: int, noun: str = "timeout") -> int:
    """Seconds from ``"3600"`` or a duration like ``"1h30m"``, within minimum..maximum;
    ``key`` names the annotation (or map entry) in the message, ``noun`` the value
    (``"draining timeout"``: fields.Field.noun)."""
    seconds = _to_seconds(raw)
    if seconds is None or not minimum <= seconds <= maximum:
        shown = raw if len(raw) <= 40 else raw[:40] + "..."
        raise Invalid(
            f"{key}={json.dumps(shown, ensure_ascii=True)} is not a valid {noun}: "
            f"{_ACCEPTED} from {minimum}s to {maximum}s"
        )
    return seconds


@dataclass(frozen=True)
class PerService:
    """A parsed per-Service map: what applies, and what was refused entry by entry.

    ``values``: selector (``"ws"`` or ``"ws:8080"``) -> seconds. ``invalid``:
    selectors of entries whose value was refused (what they asked before
    stays). ``refused``: a Warning message for each refused entry, both kinds.
    """

    values: tuple[tuple[str, int], ...] = ()
    invalid: frozenset[str] = frozenset()
    refused: tuple[str, ...] = ()


def parse_per_service(
    raw: str,
    *,
    key: str,
    minimum: int,
    maximum: int,
    routes: Mapping[str, frozenset[str]],
) -> PerService:
    """The JSON object ``{"ws": "1h", "api:8080": "30s"}`` of ``key``.

    ``routes`` maps each Service the Ingress routes to to the ports it names
    for it (numbers or names, as written). The whole value is refused
    (``Invalid``) when it is not a JSON object, longer than 16 KiB or holds
    more than 64 entries; an entry is refused on its own when its key is not
    a Service name or ``name:port`` this Ingress routes to, or its value is
    not a duration within bounds.
    """
    if len(raw) > MAX_MAP_BYTES:
        raise Invalid(
            f"{key} is {len(raw)} characters long, more than the {MAX_MAP_BYTES} accepted; "
            "what it asked before stays"
        )
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise Invalid(
            f'{key} is not a JSON object of Service (or "name:port") to timeout, '
            f'such as {{"ws": "1h", "api": "30s"}}; what it asked before stays'
        )
    if len(value) > MAX_MAP_ENTRIES:
        raise Invalid(
            f"{key} has {len(value)} entries, more than the {MAX_MAP_ENTRIES} accepted; "
            "what it asked before stays"
        )
    values: list[tuple[str, int]] = []
    invalid: set[str] = set()
    refused: list[str] = []
    for selector, asked in sorted(value.items()):
        shown = selector if len(selector) <= 70 else selector[:70] + "..."
        entry = f"{key}[{json.dumps(shown, ensure_ascii=True)}]"
        why = _unrouted(selector, routes)
        if why is not None:
            refused.append(f"{entry} {why}; that entry is ignored")
            continue
        if isinstance(asked, int) and not isinstance(asked, bool):
            asked = str(asked)  # whole seconds as a JSON number
        try:
            if not isinstance(asked, str):
                raise Invalid(
                    f"{entry}={json.dumps(asked)[:40]} is not a valid timeout: {_ACCEPTED} "
                    f"from {minimum}s to {maximum}s"
                )
            values.append(
                (selector, parse_duration(asked, key=entry, minimum=minimum, maximum=maximum))
            )
        except Invalid as e:
            invalid.add(selector)
            refused.append(f"{e}; what it asked before stays")
    return PerService(tuple(values), frozenset(invalid), tuple(refused))


def _unrouted(selector: str, routes: Mapping[str, frozenset[str]]) -> str | None:
    """Why the map entry ``selector`` names nothing this Ingress routes to, or None."""
    match = _SELECTOR.fullmatch(selector)
    if match is None or ((match.group(3) or "").isdigit() and int(match.group(3)) > 65535):
        return 'is not a Service name or "name:port"'
    service, port = match.group(1), match.group(3)
    if service not in routes:
        return "names a Service this Ingress does not route to"
    ports = routes[service]
    if port is None or port in ports:
        return None
    # The spec may name the port by number where the entry names it by name, or the
    # other way round: only the Service knows both, so only a like-for-like miss is one.
    if all(p.isdigit() == port.isdigit() for p in ports) and ports:
        named = ", ".join(sorted(ports))
        return f"names port {port} of Service {service}, which this Ingress routes to by {named}"
    return None


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
