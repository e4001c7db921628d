"""A faithful local fake of the GCP Compute v1 API: backend services and their operations.

Owns the loopback HTTP server google-api-python-client talks to, its state, fault injection
and the request log; runnable as ``python -m tests.fakes.compute --port 8089 --seed demo``.

Semantics (see the project's notes on Compute); "clock" is the injected ``clock``:
- Checks run in this order: outage (``down()``), credentials (``token``), injected faults,
  routing, permission (``deny``), rate limits, then the request itself.
- ``token``: when set, every request must carry ``Authorization: Bearer <token>``; no header
  gets 401 ``required`` ("Login Required."), a wrong one 401 ``authError`` ("Invalid
  Credentials"), both with ``location: Authorization`` and ``WWW-Authenticate: Bearer``.
  ``Call.auth`` records the scheme of the header a request carried (never the credential).
- ``fingerprint`` is checked when a write is accepted (stale -> 412 ``conditionNotMet``);
  a write without one is accepted and stays visible in ``calls``.
- A write is applied when its operation becomes DONE, ``op_delay`` seconds (on the clock)
  after it was accepted; until then a GET shows the old state and another write to the
  same backend service gets 400 ``resourceNotReady``, as GCP answers.
- ``requestId`` repeats within ``request_id_ttl`` seconds (clock) of the first acceptance
  return the first operation and are never applied again; later ones are new requests.
- ``operations.wait`` returns at DONE or after ``wait_max`` real seconds, possibly RUNNING.
- Rate limits, per minute on the clock, answer 403 ``rateLimitExceeded``:
  ``write_rate_per_minute`` counts patch/update, ``read_rate_per_minute`` counts get, list
  and operations get/wait. Rejected requests do not count.
- ``list`` pages hold at most ``maxResults`` items (at most ``page_cap`` when set) and carry
  an opaque ``nextPageToken`` valid for ``page_token_ttl`` seconds (clock), only for the
  same list (scope, filter, orderBy); a stale, foreign or forged token gets 400 ``invalid``.
- ``latency`` is slept after the request was processed, so a client that times out has
  still had its write accepted (the case ``requestId`` exists for).
- ``flaky(fraction)``: that share of requests fails at random (5xx or a rate limit).
- ``down()`` until ``up()``: every request gets 503 ``backendError`` and changes nothing;
  ``down(reset=True)`` resets the connection instead of answering (logged with status 0).
- ``calls`` logs every request (unless ``keep_calls=False``); ``stats()`` counts them by
  (operation, status) either way, cheaply.
- ``connectionDraining.drainingTimeoutSec`` accepts 0 to 3600 only (400 otherwise), and
  ``connectionDraining`` holds no other field; a merge patch of it leaves the rest alone.
- Stricter than GCP where GCP is lenient in ways no client should rely on: ``timeoutSec``
  and ``drainingTimeoutSec`` must be JSON integers, and ``filter``/``orderBy`` on list are
  refused with 400.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import hashlib
import http
import itertools
import json
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from googleapiclient.discovery_cache import get_static_doc

JSON = dict[str, Any]
Clock = Callable[[], float]

MAX_TIMEOUT_SEC = 2**31 - 1
MAX_DRAINING_SEC = 3600
DEFAULT_TIMEOUT_SEC = 30
MAX_RESULTS = 500
DEFAULT_PAGE_TOKEN_TTL = 300.0
DEFAULT_REQUEST_ID_TTL = 3600.0
DEMO_CLUSTER_UID = "0e20ca25204f6195"

# Fields the server owns: a client may send them back, but they never change the resource.
_OUTPUT_ONLY = frozenset({"kind", "id", "creationTimestamp", "selfLink", "region", "fingerprint"})
_DEFAULT_REASONS = {
    400: "invalid",
    403: "forbidden",
    404: "notFound",
    409: "conflict",
    412: "conditionNotMet",
    429: "rateLimitExceeded",
}
_LOGIN_HELP = (
    "Expected OAuth 2 access token, login cookie or other valid authentication credential. "
    "See https://developers.google.com/identity/sign-in/web/devconsole-project."
)
_FLAKY = (
    (500, "backendError"),
    (503, "backendError"),
    (403, "rateLimitExceeded"),
    (429, "rateLimitExceeded"),
)
_WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'}
_NEG_DESCRIPTIVE_LABEL = 38  # ingress-gce: 63 - "k8s1" - uid8 - hash8 - hyphens
_GCE_NAME_LIMIT = 62  # ingress-gce truncates here and appends "0"


def _backend_service_fields() -> frozenset[str]:
    """The BackendService property names, from the discovery document the client uses."""
    doc = get_static_doc("compute", "v1")
    if doc is None:
        raise RuntimeError("google-api-python-client ships no static compute v1 document")
    return frozenset(json.loads(doc)["schemas"]["BackendService"]["properties"])


_BACKEND_FIELDS = _backend_service_fields()


# --- ingress-gce naming -------------------------------------------------------------------


def _trim_fields_evenly(limit: int, *fields: str) -> list[str]:
    """ingress-gce's TrimFieldsEvenly: shorten longer fields more, keep the total <= limit."""
    total = sum(len(f) for f in fields)
    if total <= limit:
        return list(fields)
    excess = total - limit
    lengths = [len(f) - len(f) * excess // total - 1 for f in fields]
    for i in range(limit - sum(lengths)):
        lengths[i] += 1
    return [f[:n] for f, n in zip(fields, lengths, strict=True)]


def instance_group_backend_name(node_port: int, cluster_uid: str) -> str:
    """Name ingress-gce gives the instance-group backend service of one NodePort."""
    name = f"k8s-be-{node_port}--{cluster_uid}"
    return name if len(name) <= _GCE_NAME_LIMIT else name[:_GCE_NAME_LIMIT] + "0"


def neg_backend_name(
    namespace: str, service: str, port: int, cluster_uid: str, *, regional: bool = False
) -> str:
    """Name ingress-gce gives a NEG backend service (``regional``: regional external LB)."""
    uid8 = cluster_uid[:8]
    port_str = str(port)
    digest = hashlib.sha256(f"{uid8};{namespace};{service};{port_str}".encode()).hexdigest()
    limit = _NEG_DESCRIPTIVE_LABEL - (2 if regional else 0)
    ns, svc, prt = _trim_fields_evenly(limit, namespace, service, port_str)
    infix = "e-" if regional else ""
    return f"k8s1-{uid8}-{infix}{ns}-{svc}-{prt}-{digest[:8]}"


# --- data ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One request the fake answered (``status`` 0: the connection was reset instead)."""

    method: str
    path: str
    query: dict[str, str]
    body: JSON | None
    status: int
    # The scheme of the request's Authorization header ("Bearer"), None without one.
    auth: str | None = None
    peer: int = 0  # the client's TCP port: tells clients apart (see tests/ground/proxy.py)
    at: float = 0.0  # time.monotonic() when answered


class ApiError(Exception):
    """An error answered with a Compute-shaped body."""

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        domain: str = "global",
        *,
        detail: str | None = None,
        location: str | None = None,
        status_name: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.domain = domain
        self.detail = detail  # errors[0].message when it differs from the top-level message
        self.location = location  # errors[0].location, with locationType "header"
        self.status_name = status_name  # error.status, e.g. UNAUTHENTICATED
        self.headers = headers or {}

    def body(self) -> JSON:
        detail: JSON = {
            "message": self.detail or self.message,
            "domain": self.domain,
            "reason": self.reason,
        }
        if self.location is not None:
            detail.update(location=self.location, locationType="header")
        error: JSON = {"code": self.status, "message": self.message, "errors": [detail]}
        if self.status_name is not None:
            error["status"] = self.status_name
        return {"error": error}


@dataclass(frozen=True)
class _Response:
    status: int
    payload: JSON
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Fault:
    method: str
    path_substring: str
    status: int
    remaining: int
    reason: str


@dataclass(frozen=True)
class _Failure:
    code: str
    message: str
    http_status: int


_Key = tuple[str | None, str]  # (region or None for global, name)


@dataclass
class _Operation:
    json: JSON
    target: _Key
    accepted_at: float
    done_at: float
    apply: Callable[[JSON], JSON]
    failure: _Failure | None = None


@dataclass(frozen=True)
class _PageToken:
    list_key: tuple[str | None, str, str]  # (region, filter, orderBy): the list it belongs to
    after: str  # the last name of the page it follows
    issued_at: float


_READ_QUOTA = ("Read requests", "Read requests per minute")
_WRITE_QUOTA = ("Queries", "Queries per minute")


def _operation_label(method: str, path: str) -> str:
    """What ``stats()`` calls a request: the API method, scope left out; "other" if none."""
    m = re.fullmatch(
        r"/compute/v1/projects/[^/]+/(?:global|regions/[^/]+)/"
        r"(backendServices|operations)(/[^/]+)?(/wait)?",
        path,
    )
    if m is None:
        return "other"
    collection, name, wait = m.groups()
    if collection == "operations" and name is not None:
        if wait is not None and method == "POST":
            return "operations.wait"
        if wait is None and method == "GET":
            return "operations.get"
    elif collection == "backendServices" and wait is None:
        if name is None:
            return "list" if method == "GET" else "other"
        return {"GET": "get", "PATCH": "patch", "PUT": "update"}.get(method, "other")
    return "other"


def _now_rfc3339() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _merge_patch(target: JSON, patch: JSON) -> JSON:
    """RFC 7396 JSON merge patch: objects merge, null deletes, anything else replaces."""
    result = copy.deepcopy(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _merge_patch(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def _replace(current: JSON, changes: JSON) -> JSON:
    """PUT: everything the server does not own comes from the body; the rest defaults."""
    kept = {k: current[k] for k in _OUTPUT_ONLY | {"name"} if k in current}
    defaults = {"timeoutSec": DEFAULT_TIMEOUT_SEC, "connectionDraining": {"drainingTimeoutSec": 0}}
    return {**defaults, **copy.deepcopy(changes), **kept}


# --- the fake -----------------------------------------------------------------------------


class ComputeFake:
    """Compute v1 backend services and operations on a loopback HTTP server."""

    def __init__(
        self,
        project: str = "demo-project",
        *,
        op_delay: float = 0.0,
        wait_max: float = 0.2,
        write_rate_per_minute: int | None = None,
        read_rate_per_minute: int | None = None,
        token: str | None = None,
        page_cap: int | None = None,
        page_token_ttl: float = DEFAULT_PAGE_TOKEN_TTL,
        request_id_ttl: float = DEFAULT_REQUEST_ID_TTL,
        latency: float = 0.0,
        keep_calls: bool = True,
        clock: Clock = time.monotonic,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if page_cap is not None and page_cap < 1:
            raise ValueError(f"page_cap must be at least 1, not {page_cap}")
        self.project = project
        self.op_delay = op_delay
        self.wait_max = wait_max
        self.write_rate_per_minute = write_rate_per_minute
        self.read_rate_per_minute = read_rate_per_minute
        self.token = token
        self.page_cap = page_cap
        self.page_token_ttl = page_token_ttl
        self.request_id_ttl = request_id_ttl
        self.latency = latency
        self.keep_calls = keep_calls
        self._clock = clock
        self._cond = threading.Condition()
        self._backends: dict[_Key, JSON] = {}
        self._ops: dict[_Key, _Operation] = {}
        self._pending: list[_Operation] = []
        self._request_ids: dict[str, _Operation] = {}
        self._faults: list[_Fault] = []
        self._flaky = 0.0
        self._flaky_rng = random.Random(0)
        self._denied: dict[str, bool] = {}
        self._fail_next: deque[_Failure] = deque()
        self._writes: deque[float] = deque()
        self._reads: deque[float] = deque()
        self._page_tokens: dict[str, _PageToken] = {}
        self._outage: str | None = None  # None, "503" or "reset"
        self._calls: list[Call] = []
        self._stats: Counter[tuple[str, int]] = Counter()
        self._by_method: Counter[str] = Counter()
        self._seq = itertools.count(1)
        self._conns: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._server = _Server((host, port), _Handler, self)
        self.url = f"http://{host}:{self._server.server_address[1]}/compute/v1/"

    # lifecycle

    def start(self) -> ComputeFake:
        # A short poll interval keeps stop() quick; serve_forever checks for shutdown only then.
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.02,), name="compute-fake", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop open keep-alive connections, so clients see a dead server."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._thread is not None:
            self._server.shutdown()
        with self._cond:
            conns = list(self._conns)
            self._cond.notify_all()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ComputeFake:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # seeding and inspection

    def add_backend(
        self,
        name: str,
        *,
        region: str | None = None,
        service: str = "default/web",
        port: str = "80",
        timeout: int = DEFAULT_TIMEOUT_SEC,
        description: str | None = None,
    ) -> JSON:
        """Create a backend service the way ingress-gce leaves it; returns a copy."""
        if description is None:
            description = json.dumps(
                {
                    "kubernetes.io/service-name": service,
                    "kubernetes.io/service-port": port,
                    "x-features": [],
                },
                separators=(",", ":"),
            )
        ig = re.match(r"k8s-be-(\d+)--", name)
        zone = f"{region or 'us-central1'}-a"
        zone_link = f"{self.url}projects/{self.project}/zones/{zone}"
        if ig:
            group = f"{zone_link}/instanceGroups/k8s-ig--{name.rsplit('--', 1)[1]}"
            backend: JSON = {"group": group, "balancingMode": "RATE", "maxRatePerInstance": 1}
            node_port, port_name = int(ig.group(1)), f"port{ig.group(1)}"
        else:
            group = f"{zone_link}/networkEndpointGroups/{name}"
            backend = {"group": group, "balancingMode": "RATE", "maxRatePerEndpoint": 1}
            node_port, port_name = 80, "http"
        backend["capacityScaler"] = 1
        if region is None:
            scheme = "EXTERNAL"
        else:
            external = re.match(r"k8s1-[0-9a-f]+-e-", name)
            scheme = "EXTERNAL_MANAGED" if external else "INTERNAL_MANAGED"
        with self._cond:
            key = (region, name)
            if key in self._backends:
                raise ValueError(f"backend service {name!r} exists")
            resource: JSON = {
                "kind": "compute#backendService",
                "id": str(4_000_000_000_000_000_000 + next(self._seq)),
                "creationTimestamp": _now_rfc3339(),
                "name": name,
                "description": description,
                "selfLink": self._link(region, "backendServices", name),
                "backends": [backend],
                "healthChecks": [self._link(region, "healthChecks", name)],
                "timeoutSec": timeout,
                "port": node_port,
                "portName": port_name,
                "protocol": "HTTP",
                "fingerprint": self._fingerprint(),
                "enableCDN": False,
                "sessionAffinity": "NONE",
                "affinityCookieTtlSec": 0,
                "loadBalancingScheme": scheme,
                "connectionDraining": {"drainingTimeoutSec": 0},
            }
            if region is not None:
                resource["region"] = self._scope_link(region)
            self._backends[key] = resource
            return copy.deepcopy(resource)

    def backend(self, name: str, region: str | None = None) -> JSON:
        """A copy of the current state; KeyError if there is no such backend service."""
        with self._cond:
            self._advance()
            return copy.deepcopy(self._backends[(region, name)])

    def set_timeout_out_of_band(self, name: str, seconds: int, region: str | None = None) -> None:
        """Change timeoutSec as the console or gcloud would: at once, with a new fingerprint."""
        with self._cond:
            resource = self._backends[(region, name)]
            resource["timeoutSec"] = seconds
            resource["fingerprint"] = self._fingerprint()

    def set_draining_out_of_band(self, name: str, seconds: int, region: str | None = None) -> None:
        """Change connectionDraining.drainingTimeoutSec as a BackendConfig or gcloud would."""
        with self._cond:
            resource = self._backends[(region, name)]
            resource["connectionDraining"] = {"drainingTimeoutSec": seconds}
            resource["fingerprint"] = self._fingerprint()

    def delete_backend(self, name: str, region: str | None = None) -> None:
        with self._cond:
            del self._backends[(region, name)]

    # fault injection

    def inject(
        self,
        method: str,
        path_substring: str,
        status: int,
        times: int = 1,
        reason: str | None = None,
    ) -> None:
        """Fail the next ``times`` requests of ``method`` whose path contains the substring."""
        if reason is None:
            reason = _DEFAULT_REASONS.get(status, "backendError" if status >= 500 else "invalid")
        with self._cond:
            self._faults.append(_Fault(method.upper(), path_substring, status, times, reason))

    def flaky(self, fraction: float, *, seed: int = 0) -> None:
        """Fail about ``fraction`` of all requests (0 stops it), before they change
        anything: 500 or 503 ``backendError``, 403 ``rateLimitExceeded`` or 429, alike."""
        if not 0 <= fraction <= 1:
            raise ValueError(f"fraction must be within 0..1, not {fraction}")
        with self._cond:
            self._flaky, self._flaky_rng = fraction, random.Random(seed)

    def deny(self, name: str, *, reads: bool = False) -> None:
        """Answer 403 ``forbidden`` to writes (and with ``reads`` to gets) of that name."""
        with self._cond:
            self._denied[name] = reads

    def allow(self, name: str) -> None:
        with self._cond:
            self._denied.pop(name, None)

    def fail_next_operation(
        self, code: str = "INTERNAL_ERROR", message: str = "Internal error.", http_status: int = 500
    ) -> None:
        """The next accepted write finishes DONE with this error and changes nothing."""
        with self._cond:
            self._fail_next.append(_Failure(code, message, http_status))

    def down(self, *, reset: bool = False) -> None:
        """An outage until ``up()``: answer every request 503 ``backendError``, or with
        ``reset`` reset its connection without an answer. Nothing is processed meanwhile."""
        with self._cond:
            self._outage = "reset" if reset else "503"

    def up(self) -> None:
        with self._cond:
            self._outage = None

    def pending_operations(self) -> int:
        """Accepted writes whose operation is not DONE yet."""
        with self._cond:
            self._advance()
            return len(self._pending)

    @property
    def is_down(self) -> bool:
        with self._cond:
            return self._outage is not None

    # request log

    @property
    def calls(self) -> list[Call]:
        """Every request answered since the start or ``clear_calls()``, oldest first."""
        with self._cond:
            if not self.keep_calls:
                raise RuntimeError("keep_calls=False: this ComputeFake logs no calls; see stats()")
            return list(self._calls)

    def calls_since(self, mark: int) -> list[Call]:
        """The requests answered after the first ``mark`` (see ``calls``): a copy of
        those alone, so that a caller looking often pays for the new ones only."""
        with self._cond:
            if not self.keep_calls:
                raise RuntimeError("keep_calls=False: this ComputeFake logs no calls; see stats()")
            return self._calls[mark:]

    def call_count(self) -> int:
        """How many requests ``calls`` holds: a mark for ``calls_since``."""
        with self._cond:
            return len(self._calls)

    def count(self, method: str, path_contains: str = "") -> int:
        """Requests with this HTTP method (and path substring); without a substring this
        reads a counter, so it works with ``keep_calls=False`` too."""
        if not path_contains:
            with self._cond:
                return self._by_method[method.upper()]
        return sum(1 for c in self.calls if c.method == method.upper() and path_contains in c.path)

    def stats(self) -> dict[tuple[str, int], int]:
        """Requests by (operation, status), e.g. ``{("get", 200): 3, ("patch", 412): 1}``.

        Operations: ``get``, ``list``, ``patch``, ``update``, ``operations.get``,
        ``operations.wait`` (global and regional alike) and ``other`` for anything else.
        Status 0 counts connections reset by ``down(reset=True)``.
        """
        with self._cond:
            return dict(self._stats)

    def clear_calls(self) -> None:
        """Forget the log and the counters behind ``stats()`` and ``count()``."""
        with self._cond:
            self._calls.clear()
            self._stats.clear()
            self._by_method.clear()

    def clear_faults(self) -> None:
        """Drop the faults ``inject`` queued that have not fired yet, and stop ``flaky``."""
        with self._cond:
            self._faults.clear()
            self._flaky = 0.0

    def writes_without_fingerprint(self) -> list[Call]:
        """Accepted writes that carried no fingerprint: GCP takes them, the controller must not."""
        return [
            c
            for c in self.calls
            if c.method in ("PATCH", "PUT")
            and c.status == 200
            and "fingerprint" not in (c.body or {})
        ]

    # internals: state

    def _scope_link(self, region: str | None) -> str:
        scope = "global" if region is None else f"regions/{region}"
        return f"{self.url}projects/{self.project}/{scope}"

    def _path(self, region: str | None, collection: str, name: str) -> str:
        """The resource name GCP quotes in messages: ``projects/p/global/...``."""
        scope = "global" if region is None else f"regions/{region}"
        return f"projects/{self.project}/{scope}/{collection}/{name}"

    def _link(self, region: str | None, collection: str, name: str) -> str:
        return f"{self.url}{self._path(region, collection, name)}"

    def _fingerprint(self) -> str:
        seed = f"fingerprint:{next(self._seq)}".encode()
        return base64.b64encode(hashlib.sha256(seed).digest()[:8]).decode()

    def _advance(self) -> None:
        """Finish every operation whose time has come (caller holds the lock)."""
        now = self._clock()
        still: list[_Operation] = []
        for op in self._pending:
            if now >= op.done_at:
                self._finish(op)
            else:
                still.append(op)
        if len(still) != len(self._pending):
            self._pending = still
            self._cond.notify_all()

    def _finish(self, op: _Operation) -> None:
        failure = op.failure
        current = self._backends.get(op.target)
        if failure is None and current is None:
            failure = _Failure(
                "RESOURCE_NOT_FOUND",
                f"The resource '{op.json['targetLink']}' was not found",
                404,
            )
        if failure is None and current is not None:
            updated = op.apply(current)
            updated["fingerprint"] = self._fingerprint()
            self._backends[op.target] = updated
        op.json.update(status="DONE", progress=100, endTime=_now_rfc3339())
        if failure is not None:
            op.json["error"] = {"errors": [{"code": failure.code, "message": failure.message}]}
            op.json["httpErrorStatusCode"] = failure.http_status
            op.json["httpErrorMessage"] = http.HTTPStatus(failure.http_status).phrase.upper()

    # internals: requests

    def _handle(
        self,
        method: str,
        raw_path: str,
        raw_body: bytes,
        authorization: str | None = None,
        peer: int = 0,
    ) -> _Response | None:
        """Answer one request; None: reset the connection instead of answering."""
        parts = urlsplit(raw_path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        auth = None if authorization is None else authorization.strip().partition(" ")[0]
        body: JSON | None = None
        try:
            parsed = json.loads(raw_body) if raw_body else None
        except ValueError:
            parsed = raw_body.decode("utf-8", "replace")
        if isinstance(parsed, dict):
            body = parsed
        with self._cond:
            outage = self._outage
        if outage == "reset":
            self._record(Call(method, parts.path, query, body, 0, auth, peer, time.monotonic()))
            return None
        try:
            if outage is not None:
                raise ApiError(503, "backendError", "The service is currently unavailable.")
            self._authenticate(authorization)
            if parsed is not None and body is None:
                raise ApiError(400, "parseError", "Invalid JSON payload received.")
            status, payload = self._route(method, parts.path, query, body)
            response = _Response(status, payload)
        except ApiError as err:
            response = _Response(err.status, err.body(), err.headers)
        self._record(
            Call(method, parts.path, query, body, response.status, auth, peer, time.monotonic())
        )
        if self.latency > 0:
            self._stopping.wait(self.latency)
        return response

    def _record(self, call: Call) -> None:
        with self._cond:
            self._stats[(_operation_label(call.method, call.path), call.status)] += 1
            self._by_method[call.method] += 1
            if self.keep_calls:
                self._calls.append(call)

    def _authenticate(self, authorization: str | None) -> None:
        token = self.token
        if token is None:
            return
        if authorization is None:
            raise ApiError(
                401,
                "required",
                f"Request is missing required authentication credential. {_LOGIN_HELP}",
                detail="Login Required.",
                location="Authorization",
                status_name="UNAUTHENTICATED",
                headers=_WWW_AUTHENTICATE,
            )
        scheme, _, credential = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or credential.strip() != token:
            raise ApiError(
                401,
                "authError",
                f"Request had invalid authentication credentials. {_LOGIN_HELP}",
                detail="Invalid Credentials",
                location="Authorization",
                status_name="UNAUTHENTICATED",
                headers=_WWW_AUTHENTICATE,
            )

    def _route(
        self, method: str, path: str, query: dict[str, str], body: JSON | None
    ) -> tuple[int, JSON]:
        with self._cond:
            self._advance()
            for fault in self._faults:
                if fault.method == method and fault.path_substring in path:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    message = f"Injected {fault.status} ({fault.reason})."
                    raise ApiError(fault.status, fault.reason, message)
            if self._flaky and self._flaky_rng.random() < self._flaky:
                status, reason = self._flaky_rng.choice(_FLAKY)
                raise ApiError(status, reason, f"Flaky {status} ({reason}).")
            m = re.fullmatch(
                r"/compute/v1/projects/([^/]+)/(global|regions/([^/]+))/"
                r"(backendServices|operations)(?:/([^/]+))?(/wait)?",
                path,
            )
            if m is None:
                raise ApiError(404, "notFound", f"The requested URL {path} was not found.")
            project, _, region, collection, name, wait = m.groups()
            if project != self.project:
                raise ApiError(404, "notFound", f"The resource 'projects/{project}' was not found")
            if collection == "operations":
                if name is not None and (method, wait) in (("GET", None), ("POST", "/wait")):
                    self._check_rate(self._reads, self.read_rate_per_minute, _READ_QUOTA)
                    return 200, self._operation(region, name, wait=wait is not None)
            elif wait is None and name is None and method == "GET":
                self._check_rate(self._reads, self.read_rate_per_minute, _READ_QUOTA)
                return 200, self._list(region, query)
            elif wait is None and name is not None and method == "GET":
                self._check_permission(region, name, "get", write=False)
                self._check_rate(self._reads, self.read_rate_per_minute, _READ_QUOTA)
                return 200, copy.deepcopy(self._get(region, name))
            elif wait is None and name is not None and method in ("PATCH", "PUT"):
                return 200, self._write(method, region, name, query, body)
            raise ApiError(404, "notFound", f"The requested URL {path} was not found.")

    def _get(self, region: str | None, name: str) -> JSON:
        resource = self._backends.get((region, name))
        if resource is None:
            link = self._path(region, "backendServices", name)
            raise ApiError(404, "notFound", f"The resource '{link}' was not found")
        return resource

    def _check_permission(self, region: str | None, name: str, verb: str, *, write: bool) -> None:
        if name in self._denied and (write or self._denied[name]):
            collection = "backendServices" if region is None else "regionBackendServices"
            link = self._path(region, "backendServices", name)
            raise ApiError(
                403, "forbidden", f"Required 'compute.{collection}.{verb}' permission for '{link}'"
            )

    def _list(self, region: str | None, query: dict[str, str]) -> JSON:
        for unsupported in ("filter", "orderBy"):
            if query.get(unsupported):
                raise ApiError(400, "invalid", f"The Compute fake does not support {unsupported}.")
        raw_max = query.get("maxResults", "")
        try:
            max_results = int(raw_max) if raw_max else MAX_RESULTS
        except ValueError:
            raise ApiError(
                400, "invalid", f"Invalid value for field 'maxResults': '{raw_max}'."
            ) from None
        if not 0 <= max_results <= MAX_RESULTS:
            raise ApiError(
                400,
                "invalid",
                f"Invalid value for field 'maxResults': '{max_results}'. "
                f"Must be less than or equal to {MAX_RESULTS}",
            )
        now = self._clock()
        self._forget_page_tokens(now)
        list_key = (region, query.get("filter", ""), query.get("orderBy", ""))
        after = ""
        if token := query.get("pageToken"):
            issued = self._page_tokens.get(token)
            if issued is None or issued.list_key != list_key:
                raise ApiError(
                    400,
                    "invalid",
                    f"Invalid value for field 'pageToken': '{token}'. Invalid page token.",
                )
            after = issued.after
        names = sorted(n for (r, n) in self._backends if r == region and n > after)
        page_size = max_results or MAX_RESULTS
        if self.page_cap is not None:
            page_size = min(page_size, self.page_cap)
        page = names[:page_size]
        scope = "global" if region is None else f"regions/{region}"
        result: JSON = {
            "kind": "compute#backendServiceList",
            "id": f"projects/{self.project}/{scope}/backendServices",
            "selfLink": f"{self._scope_link(region)}/backendServices",
        }
        if page:
            result["items"] = [copy.deepcopy(self._backends[(region, n)]) for n in page]
        if len(names) > len(page):
            next_token = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            self._page_tokens[next_token] = _PageToken(list_key, page[-1], now)
            result["nextPageToken"] = next_token
        return result

    def _forget_page_tokens(self, now: float) -> None:
        """Drop tokens past ``page_token_ttl``; the dict is in issue order."""
        for token, issued in list(self._page_tokens.items()):
            if now - issued.issued_at < self.page_token_ttl:
                break
            del self._page_tokens[token]

    def _write(
        self,
        method: str,
        region: str | None,
        name: str,
        query: dict[str, str],
        body: JSON | None,
    ) -> JSON:
        self._check_permission(region, name, "update", write=True)
        self._check_rate(self._writes, self.write_rate_per_minute, _WRITE_QUOTA)
        now = self._clock()
        self._forget_request_ids(now)
        request_id = query.get("requestId")
        if request_id is not None:
            try:
                parsed_id = uuid.UUID(request_id)
            except ValueError:
                parsed_id = None
            if parsed_id is None or parsed_id.int == 0:
                raise ApiError(
                    400,
                    "invalid",
                    f"Invalid value for field 'requestId': '{request_id}'. "
                    "The request ID must be a valid UUID with the exception that zero UUID "
                    "is not supported (00000000-0000-0000-0000-000000000000).",
                )
            if request_id in self._request_ids:
                return copy.deepcopy(self._request_ids[request_id].json)
        current = self._get(region, name)
        if body is None:
            raise ApiError(400, "required", "Required field 'resource' not specified")
        self._validate(name, body)
        if any(op.target == (region, name) for op in self._pending):
            link = self._path(region, "backendServices", name)
            raise ApiError(400, "resourceNotReady", f"The resource '{link}' is not ready")
        if "fingerprint" in body and body["fingerprint"] != current["fingerprint"]:
            raise ApiError(412, "conditionNotMet", "Invalid fingerprint.")
        changes = {k: v for k, v in body.items() if k not in _OUTPUT_ONLY}

        def apply(cur: JSON) -> JSON:
            return _merge_patch(cur, changes) if method == "PATCH" else _replace(cur, changes)

        op = self._new_operation(region, current, "patch" if method == "PATCH" else "update")
        operation = _Operation(op, (region, name), now, now + self.op_delay, apply)
        if self._fail_next:
            operation.failure = self._fail_next.popleft()
        self._ops[(region, op["name"])] = operation
        self._pending.append(operation)
        if request_id is not None:
            self._request_ids[request_id] = operation
        self._advance()
        return copy.deepcopy(op)

    def _validate(self, name: str, body: JSON) -> None:
        unknown = sorted(set(body) - _BACKEND_FIELDS)
        if unknown:
            raise ApiError(
                400,
                "invalid",
                f"Invalid JSON payload received. Unknown name \"{unknown[0]}\" at 'resource': "
                "Cannot find field.",
            )
        if "name" in body and body["name"] != name:
            raise ApiError(
                400, "invalid", f"Invalid value for field 'resource.name': '{body['name']}'."
            )
        timeout = body.get("timeoutSec")
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int)
            or not 1 <= timeout <= MAX_TIMEOUT_SEC
        ):
            raise ApiError(
                400,
                "invalid",
                f"Invalid value for field 'resource.timeoutSec': '{timeout}'. "
                f"Timeout sec must be between 1 and {MAX_TIMEOUT_SEC}.",
            )
        if "connectionDraining" in body:
            self._validate_draining(body["connectionDraining"])

    def _validate_draining(self, draining: object) -> None:
        """``connectionDraining``: an object whose only field, ``drainingTimeoutSec``, is a
        JSON integer from 0 to 3600 (null, in a merge patch, removes it: back to 0)."""
        if draining is None:
            return
        if not isinstance(draining, dict):
            raise ApiError(
                400,
                "invalid",
                "Invalid JSON payload received. Invalid value at 'resource.connection_draining'.",
            )
        unknown = sorted(set(draining) - {"drainingTimeoutSec"})
        if unknown:
            raise ApiError(
                400,
                "invalid",
                f'Invalid JSON payload received. Unknown name "{unknown[0]}" at '
                "'resource.connection_draining': Cannot find field.",
            )
        seconds = draining.get("drainingTimeoutSec")
        if seconds is not None and (
            isinstance(seconds, bool)
            or not isinstance(seconds, int)
            or not 0 <= seconds <= MAX_DRAINING_SEC
        ):
            raise ApiError(
                400,
                "invalid",
                "Invalid value for field 'resource.connectionDraining.drainingTimeoutSec': "
                f"'{seconds}'. Must be between 0 and {MAX_DRAINING_SEC}.",
            )

    def _forget_request_ids(self, now: float) -> None:
        """Drop requestIds past ``request_id_ttl``; the dict is in acceptance order."""
        for request_id, op in list(self._request_ids.items()):
            if now - op.accepted_at < self.request_id_ttl:
                break
            del self._request_ids[request_id]

    def _check_rate(
        self, window: deque[float], per_minute: int | None, quota: tuple[str, str]
    ) -> None:
        """Count one request in ``window``, or refuse it if a minute already holds enough."""
        if per_minute is None:
            return
        now = self._clock()
        while window and window[0] <= now - 60.0:
            window.popleft()
        if len(window) >= per_minute:
            metric, limit = quota
            raise ApiError(
                403,
                "rateLimitExceeded",
                f"Quota exceeded for quota metric '{metric}' and limit '{limit}' "
                f"of service 'compute.googleapis.com' for consumer '{self.project}'.",
                domain="usageLimits",
            )
        window.append(now)

    def _new_operation(self, region: str | None, target: JSON, op_type: str) -> JSON:
        seq = next(self._seq)
        suffix = hashlib.sha256(f"operation:{seq}".encode()).hexdigest()[:13]
        name = f"operation-{1_700_000_000_000 + seq}-{suffix}"
        now = _now_rfc3339()
        op: JSON = {
            "kind": "compute#operation",
            "id": str(7_000_000_000_000_000_000 + seq),
            "name": name,
            "operationType": op_type,
            "targetLink": target["selfLink"],
            "targetId": target["id"],
            "status": "RUNNING",
            "user": "anonymous",
            "progress": 0,
            "insertTime": now,
            "startTime": now,
            "selfLink": self._link(region, "operations", name),
        }
        if region is not None:
            op["region"] = self._scope_link(region)
        return op

    def _operation(self, region: str | None, name: str, *, wait: bool) -> JSON:
        op = self._ops.get((region, name))
        if op is None:
            link = self._path(region, "operations", name)
            raise ApiError(404, "notFound", f"The resource '{link}' was not found")
        if wait:
            # Real seconds: GCP's wait is a best-effort long poll, and polling lets a test
            # advance a fake clock from its own thread while a wait is in progress.
            deadline = time.monotonic() + self.wait_max
            while op.json["status"] != "DONE" and not self._stopping.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.01))
                self._advance()
        return copy.deepcopy(op.json)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], fake: ComputeFake
    ) -> None:
        self.fake = fake
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httplib2 expects
    # Headers and body go out in two writes; with Nagle and delayed ACKs each
    # response would wait ~40 ms, which no real Compute endpoint adds.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.fake._cond:
            self.server.fake._conns.add(self.connection)

    def handle(self) -> None:
        # A client that reset its connection (one that timed out before a late answer
        # reached it) is gone; that is no error of the fake's to print.
        with contextlib.suppress(ConnectionError):
            super().handle()

    def finish(self) -> None:
        with self.server.fake._cond:
            self.server.fake._conns.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        authorization = self.headers.get("Authorization")
        response = self.server.fake._handle(
            self.command, self.path, raw, authorization, peer=self.client_address[1]
        )
        if response is None:
            self._reset()
            return
        data = json.dumps(response.payload).encode()
        try:
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up (a timeout shorter than ``latency``): it is gone
            self.close_connection = True

    def _reset(self) -> None:
        """Close with an RST, no answer: SO_LINGER 0, and the close happens in ``finish``
        when the last file object lets go of the socket, before any FIN could be sent."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the fake keeps its own log in ``calls``."""


# --- CLI ----------------------------------------------------------------------------------


def seed_demo(fake: ComputeFake, cluster_uid: str = DEMO_CLUSTER_UID) -> list[str]:
    """What a GKE Ingress leaves behind: the default backend and two NEG backends."""
    seeds = [
        (instance_group_backend_name(30480, cluster_uid), "kube-system/default-http-backend", 80),
        (neg_backend_name("default", "web", 80, cluster_uid), "default/web", 80),
        (neg_backend_name("default", "chat", 8080, cluster_uid), "default/chat", 8080),
    ]
    for name, service, port in seeds:
        fake.add_backend(name, service=service, port=str(port), timeout=DEFAULT_TIMEOUT_SEC)
    return [name for name, _, _ in seeds]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.compute",
        description="Serve a local fake of the Compute v1 backend-service API on loopback.",
    )
    parser.add_argument("--port", type=int, default=8089, help="0 picks a free port")
    parser.add_argument("--project", default="demo-project")
    parser.add_argument("--seed", choices=["demo"], help="pre-create demo backend services")
    parser.add_argument("--op-delay", type=float, default=0.0, help="seconds until DONE")
    parser.add_argument("--write-rate-per-minute", type=int, default=None)
    parser.add_argument("--read-rate-per-minute", type=int, default=None)
    parser.add_argument("--token", help="require Authorization: Bearer TOKEN")
    parser.add_argument("--page-cap", type=int, default=None, help="at most N items per page")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per request")
    args = parser.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    fake = ComputeFake(
        args.project,
        op_delay=args.op_delay,
        write_rate_per_minute=args.write_rate_per_minute,
        read_rate_per_minute=args.read_rate_per_minute,
        token=args.token,
        page_cap=args.page_cap,
        latency=args.latency,
        port=args.port,
    )
    seeded = seed_demo(fake) if args.seed == "demo" else []
    with fake:
        print(fake.url, flush=True)
        for name in seeded:
            print(f"seeded global backend service {name}", file=sys.stderr, flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
