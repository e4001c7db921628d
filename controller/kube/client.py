"""Talking to the Kubernetes API over plain HTTPS with requests.

Owns where the server is and who we are (in-cluster, kubeconfig, exec plugin),
the request/response cycle with explicit timeouts and debug logging, paged
LISTs and the line splitting of WATCH streams. No knowledge of any resource.
"""

from __future__ import annotations

import atexit
import base64
import codecs
import contextlib
import json
import logging
import os
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar, overload

import requests
import requests.adapters
import requests.utils
import yaml

from controller.outage import Outage

T = TypeVar("T")
log = logging.getLogger(__name__)

Clock = Callable[[], float]
Timeout = tuple[float, float]

PATCH_CONTENT_TYPES = {
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "json": "application/json-patch+json",
}
USER_AGENT = "gke-ingress-timeout"
# Connections kept open to the apiserver (requests keeps 10 by default).
POOL = 32
EXEC_API_VERSION = "client.authentication.k8s.io/v1"
# Bytes read from a LIST response at a time: an item is parsed once it is whole.
LIST_CHUNK = 64 * 1024
# Refresh an exec credential this long before it expires, so a request in
# flight does not carry a token that dies on the way.
EXPIRY_MARGIN = 10.0


class KubeError(Exception):
    """An HTTP error from the apiserver, with the fields of its Status body."""

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        retry_after: float | None = None,
        continue_token: str = "",
    ) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        # With a 410 for an expired continue token: the token that lists the rest
        # at the current resourceVersion (an inconsistent list).
        self.continue_token = continue_token

    @classmethod
    def from_status(cls, status: Mapping[str, Any]) -> KubeError:
        """From a metav1.Status object (an error body, or a watch ERROR event)."""
        return cls(
            int(status.get("code") or 0),
            str(status.get("reason") or ""),
            str(status.get("message") or ""),
        )

    @classmethod
    def from_response(cls, response: requests.Response) -> KubeError:
        try:
            body = response.json()
        except ValueError:
            body = None
        token = ""
        if isinstance(body, dict) and body.get("kind") == "Status":
            reason = str(body.get("reason") or response.reason or "")
            message = str(body.get("message") or "")
            meta = body.get("metadata")
            if isinstance(meta, dict) and isinstance(meta.get("continue"), str):
                token = meta["continue"]
        else:
            reason = str(response.reason or "")
            message = response.text[:200]
        return cls(response.status_code, reason, message, _retry_after(response), token)


class KubeConfigError(ValueError):
    """The kubeconfig or the in-cluster environment does not say how to connect."""


class AuthError(RuntimeError):
    """Credentials could not be obtained (token file unreadable, exec plugin failed)."""


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP-date: the apiserver never sends one


# --- authentication --------------------------------------------------------------


class Auth:
    """How requests prove who we are. Subclasses override what they need."""

    kind = "anonymous"

    def headers(self) -> dict[str, str]:
        return {}

    def cert(self) -> tuple[str, str] | None:
        return None

    def refresh(self) -> None:
        """Forget cached credentials; called after a 401."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class StaticTokenAuth(Auth):
    kind = "token"

    def __init__(self, token: str) -> None:
        self._token = token

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}


class TokenFileAuth(Auth):
    """A bearer token from a file that someone else rotates (kubelet, projected volume)."""

    kind = "token-file"

    def __init__(self, path: str, clock: Clock = time.monotonic, max_age: float = 60.0) -> None:
        self.path = path
        self._clock = clock
        self._max_age = max_age
        self._lock = threading.Lock()
        self._token: str | None = None
        self._read_at = 0.0

    def headers(self) -> dict[str, str]:
        with self._lock:
            now = self._clock()
            if self._token is None or now - self._read_at >= self._max_age:
                try:
                    with open(self.path, encoding="utf-8") as f:
                        self._token = f.read().strip()
                except OSError as exc:
                    raise AuthError(f"cannot read token file {self.path}: {exc}") from exc
                self._read_at = now
            return {"Authorization": f"Bearer {self._token}"}

    def refresh(self) -> None:
        with self._lock:
            self._token = None

    def __repr__(self) -> str:
        return f"TokenFileAuth(path={self.path!r})"


class ClientCertAuth(Auth):
    kind = "client-certificate"

    def __init__(self, cert_file: str, key_file: str) -> None:
        self.cert_file = cert_file
        self.key_file = key_file

    def cert(self) -> tuple[str, str]:
        return (self.cert_file, self.key_file)

    def __repr__(self) -> str:
        return f"ClientCertAuth(cert_file={self.cert_file!r})"


class ExecAuth(Auth):
    """A client-go credential plugin (e.g. gke-gcloud-auth-plugin): run it, use status.token.

    Only token credentials are supported, not certificates returned by the plugin.
    """

    kind = "exec"

    def __init__(
        self,
        command: str,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        *,
        api_version: str = EXEC_API_VERSION,
        now: Clock = time.time,
        timeout: float = 60.0,
    ) -> None:
        self.command = command
        self.args = list(args)
        self.env = dict(env or {})
        self.api_version = api_version
        self._now = now
        self._timeout = timeout
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires: float | None = None

    def headers(self) -> dict[str, str]:
        with self._lock:
            stale = self._expires is not None and self._now() >= self._expires - EXPIRY_MARGIN
            if self._token is None or stale:
                self._token, self._expires = self._run()
            return {"Authorization": f"Bearer {self._token}"}

    def refresh(self) -> None:
        with self._lock:
            self._token = None

    def _run(self) -> tuple[str, float | None]:
        info = {
            "apiVersion": self.api_version,
            "kind": "ExecCredential",
            "spec": {"interactive": False},
        }
        env = {**os.environ, **self.env, "KUBERNETES_EXEC_INFO": json.dumps(info)}
        try:
            done = subprocess.run(
                [self.command, *self.args],
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self._timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise AuthError(f"exec plugin {self.command}: {exc}") from exc
        if done.returncode != 0:
            stderr = done.stderr.decode(errors="replace").strip()[:300]
            raise AuthError(f"exec plugin {self.command} exited {done.returncode}: {stderr}")
        try:
            status = json.loads(done.stdout)["status"]
            token = str(status["token"])
            expiry = status.get("expirationTimestamp")
            expires = None if not expiry else _rfc3339(str(expiry))
        except (ValueError, KeyError, TypeError) as exc:
            raise AuthError(f"exec plugin {self.command}: no usable status.token") from exc
        return token, expires

    def __repr__(self) -> str:
        return f"ExecAuth(command={self.command!r})"


def _rfc3339(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _private_file(data: bytes, suffix: str) -> str:
    """Write data to a file only we can read, removed when the process exits."""
    fd, path = tempfile.mkstemp(prefix="kube-", suffix=suffix)  # mode 0600
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    atexit.register(_remove, path)
    return path


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


# --- the client ------------------------------------------------------------------


class WatchStream(Iterator[dict[str, Any]]):
    """The decoded events of one WATCH response, one JSON object a line.

    Splits the chunked body itself: Response.iter_lines() may hold back the last
    event until more bytes arrive. close() releases the connection; abort() may
    be called from another thread to break a read blocked on the socket.
    """

    def __init__(self, response: requests.Response, outage: Outage | None = None) -> None:
        self._response = response
        self._outage = outage
        self._aborted = False
        self._events = self._split()

    def __next__(self) -> dict[str, Any]:
        try:
            return next(self._events)
        except requests.RequestException as exc:
            if self._outage is not None and not self._aborted:
                self._outage.failed(f"WATCH {self._response.url}: {type(exc).__name__}")
            raise

    def _split(self) -> Iterator[dict[str, Any]]:
        pending: list[bytes] = []
        for chunk in self._response.iter_content(chunk_size=None):
            while (end := chunk.find(b"\n")) >= 0:
                line = b"".join([*pending, chunk[:end]])
                pending.clear()
                chunk = chunk[end + 1 :]
                if line.strip():
                    yield json.loads(line)
            if chunk:
                pending.append(chunk)
        rest = b"".join(pending)
        if rest.strip():
            yield json.loads(rest)

    def close(self) -> None:
        self._response.close()

    def abort(self) -> None:
        self._aborted = True
        # shutdown() wakes a thread blocked in recv(), close() would not.
        connection = getattr(self._response.raw, "connection", None)
        sock = getattr(connection, "sock", None)
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> WatchStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _session(server: str) -> requests.Session:
    """A Session that keeps a connection for every thread that talks to the apiserver at
    once (workers, finishers, Event posters, watches, the Lease): past its pool, a
    connection is closed after its request and the next request pays a TLS handshake.

    The environment's proxy settings for ``server`` are read once, here: requests
    otherwise scans the whole environment (and looks for a .netrc) on every request,
    a sixth of the controller's CPU at a cold start.
    """
    session = requests.Session()
    session.proxies = requests.utils.get_environ_proxies(server)
    session.trust_env = False
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=POOL)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def _ca_bundle(verify: str | bool) -> str | bool:
    """What requests would verify against: a bundle named in the environment (as
    requests reads it) when no CA is given."""
    if verify is not True:
        return verify
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True


class KubeClient:
    """A requests Session pointed at one apiserver, with one way to authenticate."""

    def __init__(
        self,
        server: str,
        *,
        auth: Auth,
        verify: str | bool = True,
        timeout: Timeout = (5.0, 30.0),
        session: requests.Session | None = None,
        outage: Outage | None = None,
    ) -> None:
        """`outage` hears of every call: a refused, dropped or timed-out request, a 5xx
        or a 429 is a failure; any other answer shows the apiserver is there."""
        self.server = server.rstrip("/")
        self.auth = auth
        self.verify = verify
        # What requests verifies against: it no longer reads the environment itself.
        self._verify = verify if session is not None else _ca_bundle(verify)
        self.timeout = timeout
        self._session = session or _session(self.server)
        self.outage = outage or Outage("the apiserver")

    def __repr__(self) -> str:
        return f"KubeClient(server={self.server!r}, auth={self.auth!r})"

    # --- construction ----------------------------------------------------------

    @classmethod
    def in_cluster(
        cls,
        *,
        root: str = "/var/run/secrets/kubernetes.io/serviceaccount",
        env: Mapping[str, str] = os.environ,
        clock: Clock = time.monotonic,
    ) -> KubeClient:
        host = env.get("KUBERNETES_SERVICE_HOST")
        port = env.get("KUBERNETES_SERVICE_PORT")
        if not host or not port:
            raise KubeConfigError("KUBERNETES_SERVICE_HOST/PORT are not set: not in a cluster")
        if ":" in host:
            host = f"[{host}]"
        return cls(
            f"https://{host}:{port}",
            auth=TokenFileAuth(os.path.join(root, "token"), clock=clock),
            verify=os.path.join(root, "ca.crt"),
        )

    @classmethod
    def from_kubeconfig(cls, path: str | None = None, *, context: str | None = None) -> KubeClient:
        path = path or _default_kubeconfig()
        try:
            with open(path, encoding="utf-8") as f:
                config = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise KubeConfigError(f"cannot read kubeconfig {path}: {exc}") from exc
        base = os.path.dirname(os.path.abspath(path))
        name = context or config.get("current-context")
        if not name:
            raise KubeConfigError(f"{path}: no context given and no current-context")
        ctx = _named(config, "contexts", name, "context", path)
        cluster = _named(config, "clusters", ctx.get("cluster"), "cluster", path)
        user = _named(config, "users", ctx.get("user"), "user", path) if ctx.get("user") else {}
        server = cluster.get("server")
        if not server:
            raise KubeConfigError(f"{path}: cluster {ctx.get('cluster')!r} has no server")
        return cls(str(server), auth=_auth_from_user(user, base), verify=_verify(cluster, base))

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None) -> KubeClient:
        if kubeconfig:
            return cls.from_kubeconfig(kubeconfig)
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            return cls.in_cluster()
        return cls.from_kubeconfig()

    # --- HTTP ------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: Timeout | None = None,
        stream: bool = False,
    ) -> requests.Response:
        """One call; raises KubeError for a status >= 400. A 401 refreshes auth and retries once."""
        kwargs = {
            "params": params,
            "json": json,
            "headers": headers,
            "stream": stream,
            "timeout": timeout or self.timeout,
        }
        response = self._send(method, self.server + path, **kwargs)
        if response.status_code == 401:
            response.close()
            self.auth.refresh()
            response = self._send(method, self.server + path, **kwargs)
        if response.status_code >= 400:
            error = KubeError.from_response(response)
            response.close()
            raise error
        return response

    def _send(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None,
        json: Any,
        headers: Mapping[str, str] | None,
        timeout: Timeout,
        stream: bool,
    ) -> requests.Response:
        all_headers = {
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
            **self.auth.headers(),
            **(headers or {}),
        }
        start = time.monotonic()
        try:
            response = self._session.request(
                method,
                url,
                params=params,
                json=json,
                headers=all_headers,
                timeout=timeout,
                stream=stream,
                verify=self._verify,
                cert=self.auth.cert(),
            )
        except requests.RequestException as exc:
            log.debug(
                "%s %s failed after %.0f ms: %s",
                method,
                url,
                (time.monotonic() - start) * 1000,
                type(exc).__name__,
            )
            self.outage.failed(f"{method} {url}: {type(exc).__name__}")
            raise
        if response.status_code >= 500 or response.status_code == 429:
            self.outage.failed(f"{method} {url}: {response.status_code}")
        else:
            self.outage.answered()
        log.debug(
            "%s %s %d %.0f ms",
            method,
            response.url,
            response.status_code,
            (time.monotonic() - start) * 1000,
        )
        return response

    def get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        return _object(self.request("GET", path, params=params))

    def list_page(
        self,
        path: str,
        params: Mapping[str, str] | None,
        each: Callable[[dict[str, Any]], None],
    ) -> dict[str, Any]:
        """One page of a collection: ``each(item)`` for every item as it is parsed from
        the stream, so a page is never held whole; returns the list's ``metadata``.

        A 410 for an expired continue token raises KubeError with the Status's
        ``continue_token`` (empty if the server gave none).
        """
        response = self.request("GET", path, params=params, stream=True)
        with response:
            rest = _stream_list(response.iter_content(chunk_size=LIST_CHUNK), each)
        meta = rest.get("metadata")
        return meta if isinstance(meta, dict) else {}

    @overload
    def list(
        self, path: str, params: Mapping[str, str] | None = None, *, limit: int = 500
    ) -> tuple[list[dict[str, Any]], str]: ...

    @overload
    def list(
        self,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        limit: int = 500,
        keep: Callable[[dict[str, Any]], T],
    ) -> tuple[list[T], str]: ...

    def list(
        self,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        limit: int = 500,
        keep: Callable[[dict[str, Any]], Any] | None = None,
    ) -> tuple[list[Any], str]:
        """Every page of a small collection, consistent; returns (items, resourceVersion).

        ``keep`` turns each item into what the caller keeps as it is parsed. A
        continue token that expired raises: a short list is simply tried again.
        (The Ingress informer pages on its own, see watch.Informer.)
        """
        items: list[Any] = []
        token: str | None = None
        while True:
            query = {**(params or {}), "limit": str(limit)}
            if token:
                # The apiserver refuses a resourceVersion next to a continue token.
                query.pop("resourceVersion", None)
                query.pop("resourceVersionMatch", None)
                query["continue"] = token
            meta = self.list_page(
                path, query, items.append if keep is None else lambda o: items.append(keep(o))
            )
            token = meta.get("continue") or None
            if token is None:
                return items, str(meta.get("resourceVersion") or "")

    def watch(
        self,
        path: str,
        *,
        resource_version: str,
        timeout_seconds: int | None,
        read_timeout: float,
        params: Mapping[str, str] | None = None,
    ) -> WatchStream:
        """Open a WATCH from resource_version; iterate the result for decoded events.

        timeout_seconds None leaves the duration to the server (--min-request-timeout,
        randomised). read_timeout bounds every socket read, so a connection that died
        silently is noticed; keep it above the bookmark interval.
        """
        query = {
            **(params or {}),
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
        }
        if timeout_seconds is not None:
            query["timeoutSeconds"] = str(timeout_seconds)
        response = self.request(
            "GET",
            path,
            params=query,
            stream=True,
            # A compressed stream could sit in the decompressor's buffer.
            headers={"Accept-Encoding": "identity"},
            timeout=(self.timeout[0], read_timeout),
        )
        return WatchStream(response, self.outage)

    def post(self, path: str, body: Any) -> dict[str, Any]:
        return _object(self.request("POST", path, json=body))

    def put(self, path: str, body: Any) -> dict[str, Any]:
        return _object(self.request("PUT", path, json=body))

    def patch(self, path: str, body: Any, *, patch_type: str = "merge") -> dict[str, Any]:
        content_type = PATCH_CONTENT_TYPES[patch_type]
        return _object(
            self.request("PATCH", path, json=body, headers={"Content-Type": content_type})
        )

    def delete(self, path: str) -> dict[str, Any]:
        return _object(self.request("DELETE", path))


def unreachable(exc: BaseException) -> bool:
    """An apiserver that did not answer, or answered that it cannot now: retry later.
    The client has already told its Outage; callers need not log it again."""
    if isinstance(exc, KubeError):
        return exc.status == 429 or exc.status >= 500
    return isinstance(exc, requests.RequestException)


class _ListReader:
    """A JSON list body read a chunk at a time: top-level fields are kept, each element
    of ``items`` is decoded alone and handed on, then dropped."""

    _decoder = json.JSONDecoder()

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._text = ""
        self._at = 0
        self._eof = False

    def _read(self, wanted: int) -> None:
        """Drop what was consumed; read until ``wanted`` characters wait, or the end."""
        self._text = self._text[self._at :]
        self._at = 0
        parts = [self._text]
        size = len(self._text)
        while size < wanted and not self._eof:
            chunk = next(self._chunks, None)
            if chunk is None:
                self._eof = True
                part = self._utf8.decode(b"", final=True)
            else:
                part = self._utf8.decode(chunk)
            parts.append(part)
            size += len(part)
        self._text = "".join(parts)

    def peek(self) -> str:
        """The next character that is not white space ("" at the end)."""
        while True:
            while self._at < len(self._text) and self._text[self._at] in " \t\r\n":
                self._at += 1
            if self._at < len(self._text) or self._eof:
                return self._text[self._at : self._at + 1]
            self._read(1)

    def take(self, char: str) -> None:
        if self.peek() != char:
            raise ValueError(f"expected {char!r} in a list body at {self._at}")
        self._at += 1

    def value(self) -> Any:
        """The next JSON value, read whole; a value cut off by the chunk end reads more
        (doubling, so a large item costs linear time)."""
        self.peek()
        while True:
            try:
                value, end = self._decoder.raw_decode(self._text, self._at)
            except json.JSONDecodeError:
                if self._eof:
                    raise
                self._read(2 * (len(self._text) - self._at) + LIST_CHUNK)
                continue
            if end == len(self._text) and not self._eof:
                # A number (or literal) may go on in the next chunk.
                self._read(len(self._text) - self._at + LIST_CHUNK)
                continue
            self._at = end
            return value


def _stream_list(chunks: Iterator[bytes], each: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Parse a List object from ``chunks``; ``each`` gets every item, the rest is returned."""
    reader = _ListReader(chunks)
    rest: dict[str, Any] = {}
    reader.take("{")
    if reader.peek() == "}":
        return rest
    while True:
        key = reader.value()
        reader.take(":")
        if key == "items" and reader.peek() == "[":
            reader.take("[")
            while reader.peek() != "]":
                item = reader.value()
                if not isinstance(item, dict):
                    raise ValueError("a list item that is not an object")
                each(item)
                if reader.peek() != "]":
                    reader.take(",")
            reader.take("]")
        else:
            rest[str(key)] = reader.value()
        if reader.peek() == "}":
            return rest
        reader.take(",")


def _object(response: requests.Response) -> dict[str, Any]:
    body = response.json()
    if not isinstance(body, dict):
        raise KubeError(response.status_code, "BadResponse", "expected a JSON object")
    return body


# --- kubeconfig ------------------------------------------------------------------


def _default_kubeconfig() -> str:
    for entry in os.environ.get("KUBECONFIG", "").split(os.pathsep):
        if entry:
            return entry
    return os.path.join(os.path.expanduser("~"), ".kube", "config")


def _named(config: Mapping[str, Any], section: str, name: Any, field: str, path: str) -> Any:
    for entry in config.get(section) or []:
        if entry.get("name") == name:
            return entry.get(field) or {}
    raise KubeConfigError(f"{path}: no {section[:-1]} named {name!r}")


def _relative(base: str, path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(base, path)


def _data_or_file(section: Mapping[str, Any], key: str, base: str, suffix: str) -> str | None:
    """A path for `key`, or for `key-data` (base64) written to a private file."""
    if section.get(f"{key}-data"):
        return _private_file(base64.b64decode(section[f"{key}-data"]), suffix)
    if section.get(key):
        return _relative(base, str(section[key]))
    return None


def _verify(cluster: Mapping[str, Any], base: str) -> str | bool:
    if cluster.get("insecure-skip-tls-verify"):
        return False
    return _data_or_file(cluster, "certificate-authority", base, ".crt") or True


def _auth_from_user(user: Mapping[str, Any], base: str) -> Auth:
    if user.get("exec"):
        spec = user["exec"]
        command = str(spec["command"])
        if os.sep in command:
            command = _relative(base, command)
        env = {str(e["name"]): str(e["value"]) for e in spec.get("env") or []}
        args = [str(a) for a in spec.get("args") or []]
        api_version = str(spec.get("apiVersion") or EXEC_API_VERSION)
        return ExecAuth(command, args, env, api_version=api_version)
    if user.get("token"):
        return StaticTokenAuth(str(user["token"]))
    if user.get("tokenFile"):
        return TokenFileAuth(_relative(base, str(user["tokenFile"])))
    cert = _data_or_file(user, "client-certificate", base, ".crt")
    key = _data_or_file(user, "client-key", base, ".key")
    if cert and key:
        return ClientCertAuth(cert, key)
    if user.get("auth-provider") or user.get("username"):
        raise KubeConfigError("kubeconfig user: auth-provider and basic auth are not supported")
    return Auth()
