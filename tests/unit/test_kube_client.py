"""KubeClient without an apiserver: auth sources, kubeconfig, HTTP errors, paging, line splitting.

HTTP behaviour is checked against ReplayServer, which plays back recorded
responses in order on loopback; it knows nothing of Kubernetes.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from controller.kube.client import (
    Auth,
    ClientCertAuth,
    ExecAuth,
    KubeClient,
    KubeError,
    StaticTokenAuth,
    TokenFileAuth,
    _stream_list,
)

# --- a loopback replay of recorded HTTP responses -------------------------------


@dataclass
class Reply:
    """One recorded response. chunks are sent as HTTP/1.1 chunks; hold keeps it open."""

    status: int = 200
    chunks: Sequence[bytes] = ()
    headers: dict[str, str] = field(default_factory=dict)
    hold: bool = False


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


def json_reply(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, [json.dumps(obj).encode()], headers or {})


def event(type_: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": type_, "object": obj}).encode() + b"\n"


class ReplayServer:
    """Plays `replies` in order; when they run out, holds each request open until close()."""

    def __init__(self, replies: Sequence[Reply] = ()) -> None:
        self.replies = list(replies)
        self.seen: list[Seen] = []
        self.release = threading.Event()
        lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def handle_one(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                with lock:
                    server.seen.append(
                        Seen(
                            self.command,
                            url.path,
                            dict(parse_qsl(url.query)),
                            dict(self.headers),
                            self.rfile.read(length),
                        )
                    )
                    reply = server.replies.pop(0) if server.replies else Reply(hold=True)
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for chunk in reply.chunks:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                    if reply.hold:
                        server.release.wait()
                        self.close_connection = True
                        return
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_one

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def client(self, auth: Auth | None = None) -> KubeClient:
        return KubeClient(self.url, auth=auth or StaticTokenAuth("t0ken"), timeout=(5.0, 10.0))

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> ReplayServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ingress(name: str, rv: str, namespace: str = "ns") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace, "resourceVersion": rv}}


# --- watch streams ---------------------------------------------------------------


def test_watch_yields_an_event_while_the_connection_stays_open():
    # iter_lines() could keep this line until more bytes arrive, which never happens here.
    with ReplayServer([Reply(chunks=[event("ADDED", ingress("a", "5"))], hold=True)]) as srv:
        stream = srv.client().watch(
            "/x", resource_version="4", timeout_seconds=300, read_timeout=5.0
        )
        with stream:
            assert next(stream)["object"]["metadata"]["name"] == "a"


def test_watch_joins_an_event_split_across_chunks():
    one, two = event("ADDED", ingress("a", "5")), event("MODIFIED", ingress("a", "6"))
    chunks = [one[:7], one[7:20], one[20:] + two[:3], two[3:]]
    with ReplayServer([Reply(chunks=chunks)]) as srv:
        stream = srv.client().watch(
            "/x", resource_version="4", timeout_seconds=300, read_timeout=5.0
        )
        assert [(e["type"], e["object"]["metadata"]["resourceVersion"]) for e in stream] == [
            ("ADDED", "5"),
            ("MODIFIED", "6"),
        ]


def test_watch_yields_a_last_event_that_has_no_trailing_newline():
    last = event("BOOKMARK", {"metadata": {"resourceVersion": "9"}}).rstrip(b"\n")
    with ReplayServer([Reply(chunks=[event("ADDED", ingress("a", "5")), last])]) as srv:
        stream = srv.client().watch(
            "/x", resource_version="4", timeout_seconds=300, read_timeout=5.0
        )
        assert [e["type"] for e in stream] == ["ADDED", "BOOKMARK"]


def test_watch_asks_for_bookmarks_from_the_given_version_with_a_server_timeout():
    with ReplayServer([Reply()]) as srv:
        list(
            srv.client().watch(
                "/apis/x",
                resource_version="42",
                timeout_seconds=321,
                read_timeout=5.0,
                params={"labelSelector": "a=b"},
            )
        )
        assert srv.seen[0].query == {
            "watch": "true",
            "resourceVersion": "42",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": "321",
            "labelSelector": "a=b",
        }


def test_watch_without_timeout_seconds_leaves_the_duration_to_the_server():
    with ReplayServer([Reply()]) as srv:
        list(srv.client().watch("/x", resource_version="1", timeout_seconds=None, read_timeout=5.0))
        assert "timeoutSeconds" not in srv.seen[0].query


def test_abort_from_another_thread_ends_a_watch_blocked_in_a_read():
    with ReplayServer([Reply(chunks=[event("ADDED", ingress("a", "5"))], hold=True)]) as srv:
        stream = srv.client().watch(
            "/x", resource_version="4", timeout_seconds=300, read_timeout=60.0
        )
        assert next(stream)["type"] == "ADDED"
        ended = threading.Event()

        def drain() -> None:
            try:
                for _ in stream:
                    pass
            except Exception:
                pass
            ended.set()

        threading.Thread(target=drain, daemon=True).start()
        stream.abort()
        assert ended.wait(10)


# --- errors, retries, paging -----------------------------------------------------


def test_error_status_becomes_kube_error_with_reason_message_and_retry_after():
    status = {
        "kind": "Status",
        "status": "Failure",
        "reason": "TooManyRequests",
        "message": "slow down",
        "code": 429,
    }
    replay = ReplayServer([json_reply(status, 429, {"Retry-After": "3"})])
    with replay as srv, pytest.raises(KubeError) as info:
        srv.client().get("/x")
    assert (info.value.status, info.value.reason, info.value.message) == (
        429,
        "TooManyRequests",
        "slow down",
    )
    assert info.value.retry_after == 3.0


def test_error_without_status_body_keeps_the_http_reason():
    with (
        ReplayServer([Reply(502, [b"<html>bad gateway</html>"])]) as srv,
        pytest.raises(KubeError) as info,
    ):
        srv.client().get("/x")
    assert info.value.status == 502
    assert info.value.reason == "Bad Gateway"
    assert info.value.retry_after is None


def test_401_rereads_the_token_file_and_retries_once(tmp_path):
    token = tmp_path / "token"
    token.write_text("old\n")
    replies = [json_reply({}), json_reply({}, 401), json_reply({"ok": True})]
    with ReplayServer(replies) as srv:
        client = srv.client(TokenFileAuth(str(token), clock=lambda: 0.0))
        client.get("/x")
        token.write_text("new\n")
        assert client.get("/x") == {"ok": True}
        assert [s.headers["Authorization"] for s in srv.seen] == [
            "Bearer old",
            "Bearer old",
            "Bearer new",
        ]


def test_a_second_401_is_raised():
    with ReplayServer([json_reply({}, 401), json_reply({}, 401)]) as srv:
        with pytest.raises(KubeError) as info:
            srv.client().get("/x")
        assert info.value.status == 401
        assert len(srv.seen) == 2


def test_token_file_is_reread_once_a_minute(tmp_path):
    token = tmp_path / "token"
    token.write_text("first")
    now = [1000.0]
    auth = TokenFileAuth(str(token), clock=lambda: now[0])
    assert auth.headers() == {"Authorization": "Bearer first"}
    token.write_text("second")
    now[0] += 59.0
    assert auth.headers() == {"Authorization": "Bearer first"}
    now[0] += 1.0
    assert auth.headers() == {"Authorization": "Bearer second"}


def test_list_follows_continue_tokens_without_resource_version():
    pages = [
        json_reply(
            {"metadata": {"continue": "c1", "resourceVersion": "7"}, "items": [ingress("a", "5")]}
        ),
        json_reply({"metadata": {"resourceVersion": "7"}, "items": [ingress("b", "6")]}),
    ]
    with ReplayServer(pages) as srv:
        items, rv = srv.client().list("/x", {"resourceVersion": "0"}, limit=1)
        assert [i["metadata"]["name"] for i in items] == ["a", "b"]
        assert rv == "7"
        assert [s.query for s in srv.seen] == [
            {"resourceVersion": "0", "limit": "1"},
            {"limit": "1", "continue": "c1"},
        ]


def test_list_keeps_only_what_keep_returns_page_by_page():
    pages = [
        json_reply(
            {"metadata": {"continue": "c1", "resourceVersion": "7"}, "items": [ingress("a", "5")]}
        ),
        json_reply({"metadata": {"resourceVersion": "7"}, "items": [ingress("b", "6")]}),
    ]
    kept_after_page: list[int] = []
    kept: list[str] = []

    def keep(obj: dict[str, Any]) -> str:
        kept.append(obj["metadata"]["name"])
        kept_after_page.append(len(srv.seen))
        return str(obj["metadata"]["name"]).upper()

    with ReplayServer(pages) as srv:
        items, rv = srv.client().list("/x", limit=1, keep=keep)
    assert (items, rv) == (["A", "B"], "7")
    assert kept_after_page == [1, 2]  # each item kept as its page arrived


def test_list_raises_when_the_continue_token_expired_with_the_token_that_goes_on():
    expired = {
        "kind": "Status",
        "reason": "Expired",
        "message": "continue expired",
        "code": 410,
        "metadata": {"continue": "inconsistent"},
    }
    pages = [
        json_reply(
            {"metadata": {"continue": "c1", "resourceVersion": "7"}, "items": [ingress("a", "5")]}
        ),
        json_reply(expired, 410),
    ]
    with ReplayServer(pages) as srv, pytest.raises(KubeError) as raised:
        srv.client().list("/x")
    assert (raised.value.status, raised.value.continue_token) == (410, "inconsistent")


LIST_BODY: dict[str, Any] = {
    "kind": "IngressList",
    "apiVersion": "networking.k8s.io/v1",
    "metadata": {"resourceVersion": "12345", "continue": "tok", "remainingItemCount": 7},
    "items": [
        {"metadata": {"name": "a", "annotations": {"x": 'é ∂ \\ " ]} ,'}}, "n": -1.5e3},
        {"metadata": {"name": "b"}, "list": [1, [2, {"c": None}], True, False]},
        {"metadata": {"name": "c"}, "big": "z" * 5000},
    ],
}


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 100_000])
def test_a_list_body_is_parsed_item_by_item_whatever_the_chunk_boundaries(size):
    body = json.dumps(LIST_BODY, ensure_ascii=False, indent=1).encode()
    chunks = iter([body[i : i + size] for i in range(0, len(body), size)])
    got: list[dict[str, Any]] = []
    rest = _stream_list(chunks, got.append)
    assert got == LIST_BODY["items"]
    assert rest == {k: v for k, v in LIST_BODY.items() if k != "items"}


def test_each_item_is_handed_on_before_the_next_one_is_read():
    items = [*LIST_BODY["items"][:2], {"metadata": {"name": "c"}, "big": "z" * 1_000_000}]
    body = json.dumps({**LIST_BODY, "items": items}).encode()
    read: list[int] = []
    handed: list[tuple[str, int]] = []

    def chunks() -> Any:
        for i in range(0, len(body), 1024):
            read.append(i)
            yield body[i : i + 1024]

    _stream_list(chunks(), lambda item: handed.append((item["metadata"]["name"], read[-1])))
    # Most of "c" (1 MB) is still unread when "a" and "b" have been handed on.
    assert [name for name, _ in handed] == ["a", "b", "c"]
    assert handed[1][1] < 200_000


@pytest.mark.parametrize(
    "body",
    [b'{"items": [{"a": 1}', b'{"items": [1]}', b'{"items": [{"a": 1}] "x": 2}', b"[]"],
)
def test_a_broken_list_body_raises_value_error(body):
    with pytest.raises(ValueError):
        _stream_list(iter([body]), lambda item: None)


@pytest.mark.parametrize(
    ("patch_type", "content_type"),
    [
        ("merge", "application/merge-patch+json"),
        ("strategic", "application/strategic-merge-patch+json"),
        ("json", "application/json-patch+json"),
    ],
)
def test_patch_sends_the_content_type_of_its_patch_type(patch_type, content_type):
    with ReplayServer([json_reply({})]) as srv:
        srv.client().patch("/x", {"a": 1}, patch_type=patch_type)
        assert srv.seen[0].headers["Content-Type"] == content_type
        assert json.loads(srv.seen[0].body) == {"a": 1}


def test_debug_log_names_method_url_status_and_never_the_token(caplog):
    caplog.set_level(logging.DEBUG, logger="controller.kube.client")
    with ReplayServer([json_reply({})]) as srv:
        srv.client(StaticTokenAuth("s3cr3t-t0ken")).get("/apis/x", {"limit": "5"})
        url = f"{srv.url}/apis/x?limit=5"
    line = next(r.getMessage() for r in caplog.records if url in r.getMessage())
    assert line.startswith("GET ")
    assert " 200 " in line
    assert line.endswith(" ms")
    assert "s3cr3t" not in caplog.text


def test_repr_shows_server_and_auth_kind_but_never_a_token(tmp_path):
    client = KubeClient("https://10.0.0.1:443", auth=StaticTokenAuth("s3cr3t-t0ken"))
    assert repr(client) == "KubeClient(server='https://10.0.0.1:443', auth=StaticTokenAuth())"
    config = write_kubeconfig(tmp_path, {"token": "s3cr3t-t0ken"})
    assert "s3cr3t" not in repr(KubeClient.from_kubeconfig(config))
    assert "s3cr3t" not in str(vars(KubeClient.from_kubeconfig(config)))


# --- where the server is and who we are ------------------------------------------


def write_kubeconfig(
    tmp_path: Path,
    user: dict[str, Any],
    cluster: dict[str, Any] | None = None,
    current: str = "main",
) -> str:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "c1", "cluster": cluster or {"server": "https://127.0.0.1:6443"}},
            {"name": "c2", "cluster": {"server": "https://127.0.0.2:6443"}},
        ],
        "users": [{"name": "u1", "user": user}, {"name": "u2", "user": {"token": "other"}}],
        "contexts": [
            {"name": "main", "context": {"cluster": "c1", "user": "u1"}},
            {"name": "second", "context": {"cluster": "c2", "user": "u2"}},
        ],
        "current-context": current,
    }
    path = tmp_path / "config"
    path.write_text(json.dumps(config))  # JSON is YAML
    return str(path)


def test_kubeconfig_with_a_token_uses_the_current_context(tmp_path):
    client = KubeClient.from_kubeconfig(write_kubeconfig(tmp_path, {"token": "abc"}))
    assert client.server == "https://127.0.0.1:6443"
    assert client.auth.headers() == {"Authorization": "Bearer abc"}
    assert client.verify is True


def test_kubeconfig_context_argument_wins_over_current_context(tmp_path):
    path = write_kubeconfig(tmp_path, {"token": "abc"})
    client = KubeClient.from_kubeconfig(path, context="second")
    assert client.server == "https://127.0.0.2:6443"
    assert client.auth.headers() == {"Authorization": "Bearer other"}


def test_kubeconfig_path_defaults_to_the_first_kubeconfig_entry(tmp_path, monkeypatch):
    path = write_kubeconfig(tmp_path, {"token": "abc"})
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([path, str(tmp_path / "missing")]))
    assert KubeClient.from_kubeconfig().server == "https://127.0.0.1:6443"


def test_kubeconfig_token_file_is_relative_to_the_kubeconfig(tmp_path):
    (tmp_path / "tok").write_text("from-file\n")
    client = KubeClient.from_kubeconfig(write_kubeconfig(tmp_path, {"tokenFile": "tok"}))
    assert isinstance(client.auth, TokenFileAuth)
    assert client.auth.headers() == {"Authorization": "Bearer from-file"}


def test_kubeconfig_certificate_data_goes_to_private_files(tmp_path):
    user = {
        "client-certificate-data": base64.b64encode(b"CERT").decode(),
        "client-key-data": base64.b64encode(b"KEY").decode(),
    }
    cluster = {
        "server": "https://127.0.0.1:6443",
        "certificate-authority-data": base64.b64encode(b"CA").decode(),
    }
    client = KubeClient.from_kubeconfig(write_kubeconfig(tmp_path, user, cluster))
    assert isinstance(client.auth, ClientCertAuth)
    cert, key = client.auth.cert()
    assert Path(cert).read_bytes() == b"CERT"
    assert Path(key).read_bytes() == b"KEY"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert isinstance(client.verify, str)
    assert Path(client.verify).read_bytes() == b"CA"


def test_kubeconfig_certificate_paths_are_used_as_given(tmp_path):
    user = {"client-certificate": "c.crt", "client-key": "/abs/c.key"}
    cluster = {"server": "https://127.0.0.1:6443", "certificate-authority": "ca.crt"}
    client = KubeClient.from_kubeconfig(write_kubeconfig(tmp_path, user, cluster))
    assert client.auth.cert() == (str(tmp_path / "c.crt"), "/abs/c.key")
    assert client.verify == str(tmp_path / "ca.crt")


def test_kubeconfig_insecure_skip_tls_verify_turns_verification_off(tmp_path):
    cluster = {"server": "https://127.0.0.1:6443", "insecure-skip-tls-verify": True}
    client = KubeClient.from_kubeconfig(write_kubeconfig(tmp_path, {"token": "a"}, cluster))
    assert client.verify is False


def exec_plugin(tmp_path: Path, expiry: str) -> Path:
    """A credential plugin that counts its runs and puts $PREFIX and its args in the token."""
    script = tmp_path / "plugin.py"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, pathlib, sys\n"
        "info = json.loads(os.environ['KUBERNETES_EXEC_INFO'])\n"
        "runs = pathlib.Path(__file__).with_name('runs')\n"
        "n = int(runs.read_text()) + 1 if runs.exists() else 1\n"
        "runs.write_text(str(n))\n"
        "token = f\"{os.environ['PREFIX']}-{'-'.join(sys.argv[1:])}-{n}\"\n"
        "print(json.dumps({'apiVersion': info['apiVersion'], 'kind': 'ExecCredential',\n"
        f"                  'status': {{'token': token, 'expirationTimestamp': {expiry!r}}}}}))\n"
    )
    script.chmod(0o755)
    return script


def test_kubeconfig_exec_plugin_token_is_cached_until_it_expires(tmp_path):
    exec_plugin(tmp_path, "2999-01-01T00:00:00Z")
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": "./plugin.py",
            "args": ["x"],
            "env": [{"name": "PREFIX", "value": "tok"}],
        }
    }
    client = KubeClient.from_kubeconfig(write_kubeconfig(tmp_path, user))
    assert isinstance(client.auth, ExecAuth)
    assert client.auth.headers() == {"Authorization": "Bearer tok-x-1"}
    assert client.auth.headers() == {"Authorization": "Bearer tok-x-1"}


def test_exec_plugin_runs_again_once_the_token_expired(tmp_path):
    script = exec_plugin(tmp_path, "2030-01-01T00:00:00Z")
    expiry = 1893456000.0  # 2030-01-01T00:00:00Z
    now = [expiry - 3600]
    auth = ExecAuth(str(script), env={"PREFIX": "p"}, now=lambda: now[0])
    assert auth.headers() == {"Authorization": "Bearer p--1"}
    now[0] = expiry
    assert auth.headers() == {"Authorization": "Bearer p--2"}


def test_exec_plugin_runs_again_after_a_401(tmp_path):
    script = exec_plugin(tmp_path, "2999-01-01T00:00:00Z")
    with ReplayServer([json_reply({}, 401), json_reply({"ok": True})]) as srv:
        client = srv.client(ExecAuth(str(script), ["a"], {"PREFIX": "e"}))
        assert client.get("/x") == {"ok": True}
        assert [s.headers["Authorization"] for s in srv.seen] == ["Bearer e-a-1", "Bearer e-a-2"]


def test_in_cluster_uses_service_host_ca_and_rotating_token(tmp_path):
    (tmp_path / "token").write_text("sa-token")
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    client = KubeClient.in_cluster(root=str(tmp_path), env=env, clock=lambda: 0.0)
    assert client.server == "https://[fd00::1]:443"
    assert client.verify == str(tmp_path / "ca.crt")
    assert isinstance(client.auth, TokenFileAuth)
    assert client.auth.headers() == {"Authorization": "Bearer sa-token"}


def test_from_environment_prefers_explicit_kubeconfig_then_in_cluster(tmp_path, monkeypatch):
    path = write_kubeconfig(tmp_path, {"token": "abc"})
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    assert KubeClient.from_environment(path).server == "https://127.0.0.1:6443"
    assert KubeClient.from_environment().server == "https://10.0.0.1:443"
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    monkeypatch.setenv("KUBECONFIG", path)
    assert KubeClient.from_environment().server == "https://127.0.0.1:6443"


def test_the_environments_proxy_is_honoured_as_it_was_when_the_client_was_made(monkeypatch):
    for name in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with ReplayServer([json_reply({"kind": "Namespace"})]) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        client = KubeClient(
            "http://apiserver.invalid:6443", auth=StaticTokenAuth("t0ken"), timeout=(5.0, 10.0)
        )
        # Read once, when the client is made: not scanned again at every request.
        monkeypatch.delenv("HTTP_PROXY")
        assert client.get("/api/v1/namespaces/a") == {"kind": "Namespace"}
        assert proxy.seen[0].path == "/api/v1/namespaces/a"
