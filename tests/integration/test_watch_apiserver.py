"""The informer against the real kube-apiserver: initial list, event order, restarts, stop.

The restart test follows Kubernetes' own: an apiserver with --min-request-timeout=7
closes every watch after 7-14 s while one object is written every half second;
the observed sequence must equal the written one, with a single LIST.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from controller.kube.client import KubeClient, StaticTokenAuth
from controller.kube.watch import Informer
from tests.ground.controlplane import ControlPlane
from tests.wait import eventually

pytestmark = pytest.mark.apiserver


class CountingSession(requests.Session):
    """Records every response, so LISTs and WATCHes are counted apart from the informer."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.hooks["response"].append(self._record)

    def _record(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        if response.request.method == "GET":
            self.urls.append(response.url)

    def count(self, watch: bool) -> int:
        return sum(
            ("true" in parse_qs(urlsplit(u).query).get("watch", [])) == watch for u in self.urls
        )


def kube(plane: ControlPlane, session: requests.Session | None = None) -> KubeClient:
    return KubeClient(
        plane.url, auth=StaticTokenAuth(plane.admin_token), verify=plane.ca_file, session=session
    )


def ingresses(namespace: str) -> str:
    return f"/apis/networking.k8s.io/v1/namespaces/{namespace}/ingresses"


def ingress(name: str, service: str = "web") -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name},
        "spec": {"defaultBackend": {"service": {"name": service, "port": {"number": 80}}}},
    }


class Running:
    """An informer in a thread that records (event type, key, stored value) per change."""

    def __init__(
        self, client: KubeClient, path: str, transform: Callable[[dict[str, Any]], Any], **kw: Any
    ) -> None:
        self.changes: list[tuple[str, str, Any]] = []
        self.informer: Informer[Any] = Informer(
            client, path, transform=transform, on_change=self._record, **kw
        )
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.informer.run, args=(self.stop,), daemon=True)
        self.thread.start()
        assert self.informer.synced.wait(30)

    def _record(self, kind: str, key: str, old: Any, new: Any) -> None:
        self.changes.append((kind, key, self.informer.get(key)))

    def end(self, within: float = 30.0) -> None:
        self.stop.set()
        self.thread.join(within)
        assert not self.thread.is_alive()


@pytest.fixture
def run() -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(*args: Any, **kw: Any) -> Running:
        started.append(Running(*args, **kw))
        return started[-1]

    yield start
    for running in started:
        running.stop.set()
        running.thread.join(30)


def test_informer_lists_existing_ingresses_into_the_store_as_transformed(apiserver, namespace, run):
    client = kube(apiserver)
    for name, service in [("a", "web-a"), ("b", "web-b"), ("c", "web-c")]:
        client.post(ingresses(namespace), ingress(name, service))

    def backend(obj: dict[str, Any]) -> str:
        return str(obj["spec"]["defaultBackend"]["service"]["name"])

    running = run(client, ingresses(namespace), backend)
    assert sorted(running.informer.items()) == [
        (f"{namespace}/a", "web-a"),
        (f"{namespace}/b", "web-b"),
        (f"{namespace}/c", "web-c"),
    ]
    assert sorted(running.changes) == [("SYNC", k, v) for k, v in running.informer.items()]
    assert running.informer.stats.lists == 1


def test_added_modified_deleted_reach_on_change_in_order(apiserver, namespace, run):
    client = kube(apiserver)

    def timeout(obj: dict[str, Any]) -> str | None:
        return (obj["metadata"].get("annotations") or {}).get("example.com/timeout")

    running = run(client, ingresses(namespace), timeout)
    assert running.changes == []
    client.post(ingresses(namespace), ingress("chat"))
    client.patch(
        f"{ingresses(namespace)}/chat", {"metadata": {"annotations": {"example.com/timeout": "1h"}}}
    )
    client.delete(f"{ingresses(namespace)}/chat")
    key = f"{namespace}/chat"
    eventually(lambda: len(running.changes) >= 3)
    assert running.changes == [
        ("ADDED", key, None),
        ("MODIFIED", key, "1h"),
        ("DELETED", key, None),
    ]
    assert running.informer.keys() == []


def test_watches_closed_by_the_server_lose_and_repeat_nothing_without_a_relist(
    apiserver_factory, run
):
    plane = apiserver_factory(min_request_timeout=7)
    client = kube(plane)
    namespace = f"w-{uuid.uuid4().hex[:8]}"
    client.post(
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
    )
    client.post(ingresses(namespace), ingress("chat"))

    def version_and_value(obj: dict[str, Any]) -> tuple[str, str | None]:
        meta = obj["metadata"]
        return meta["resourceVersion"], (meta.get("annotations") or {}).get("n")

    session = CountingSession()
    # Watch timeouts 0: no timeoutSeconds, so the server closes each watch after 7-14 s.
    running = run(
        kube(plane, session),
        ingresses(namespace),
        version_and_value,
        min_watch_timeout=0,
        max_watch_timeout=0,
    )
    written = []
    for n in range(40):
        patched = client.patch(
            f"{ingresses(namespace)}/chat", {"metadata": {"annotations": {"n": str(n)}}}
        )
        written.append((patched["metadata"]["resourceVersion"], str(n)))
        time.sleep(0.5)  # the pace of the writer, as in the upstream test

    def observed() -> list[Any]:
        return [value for kind, _, value in running.changes if kind == "MODIFIED"]

    eventually(lambda: len(observed()) >= len(written))
    assert observed() == written
    stats = running.informer.stats
    assert stats.lists == 1
    assert stats.watches > 1
    assert stats.relists_after_410 == 0
    assert session.count(watch=False) == 1
    assert session.count(watch=True) == stats.watches


def test_stop_ends_run_within_the_read_timeout(apiserver, namespace, run):
    running = run(kube(apiserver), ingresses(namespace), lambda obj: None, read_timeout=30.0)
    eventually(lambda: running.informer.stats.watches == 1)
    running.end(within=30.0)
    assert running.informer.stats.restarts == 0
