"""A TCP proxy on loopback between a client under test and a real server, for faults.

It passes bytes both ways, and on command resets every connection, or goes
silent (accepts, reads, forwards nothing: a half-open peer), or refuses. Each
upstream socket's local port is kept, so a server's log can tell this client's
requests from anyone else's.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from typing import Literal

Mode = Literal["pass", "silent", "refuse"]


class Proxy:
    """``Proxy(upstream_port).start()``; connect to ``proxy.port`` instead of the server."""

    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self._upstream = (host, upstream_port)
        self._listener = socket.create_server((host, 0))
        self.port: int = self._listener.getsockname()[1]
        self.mode: Mode = "pass"
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self.upstream_ports: set[int] = set()
        self.connections = 0
        self._closed = threading.Event()

    def start(self) -> Proxy:
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()
        return self

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self.reset()

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset(self) -> None:
        """Close every open connection with a RST, as a restarting middlebox would."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for s in pair:
                with contextlib.suppress(OSError):
                    s.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                    s.close()

    def cut(self, mode: Mode = "silent") -> None:
        """From now on: "silent" swallows every byte (open connections too), "refuse"
        resets them and refuses new ones."""
        self.mode = mode
        if mode == "refuse":
            self.reset()

    def heal(self) -> None:
        self.mode = "pass"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.mode == "refuse":
                client.close()
                continue
            try:
                upstream = socket.create_connection(self._upstream, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._pairs.append((client, upstream))
                self.upstream_ports.add(upstream.getsockname()[1])
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        peers = {client: upstream, upstream: client}
        try:
            while not self._closed.is_set():
                readable, _, _ = select.select(list(peers), [], [], 0.2)
                for s in readable:
                    data = s.recv(65536)
                    if not data:
                        return
                    if self.mode == "pass":
                        peers[s].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for s in (client, upstream):
                with contextlib.suppress(OSError):
                    s.close()
