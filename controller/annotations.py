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
# The admission policy (deploy/admission/policy.yaml) judges the map with these very texts
# (a test holds them equal), so they are RE2 and Python alike: anchored, no lookaround,
# and matched whole here (fullmatch: "$" then cannot stop before a final line break).
# The map's grammar: a JSON object whose keys and string values are printable ASCII without
# escapes and whose other values are whole numbers, so that CEL, which cannot decode JSON,
# reads each entry exactly as written. One run of whitespace between tokens: no
# backtracking across a long run.
_WS = r"[ \t\n\r]*"
_PLAIN = r'"[ !#-\[\]-~]*"'
MAP_ENTRY = rf"{_PLAIN}{_WS}:{_WS}({_PLAIN}|-?(0|[1-9][0-9]*))"
MAP_GRAMMAR = re.compile(
    rf"^{_WS}\{{{_WS}({MAP_ENTRY}{_WS}(,{_WS}{MAP_ENTRY}{_WS})*)?\}}{_WS}$", re.ASCII
)
# A Service name (a DNS-1035 label), optionally ":" and a port: a number 1..65535 without a
# leading zero, or an IANA port name, which has a letter (both rules are _port's).
SELECTOR = re.compile(
    r"^([a-z]([-a-z0-9]{0,61}[a-z0-9])?)(:([1-9][0-9]{0,4}|[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?))?$",
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
            # Escaped as JSON (a line break cannot break the Event), but not to ASCII: the
            # admission policy quotes a value so, and cannot tell a character's code point.
            f"{key}={json.dumps(shown, ensure_ascii=False)} is not a valid {noun}: "
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
    """The JSON object ``{"ws": "1h", "api:8080": 30}`` of ``key``.

    ``routes`` maps each Service the Ingress routes to to the ports it names
    for it (numbers or names, as written). The whole value is refused
    (``Invalid``) when it is longer than 16 KiB, outside MAP_GRAMMAR, holds
    more than 64 entries or a key twice (JSON would keep the last; CEL sees
    both); an entry is refused on its own when its key is not a Service name
    or ``name:port`` this Ingress routes to, or its value is not a duration
    within bounds. A whole number is read as written, like a string.
    """
    stays = "what it asked before stays"
    if len(raw) > MAX_MAP_BYTES:
        raise Invalid(
            f"{key} is {len(raw)} characters long, more than the {MAX_MAP_BYTES} accepted; {stays}"
        )
    if not MAP_GRAMMAR.fullmatch(raw):
        raise Invalid(
            f'{key} is not a JSON object of Service (or "name:port") to timeout, such as '
            f'{{"ws": "1h", "api:8080": 30}}, in printable ASCII without escapes; {stays}'
        )
    # The grammar is plain JSON without escapes: decoding cannot fail, and yields the text
    # as written (numbers too: parse_int keeps their digits, whatever their length).
    pairs: list[tuple[str, str]] = json.loads(raw, object_pairs_hook=list, parse_int=str)
    if len(pairs) > MAX_MAP_ENTRIES:
        raise Invalid(
            f"{key} has {len(pairs)} entries, more than the {MAX_MAP_ENTRIES} accepted; {stays}"
        )
    selectors = [selector for selector, _ in pairs]
    twice = [s for s in selectors if selectors.count(s) > 1]
    if twice:
        raise Invalid(f'{key} names "{_brief(twice[0], 70)}" more than once; {stays}')
    values: list[tuple[str, int]] = []
    invalid: set[str] = set()
    refused: list[str] = []
    for selector, asked in sorted(pairs):
        entry = f'{key}["{_brief(selector, 70)}"]'
        why = _unrouted(selector, routes)
        if why is not None:
            refused.append(f"{entry} {why}; that entry is ignored")
            continue
        try:
            values.append(
                (selector, parse_duration(asked, key=entry, minimum=minimum, maximum=maximum))
            )
        except Invalid as e:
            invalid.add(selector)
            refused.append(f"{e}; {stays}")
    return PerService(tuple(values), frozenset(invalid), tuple(refused))


def _brief(text: str, most: int) -> str:
    return text if len(text) <= most else text[:most] + "..."


def _unrouted(selector: str, routes: Mapping[str, frozenset[str]]) -> str | None:
    """Why the map entry ``selector`` names nothing this Ingress routes to, or None."""
    match = SELECTOR.fullmatch(selector)
    if match is None or not _port(match.group(4)):
        return 'is not a Service name or "name:port"'
    service, port = match.group(1), match.group(4)
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


def _port(port: str | None) -> bool:
    """Whether a selector's port (None: none) is one: a number is 1..65535 without a
    leading zero, a name has a letter."""
    if port is None:
        return True
    if port.isdigit():
        return not port.startswith("0") and int(port) <= 65535
    return re.search("[a-z]", port) is not None


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
