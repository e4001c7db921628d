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
from controller.kube.watch import Informer, Informers
from controller.manager import ingress_paths
from tests.conftest import create_namespace
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


def test_a_list_stores_each_page_as_it_arrives_and_drops_what_is_gone(apiserver, namespace, run):
    client = kube(apiserver)
    for name in "abcde":
        client.post(ingresses(namespace), ingress(name))
    session = CountingSession()
    lists_at_sync: list[int] = []

    def transform(obj: dict[str, Any]) -> str:
        lists_at_sync.append(session.count(watch=False))
        return str(obj["metadata"]["name"])

    running = run(kube(apiserver, session), ingresses(namespace), transform, page_size=2)
    assert lists_at_sync == [1, 1, 2, 2, 3]  # the first page stored before the second is asked
    assert sorted(v for _, v in running.informer.items()) == list("abcde")


class ExpiringClient(KubeClient):
    """After the first page of the first LIST, runs ``between`` (writes), then compacts
    etcd, so that the continue token of that page has expired when it is used."""

    def __init__(self, plane: ControlPlane, between: Callable[[], None], **kw: Any) -> None:
        super().__init__(
            plane.url, auth=StaticTokenAuth(plane.admin_token), verify=plane.ca_file, **kw
        )
        self._plane = plane
        self._between: Callable[[], None] | None = between
        self.queries: list[dict[str, str]] = []

    def list_page(self, path: str, params: Any, each: Callable[[dict[str, Any]], None]) -> Any:
        self.queries.append(dict(params or {}))
        meta = super().list_page(path, params, each)
        if self._between is not None:
            between, self._between = self._between, None
            between()
            self._plane.compact()
        return meta


def test_an_expired_continue_token_goes_on_and_the_pages_before_it_are_read_again(
    apiserver_factory, run
):
    # Without its watch cache the apiserver serves every page from etcd, so a compaction
    # expires the continue token (with its cache, 1.34 and later serve the pages of a
    # list from a snapshot of the cache, which an etcd compaction does not end).
    plane = apiserver_factory(args=("--watch-cache=false",))
    client = kube(plane)
    namespace = f"x-{uuid.uuid4().hex[:8]}"
    client.post(
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
    )
    for name in ["a", "c", "d", "e", "f", "g"]:
        client.post(ingresses(namespace), ingress(name, f"web-{name}"))

    def meanwhile() -> None:
        # Changes to the first page, after it was read: a watch from the resourceVersion
        # of the pages after the 410 would never show them.
        client.patch(
            f"{ingresses(namespace)}/a",
            {"spec": {"defaultBackend": {"service": {"name": "changed", "port": {"number": 80}}}}},
        )
        client.delete(f"{ingresses(namespace)}/c")
        client.post(ingresses(namespace), ingress("b", "web-b"))
        client.post(ingresses(namespace), ingress("h", "web-h"))

    expiring = ExpiringClient(plane, meanwhile)

    def backend(obj: dict[str, Any]) -> str:
        return str(obj["spec"]["defaultBackend"]["service"]["name"])

    running = run(expiring, ingresses(namespace), backend, page_size=2)
    assert running.informer.stats.expired_continues == 1
    # The page after the 410 went on with the token the 410 carried, not from page one.
    continued = [q for q in expiring.queries if "continue" in q]
    assert continued and continued[0]["continue"] != expiring.queries[0].get("continue")
    firsts = [q for q in expiring.queries if "continue" not in q]
    assert len(firsts) == 2  # the list, and the one pass over the part read before the 410
    assert sorted(running.informer.items()) == [
        (f"{namespace}/a", "changed"),
        (f"{namespace}/b", "web-b"),
        (f"{namespace}/d", "web-d"),
        (f"{namespace}/e", "web-e"),
        (f"{namespace}/f", "web-f"),
        (f"{namespace}/g", "web-g"),
        (f"{namespace}/h", "web-h"),
    ]
    # And the watch goes on from there: a change now arrives.
    client.patch(
        f"{ingresses(namespace)}/d",
        {"spec": {"defaultBackend": {"service": {"name": "later", "port": {"number": 80}}}}},
    )
    eventually(lambda: running.informer.get(f"{namespace}/d") == "later")
    assert running.informer.stats.lists == 1


def test_a_controller_of_some_namespaces_lists_and_watches_only_those(apiserver):
    mine = [create_namespace(apiserver, "mine"), create_namespace(apiserver, "mine")]
    other = create_namespace(apiserver, "other")
    client = kube(apiserver)
    for ns in [*mine, other]:
        client.post(ingresses(ns), ingress("before"))
    session = CountingSession()
    seen: list[str] = []
    informers: Informers[str] = Informers(
        kube(apiserver, session),
        ingress_paths(mine),
        transform=lambda obj: str(obj["metadata"]["name"]),
        on_change=lambda kind, key, old, new: seen.append(key),
    )
    stop = threading.Event()
    thread = threading.Thread(target=informers.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert informers.synced.wait(30)
        for ns in [*mine, other]:
            client.post(ingresses(ns), ingress("after"))
        eventually(lambda: len(seen) == 4, what="both namespaces' Ingresses, before and after")
        assert sorted(seen) == sorted(f"{ns}/{n}" for ns in mine for n in ("before", "after"))
        assert sorted(k for k, _ in informers.items()) == sorted(seen)
        assert informers.stats.lists == 2 and informers.stats.watches == 2
        paths = {urlsplit(u).path for u in session.urls}
        assert paths == {ingresses(ns) for ns in mine}, paths
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
