"""A loopback TLS proxy in front of one contender's kube-apiserver: counts its requests,
and can end its watches cleanly (as the apiserver does at timeoutSeconds) or with a 410
Expired ERROR event (as it does when a watch falls behind its history), and hold the
next requests of a kind for a moment. It serves the apiserver's own certificate: only
the port differs.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import parse_qs, urlsplit

_VERBS = {"POST": "CREATE", "PUT": "UPDATE", "PATCH": "PATCH", "DELETE": "DELETE"}
_MAX_HEAD = 1 << 16
_PIECE = 1 << 16
WRITES = frozenset({"CREATE", "UPDATE", "PATCH", "DELETE"})
# What the apiserver sends down a watch whose resourceVersion its history no longer holds:
# the client must LIST again.
EXPIRED = {
    "type": "ERROR",
    "object": {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "too old resource version: 1 (2)",
        "reason": "Expired",
        "code": 410,
    },
}


@dataclass(frozen=True)
class Request:
    at: float  # time.monotonic() when its head arrived
    verb: str  # LIST (its first page), LIST_PAGE (the next), WATCH, GET, CREATE, UPDATE,
    # PATCH, DELETE, or the HTTP method for what is not a resource
    resource: str  # "ingresses", "events", ... or the path for anything else


def classify(method: str, target: str) -> tuple[str, str]:
    """(verb, resource) of one request, as the apiserver's audit log would name them."""
    url = urlsplit(target)
    parts = [p for p in url.path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 2:
        rest = parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        rest = parts[3:]
    else:
        return method, url.path
    if len(rest) >= 3 and rest[0] == "namespaces":
        rest = rest[2:]
    if not rest:
        return method, url.path
    if method == "GET":
        if len(rest) > 1:
            return "GET", rest[0]
        query = parse_qs(url.query)
        if query.get("watch", [""])[0] in ("1", "true"):
            return "WATCH", rest[0]
        # a page after the first (continue=...) is part of the same LIST
        return ("LIST_PAGE" if query.get("continue") else "LIST"), rest[0]
    return _VERBS.get(method, method), rest[0]


@dataclass
class _Head:
    raw: bytes
    first: str
    headers: dict[str, str]  # lower-cased names; enough for framing

    def length(self) -> int | None:
        value = self.headers.get("content-length")
        return int(value) if value is not None else None

    @property
    def chunked(self) -> bool:
        return "chunked" in self.headers.get("transfer-encoding", "").lower()

    @property
    def closes(self) -> bool:
        return self.headers.get("connection", "").lower() == "close"


def _read_head(reader: BinaryIO) -> _Head | None:
    lines: list[bytes] = []
    size = 0
    while True:
        line = reader.readline(_MAX_HEAD)
        if not line:
            return None
        if not lines and line in (b"\r\n", b"\n"):
            continue  # tolerated before a request line (RFC 9112 2.2)
        lines.append(line)
        size += len(line)
        if line in (b"\r\n", b"\n"):
            break
        if size > _MAX_HEAD:
            raise ValueError("header too large")
    headers = {}
    for line in lines[1:-1]:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return _Head(b"".join(lines), lines[0].decode("latin-1").strip(), headers)


def _copy_exact(reader: BinaryIO, n: int, out: socket.socket) -> None:
    while n > 0:
        piece = reader.read(min(n, _PIECE))
        if not piece:
            raise ConnectionError("body cut short")
        out.sendall(piece)
        n -= len(piece)


def _read_body(reader: BinaryIO, head: _Head) -> bytes:
    """A request body, re-framed as it came (requests from clients are small)."""
    n = head.length()
    if n is not None:
        return reader.read(n)
    if not head.chunked:
        return b""
    parts = []
    while True:
        size_line = reader.readline(_MAX_HEAD)
        parts.append(size_line)
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            while (trailer := reader.readline(_MAX_HEAD)) not in (b"\r\n", b"\n", b""):
                parts.append(trailer)
            parts.append(b"\r\n")
            return b"".join(parts)
        parts.append(reader.read(size + 2))


class _Stream:
    """A response being relayed to a client: writes to the client happen under its lock,
    so a cut falls between two chunks."""

    def __init__(self, client: ssl.SSLSocket, upstream: socket.socket, resource: str) -> None:
        self.client, self.upstream, self.resource = client, upstream, resource
        self.opened = time.monotonic()
        self.lock = threading.Lock()
        self.cut = False


class _Upstream:
    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.reader: BinaryIO = sock.makefile("rb")
        self.used = False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.reader.close()
            self.sock.close()


class ApiProxy:
    """Serves https://127.0.0.1:<port> and forwards everything to the apiserver."""

    def __init__(self, upstream_port: int, *, cert: str, key: str, ca: str) -> None:
        self._upstream_port = upstream_port
        self._server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._server_ctx.load_cert_chain(cert, key)
        self._server_ctx.set_alpn_protocols(["http/1.1"])  # clients must not try HTTP/2
        self._client_ctx = ssl.create_default_context(cafile=ca)
        self._client_ctx.set_alpn_protocols(["http/1.1"])
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self._listener.getsockname()[1]}"
        self._cond = threading.Condition()
        self._log: list[Request] = []
        self._streams: set[_Stream] = set()
        self._held: set[tuple[str, str]] = set()  # (verb, resource) kept waiting
        self._clients: set[socket.socket] = set()
        self._upstreams: set[_Upstream] = set()
        self._stopping = False
        self._thread = threading.Thread(target=self._accept, name="apiproxy", daemon=True)

    def __enter__(self) -> ApiProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Close every connection, both sides: an apiserver with a watch still open to it
        takes its whole grace period to stop."""
        with self._cond:
            self._stopping = True
            sockets = list(self._clients) + [u.sock for u in self._upstreams]
            self._cond.notify_all()
        self._listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    # --- what the harness asks ---------------------------------------------------------

    def requests(self, since: float = 0.0) -> list[Request]:
        with self._cond:
            return [r for r in self._log if r.at >= since]

    def counts(self, since: float = 0.0) -> Counter[tuple[str, str]]:
        return Counter((r.verb, r.resource) for r in self.requests(since))

    def first(self, verb: str, resource: str, since: float) -> float | None:
        """When the first such request arrived at or after `since`."""
        return next(
            (r.at for r in self.requests(since) if r.verb == verb and r.resource == resource),
            None,
        )

    def open_watches(self, resource: str, older_than: float = 0.0) -> int:
        """Watches of `resource` streaming now that opened at least `older_than` s ago."""
        since = time.monotonic() - older_than
        with self._cond:
            return sum(1 for s in self._streams if s.resource == resource and s.opened <= since)

    def cut_watches(self, resource: str, *, hold: bool, expire: bool = False) -> int:
        """End every open watch of `resource` as the apiserver ends one (the last chunk),
        with `expire` after a 410 Expired ERROR event (the client must LIST again), and
        with `hold` keep new ones waiting until release(). Returns how many ended."""
        last = b"0\r\n\r\n"
        if expire:
            event = json.dumps(EXPIRED).encode() + b"\n"
            last = b"%x\r\n%s\r\n" % (len(event), event) + last
        with self._cond:
            if hold:
                self._held.add(("WATCH", resource))
            streams = [s for s in self._streams if s.resource == resource]
        for stream in streams:
            with stream.lock:
                if stream.cut:
                    continue
                stream.cut = True
                with contextlib.suppress(OSError):
                    stream.client.sendall(last)
            # wakes the relaying thread out of its read; the client connection stays open
            with contextlib.suppress(OSError):
                socket.socket.shutdown(stream.upstream, socket.SHUT_RDWR)
        return len(streams)

    def hold(self, verb: str, resource: str) -> None:
        """Keep requests `verb` (as classify() names them) of `resource` waiting, once
        logged, until release()."""
        with self._cond:
            self._held.add((verb, resource))

    def release(self) -> None:
        with self._cond:
            self._held.clear()
            self._cond.notify_all()

    # --- serving ---------------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _connect(self) -> _Upstream:
        raw = socket.create_connection(("127.0.0.1", self._upstream_port))
        # Without it, Nagle and delayed ACKs add ~40 ms to small writes the apiserver never sees.
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        upstream = _Upstream(self._client_ctx.wrap_socket(raw, server_hostname="127.0.0.1"))
        with self._cond:
            self._upstreams.add(upstream)
        return upstream

    def _close(self, upstream: _Upstream) -> None:
        with self._cond:
            self._upstreams.discard(upstream)
        upstream.close()

    def _serve(self, raw: socket.socket) -> None:
        with self._cond:
            if self._stopping:
                raw.close()
                return
            self._clients.add(raw)
        upstream: _Upstream | None = None
        try:
            client = self._server_ctx.wrap_socket(raw, server_side=True)
            reader: BinaryIO = client.makefile("rb")
            while True:
                head = _read_head(reader)
                if head is None:
                    return
                body = _read_body(reader, head)
                method, target = head.first.split(" ")[:2]
                verb, resource = classify(method, target)
                self._record(Request(time.monotonic(), verb, resource))
                upstream, response = self._exchange(upstream, head.raw + body)
                keep = self._relay(upstream, response, client, method, verb, resource)
                if not keep:
                    self._close(upstream)
                    upstream = None
                if head.closes or response.closes:
                    return
        except (OSError, ValueError):
            return
        finally:
            if upstream is not None:
                self._close(upstream)
            with self._cond:
                self._clients.discard(raw)
            with contextlib.suppress(OSError):
                raw.close()

    def _record(self, request: Request) -> None:
        """Log it; a request of a held kind waits here until release()."""
        kind = (request.verb, request.resource)
        with self._cond:
            self._log.append(request)
            self._cond.wait_for(lambda: kind not in self._held or self._stopping, timeout=30)

    def _exchange(self, upstream: _Upstream | None, request: bytes) -> tuple[_Upstream, _Head]:
        """Send one request; a reused connection the apiserver closed while idle is
        replaced once (the request never reached it)."""
        for _ in range(2):
            if upstream is None:
                upstream = self._connect()
            reused = upstream.used
            upstream.used = True
            try:
                upstream.sock.sendall(request)
                response = _read_head(upstream.reader)
            except OSError:
                if not reused:
                    raise
                response = None
            if response is not None:
                return upstream, response
            self._close(upstream)
            upstream = None
            if not reused:
                break
        raise ConnectionError("the apiserver closed the connection")

    def _relay(
        self,
        upstream: _Upstream,
        response: _Head,
        client: ssl.SSLSocket,
        method: str,
        verb: str,
        resource: str,
    ) -> bool:
        """Relay one response; False when the upstream connection cannot be reused."""
        client.sendall(response.raw)
        status = int(response.first.split(" ")[1])
        if method == "HEAD" or status in (204, 304) or status < 200:
            return True
        n = response.length()
        if n is not None:
            _copy_exact(upstream.reader, n, client)
            return True
        if not response.chunked:  # delimited by the end of the connection
            while piece := upstream.reader.read(_PIECE):
                client.sendall(piece)
            return False
        stream = _Stream(client, upstream.sock, resource)
        if verb == "WATCH":
            with self._cond:
                self._streams.add(stream)
        try:
            return self._relay_chunks(upstream.reader, stream)
        finally:
            with self._cond:
                self._streams.discard(stream)

    @staticmethod
    def _relay_chunks(reader: BinaryIO, stream: _Stream) -> bool:
        try:
            while True:
                size_line = reader.readline(_MAX_HEAD)
                if not size_line:
                    raise ConnectionError("chunked body cut short")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    while reader.readline(_MAX_HEAD) not in (b"\r\n", b"\n", b""):
                        pass  # trailers: the apiserver sends none
                    with stream.lock:
                        if not stream.cut:
                            stream.client.sendall(b"0\r\n\r\n")
                    return not stream.cut
                data = reader.read(size + 2)
                with stream.lock:
                    if stream.cut:
                        return False
                    stream.client.sendall(size_line + data)
        except (OSError, ValueError):
            if stream.cut:
                return False  # cut_watches() ended it; the client saw a whole response
            raise
