"""Compute backend services over google-api-python-client: get, list, patch, wait.

Owns retries with jittered backoff, the read and write budgets, waiting on
Operations (bounded by time), where credentials may go, and turning every
failure into one GcpError. One Compute serves every thread: the service object
built from the discovery document (trimmed, see document.py) is shared, the HTTP
transport is per thread.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal
from urllib.parse import urlparse

import google.auth
import google.auth.credentials
import google.auth.exceptions
import google_auth_httplib2
import httplib2
from googleapiclient import discovery, errors

from controller.fields import FIELDS, TIMEOUT, patch_body
from controller.gcp import document
from controller.gcp.ratelimit import WriteLimiter
from controller.model import (
    GLOBAL,
    Backend,
    BackendRef,
    port_from_description,
    service_from_description,
)
from controller.outage import Outage

__all__ = ["CallKind", "Compute", "ErrorKind", "GcpError", "NotLeader", "WriteLimiter"]

log = logging.getLogger(__name__)

COMPUTE_SCOPE = "https://www.googleapis.com/auth/compute"
PAGE_SIZE = 500
RATE_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
# A 400 that only means another operation on the resource is still running.
NOT_READY_REASON = "resourceNotReady"
# Socket timeouts, one a kind of call. GCP answers a get, a list page or a patch
# (which returns an Operation at once) within seconds; operations.wait is held
# open until the Operation is DONE or about 2 minutes have passed.
READ_TIMEOUT = 20.0
WRITE_TIMEOUT = 20.0
WAIT_TIMEOUT = 150.0
# How long one write waits for its Operation, longer than one operations.wait may
# block. Past it the caller retries the same write (same requestId), which GCP
# recognises.
OPERATION_TIMEOUT = 180.0
# How long one reconcile (or one refill of the backend cache) may go on starting
# Compute calls, retries and the operation wait included: a read and a write, each
# as slow as its timeout allows, then a whole OPERATION_TIMEOUT. No call starts
# later; one started before it ends within its own socket timeout (at most
# WAIT_TIMEOUT). deploy/deployment.yaml's grace period adds these up.
DEADLINE = READ_TIMEOUT + WRITE_TIMEOUT + OPERATION_TIMEOUT
# The status reported to on_call when no HTTP status came back (socket error, timeout).
NO_RESPONSE = 0

ErrorKind = Literal["not_found", "permission", "invalid", "conflict", "transient", "operation"]
CallKind = Literal["read", "write", "wait"]  # which socket timeout a call runs under
Json = dict[str, Any]


class GcpError(Exception):
    """Any failure talking to Compute; `kind` says what the caller should do about it.

    kinds: not_found (404), permission (403 other than rate limit, 401, no
    credentials), invalid (400 and other 4xx), conflict (412 that kept
    happening, 409), transient (5xx, 429, 403 rate limit, 400
    resourceNotReady, network: retries ran out), operation (the Operation
    finished with an error).
    """

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        method: str = "",
        target: str = "",
        status: int | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(kind, message)
        self.kind: ErrorKind = kind
        self.message = message
        self.method = method
        self.target = target
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        status = "no response" if self.status is None else str(self.status)
        reason = f" {self.reason}" if self.reason else ""
        return f"{self.method} {self.target}: {self.kind} ({status}{reason}): {self.message}"


class NotLeader(Exception):
    """This replica no longer holds the Lease: it must not write anything."""


GOOGLE_HOST_SUFFIX = ".googleapis.com"


class Compute:
    """Backend services of one project; safe to share between threads.

    Every call is logged at DEBUG and reported to `on_call(method, status)`,
    status 0 meaning no response (the metrics count them).
    """

    def __init__(
        self,
        project: str,
        *,
        endpoint: str | None = None,
        credentials: google.auth.credentials.Credentials | None = None,
        limiter: WriteLimiter | None = None,
        read_limiter: WriteLimiter | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        max_attempts: int = 6,
        base_delay: float = 1.0,
        max_delay: float = 32.0,
        on_call: Callable[[str, int], None] = lambda method, status: None,
        read_timeout: float = READ_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        wait_timeout: float = WAIT_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        operation_timeout: float = OPERATION_TIMEOUT,
        deadline: float = DEADLINE,
        unsafe_endpoint: bool = False,
        outage: Outage | None = None,
    ) -> None:
        """`unsafe_endpoint` allows sending real credentials to an endpoint that is
        not Google's over TLS; without it such an endpoint is refused here. `outage`
        hears of every attempt: no answer, a 5xx or a rate limit is a failure.
        `deadline` is the budget in seconds (on `clock`) of a call made without
        a deadline of its own, and of ``deadline()``."""
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        if credentials is None:
            credentials = _default_credentials(endpoint, unsafe_endpoint)
        self.project = project
        self.endpoint = endpoint
        self._limiter = limiter
        self._read_limiter = read_limiter
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._rng_lock = threading.Lock()
        self._max_attempts = max_attempts
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._on_call = on_call
        self._clock = clock
        self._operation_timeout = operation_timeout
        self._credentials = credentials
        self._timeouts: dict[CallKind, float] = {
            "read": read_timeout,
            "write": write_timeout,
            "wait": wait_timeout,
        }
        self._budget = deadline
        self.outage = outage or Outage("Compute")
        self._local = threading.local()
        # Built once, from the document trimmed to the methods called here (see
        # document.py): requests it makes are executed on each thread's own transport.
        self._api = discovery.build_from_document(
            document.trimmed(),
            http=self._http("read"),
            client_options={"api_endpoint": endpoint} if endpoint else None,
        )
        self._collections = {
            "backendServices": self._api.backendServices(),
            "regionBackendServices": self._api.regionBackendServices(),
            "globalOperations": self._api.globalOperations(),
            "regionOperations": self._api.regionOperations(),
        }

    def _http(self, kind: CallKind = "read") -> google_auth_httplib2.AuthorizedHttp:
        """This thread's transport for one kind of call: httplib2 objects are not
        thread-safe, and the socket timeout is the transport's."""
        transports: dict[CallKind, google_auth_httplib2.AuthorizedHttp] | None = getattr(
            self._local, "http", None
        )
        if transports is None:
            transports = self._local.http = {}
        http = transports.get(kind)
        if http is None:
            http = google_auth_httplib2.AuthorizedHttp(
                self._credentials, http=httplib2.Http(timeout=self._timeouts[kind])
            )
            transports[kind] = http
        return http

    def deadline(self) -> float:
        """A deadline (on this client's clock) for work that starts now: one
        reconcile's calls share one, so that together they stay within it."""
        return self._clock() + self._budget

    def __repr__(self) -> str:
        return f"Compute(project={self.project!r}, endpoint={self.endpoint!r})"

    def get(self, ref: BackendRef, *, deadline: float | None = None) -> Backend | None:
        """The backend service, or None when it does not exist."""
        services, prefix, where = self._services(ref.scope)
        request = functools.partial(services.get, backendService=ref.name, **where)
        try:
            item = self._execute(f"{prefix}.get", str(ref), request, kind="read", deadline=deadline)
        except GcpError as error:
            if error.kind == "not_found":
                return None
            raise
        return _backend(ref.scope, item)

    def backends(self, scope: str, *, deadline: float | None = None) -> Iterator[Backend]:
        """Every backend service in `scope` ("global" or a region), page by page as the
        pages are read, every page by one deadline: one page's JSON held at a time."""
        if deadline is None:
            deadline = self.deadline()
        services, prefix, where = self._services(scope)
        target = GLOBAL if scope == GLOBAL else f"regions/{scope}"
        token: str | None = None
        while True:
            request = functools.partial(
                services.list, maxResults=PAGE_SIZE, pageToken=token, **where
            )
            page = self._execute(f"{prefix}.list", target, request, kind="read", deadline=deadline)
            token = page.get("nextPageToken") or None
            items = page.get("items") or []
            del page  # each item's JSON goes as it is taken in
            items.reverse()
            while items:
                yield _backend(scope, items.pop())
            if token is None:
                return

    def patch(
        self,
        backend: Backend,
        values: Mapping[str, int],
        *,
        request_id: str,
        may_write: Callable[[], bool] = lambda: True,
        deadline: float | None = None,
        token_taken: bool = False,
    ) -> Json:
        """PATCH the managed fields `values` (name -> value, see fields.py) in one body,
        with the fingerprint of `backend` as read; return the Operation.

        A stale fingerprint raises GcpError kind "conflict", status 412: read
        again and decide again. Every attempt carries `request_id`, so that
        GCP drops a retry of a PATCH whose answer was lost, and is sent only
        while `may_write()` holds (else NotLeader). `token_taken`: the first
        attempt goes with the write token the caller took (``take_write_token``).
        """
        services, prefix, where = self._services(backend.ref.scope)
        request = functools.partial(
            services.patch,
            backendService=backend.ref.name,
            body=patch_body(values, backend.fingerprint),
            requestId=request_id,
            **where,
        )
        return self._execute(
            f"{prefix}.patch",
            str(backend.ref),
            request,
            kind="write",
            write=may_write,
            note=f"requestId={request_id}",
            deadline=deadline,
            token_taken=token_taken,
        )

    def take_write_token(self) -> None:
        """Wait for a write token now, for a `patch(..., token_taken=True)` soon after."""
        if self._limiter is not None:
            self._limiter.acquire()

    def wait(
        self,
        ref: BackendRef,
        operation: Json,
        *,
        may_write: Callable[[], bool] = lambda: True,
        deadline: float | None = None,
    ) -> None:
        """Wait until `operation` is DONE, for at most operation_timeout and never past
        `deadline`; raise its error.

        Past either: GcpError "transient" (retry the same write). When
        `may_write()` stops holding: NotLeader, at once.
        """
        if ref.regional:
            prefix, where = "regionOperations", {"project": self.project, "region": ref.scope}
        else:
            prefix, where = "globalOperations", {"project": self.project}
        operations = self._collections[prefix]
        name = operation.get("name")
        limit = self._clock() + self._operation_timeout
        until = limit if deadline is None else min(limit, deadline)
        while operation.get("status") != "DONE":
            if not may_write():
                raise NotLeader(f"stopped waiting for operation {name} on {ref}")
            if self._clock() >= until:
                why = (
                    f"after {self._operation_timeout:.0f}s" if until == limit else "at its deadline"
                )
                raise GcpError(
                    "transient",
                    f"operation {name} still {operation.get('status')} {why}",
                    method=f"{prefix}.wait",
                    target=str(ref),
                )
            request = functools.partial(operations.wait, operation=name, **where)
            operation = self._execute(
                f"{prefix}.wait", str(ref), request, kind="wait", note=str(name), deadline=until
            )
        error = operation.get("error")
        if error:
            reason, message = _operation_error(error)
            status = operation.get("httpErrorStatusCode")
            raise GcpError(
                "operation",
                f"operation {name} failed: {message}",
                method=f"{prefix}.wait",
                target=str(ref),
                status=status if isinstance(status, int) else None,
                reason=reason,
            )

    def _services(self, scope: str) -> tuple[Any, str, dict[str, str]]:
        if scope == GLOBAL:
            return (
                self._collections["backendServices"],
                "backendServices",
                {"project": self.project},
            )
        where = {"project": self.project, "region": scope}
        return self._collections["regionBackendServices"], "regionBackendServices", where

    def _execute(
        self,
        method: str,
        target: str,
        request: Callable[[], Any],
        *,
        kind: CallKind,
        write: Callable[[], bool] | None = None,
        note: str = "",
        deadline: float | None = None,
        token_taken: bool = False,
    ) -> Json:
        """Run one API call with retries; return its JSON body or raise GcpError.

        `kind` picks the socket timeout. `write` marks a write: each attempt
        takes a write token (the first one none when `token_taken`) and is sent
        only while `write()` holds (else NotLeader). No attempt starts at or past
        `deadline` (on the clock; default: this call's own budget from now): then
        GcpError "transient".
        """
        if deadline is None:
            deadline = self.deadline()
        attempt = 0
        limiter = self._limiter if write is not None else self._read_limiter
        last: GcpError | None = None
        while True:
            if limiter is not None and not (token_taken and attempt == 0):
                limiter.acquire()
            if self._clock() >= deadline:
                raise _late(method, target, attempt, last)
            if write is not None and not write():
                raise NotLeader(f"{method} {target} not sent: no longer the leader")
            started = time.monotonic()
            cause: Exception
            try:
                result = request().execute(http=self._http(kind))
            except errors.HttpError as exc:
                cause, error = exc, _http_error(exc, method, target)
            except (
                OSError,
                httplib2.HttpLib2Error,
                google.auth.exceptions.TransportError,
            ) as exc:
                cause = exc
                error = GcpError(
                    "transient", f"{type(exc).__name__}: {exc}", method=method, target=target
                )
            except google.auth.exceptions.GoogleAuthError as exc:
                cause = exc
                failed: ErrorKind = "transient" if exc.retryable else "permission"
                error = GcpError(failed, f"credentials: {exc}", method=method, target=target)
            except ValueError as exc:
                # A body that is not JSON: typically a proxy's error page.
                cause = exc
                error = GcpError(
                    "transient", f"unreadable response: {exc}", method=method, target=target
                )
            else:
                self._record(method, target, 200, started, note)
                self.outage.answered()
                return result if isinstance(result, dict) else {}
            self._record(method, target, error.status or NO_RESPONSE, started, note)
            if error.kind == "transient" and error.reason != NOT_READY_REASON:
                self.outage.failed(error)
            else:
                self.outage.answered()  # it answered: the request is what it refused
            attempt += 1
            if error.kind != "transient":
                raise error from cause
            last = error
            if attempt == self._max_attempts:
                raise _gave_up(error, attempt) from cause
            ceiling = min(self._max_delay, self._base_delay * 2 ** (attempt - 1))
            with self._rng_lock:
                delay = self._rng.uniform(0, ceiling)
            if self._clock() + delay >= deadline:  # the next attempt would start too late
                raise _late(method, target, attempt, error) from cause
            log.debug("%s %s: %s; retrying in %.2fs", method, target, error.message, delay)
            self._sleep(delay)

    def _record(self, method: str, target: str, status: int, started: float, note: str) -> None:
        self._on_call(method, status)
        elapsed_ms = (time.monotonic() - started) * 1000
        log.debug("%s %s %s -> %s (%.0f ms)", method, target, note, status, elapsed_ms)


def _gave_up(error: GcpError, attempts: int) -> GcpError:
    return GcpError(
        "transient",
        f"{error.message} (gave up after {attempts} attempts)",
        method=error.method,
        target=error.target,
        status=error.status,
        reason=error.reason,
    )


def _late(method: str, target: str, attempts: int, last: GcpError | None) -> GcpError:
    """The deadline came before the next attempt: a retry later, as any transient error."""
    if last is None:
        return GcpError("transient", "not sent: past its deadline", method=method, target=target)
    error = _gave_up(last, attempts)
    error.message = f"{error.message}; no time left before the deadline"
    return error


def is_local(endpoint: str | None) -> bool:
    """An endpoint on this machine (an emulator or a test fake): no credentials needed."""
    return (urlparse(endpoint or "").hostname or "") in {"localhost", "127.0.0.1", "::1"}


def is_google(endpoint: str | None) -> bool:
    """Google's own Compute endpoint over TLS (None: the default one)."""
    if endpoint is None:
        return True
    url = urlparse(endpoint)
    host = url.hostname or ""
    return url.scheme == "https" and (host == "googleapis.com" or host.endswith(GOOGLE_HOST_SUFFIX))


def _default_credentials(
    endpoint: str | None, unsafe_endpoint: bool
) -> google.auth.credentials.Credentials:
    if is_local(endpoint):
        # google-auth leaves this constructor unannotated.
        return google.auth.credentials.AnonymousCredentials()  # type: ignore[no-untyped-call]
    if not is_google(endpoint) and not unsafe_endpoint:
        # A bearer token sent anywhere else can be replayed against the project.
        raise GcpError(
            "permission",
            f"refusing to send Google credentials to {endpoint}, which is not Google's "
            "Compute API over https; pass --unsafe-send-credentials-to-endpoint if you mean it",
        )
    try:
        credentials, _ = google.auth.default(scopes=[COMPUTE_SCOPE])
    except google.auth.exceptions.DefaultCredentialsError as exc:
        raise GcpError("permission", f"no default credentials: {exc}") from exc
    return credentials


def _backend(scope: str, item: Json) -> Backend:
    description = item.get("description")
    return Backend(
        ref=BackendRef(scope, str(item.get("name", ""))),
        timeout_sec=TIMEOUT.read(item),
        fingerprint=str(item.get("fingerprint", "")),
        service=service_from_description(description),
        port=port_from_description(description),
    ).with_values({f.name: f.read(item) for f in FIELDS})


def _classify(status: int, reason: str | None) -> ErrorKind:
    if status == 404:
        return "not_found"
    if status == 403:
        return "transient" if reason in RATE_LIMIT_REASONS else "permission"
    if status == 401:
        return "permission"
    if status == 429 or status >= 500 or (status == 400 and reason == NOT_READY_REASON):
        return "transient"
    if status in (409, 412):
        return "conflict"
    return "invalid"


def _http_error(exc: errors.HttpError, method: str, target: str) -> GcpError:
    status = int(exc.status_code)
    reason = _error_reason(exc.content)
    message = str(exc.reason or "") or f"HTTP {status}"
    return GcpError(
        _classify(status, reason),
        message,
        method=method,
        target=target,
        status=status,
        reason=reason,
    )


def _error_reason(content: bytes) -> str | None:
    """The first `reason` of a Google API error body, if it has one."""
    try:
        data = json.loads(content)
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return None
    for key in ("errors", "details"):
        items = error.get(key)
        if isinstance(items, list) and items and isinstance(items[0], dict):
            reason = items[0].get("reason")
            if isinstance(reason, str):
                return reason
    return None


def _operation_error(error: object) -> tuple[str | None, str]:
    """(code, message) of the first entry of an Operation's `error`."""
    entries = error.get("errors") if isinstance(error, dict) else None
    if isinstance(entries, list) and entries and isinstance(entries[0], dict):
        code, message = entries[0].get("code"), entries[0].get("message")
        return (
            code if isinstance(code, str) else None,
            message if isinstance(message, str) else json.dumps(entries[0]),
        )
    return None, json.dumps(error)
