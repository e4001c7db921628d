"""The informer against recorded LIST and WATCH responses: versions, relists, backoff, stop."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from controller.kube.client import KubeClient, StaticTokenAuth
from controller.kube.watch import Backoff, Informer, object_key
from tests.unit.test_kube_client import ReplayServer, Reply, event, ingress, json_reply
from tests.wait import eventually

PATH = "/apis/networking.k8s.io/v1/ingresses"


def listing(rv: str, *objs: dict[str, Any]) -> Reply:
    return json_reply(
        {"kind": "IngressList", "metadata": {"resourceVersion": rv}, "items": list(objs)}
    )


def status(code: int, reason: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "status": "Failure",
        "reason": reason,
        "message": reason,
        "code": code,
    }


def annotated(name: str, rv: str, value: str) -> dict[str, Any]:
    obj = ingress(name, rv)
    obj["metadata"]["annotations"] = {"t": value}
    return obj


class Run:
    """An informer running in a thread against a ReplayServer, with waits recorded."""

    def __init__(
        self,
        replies: Sequence[Reply],
        *,
        on_change: Callable[[str, str, object, object], None] | None = None,
        read_timeout: float = 60.0,
        kube: KubeClient | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.server = ReplayServer(replies)
        self.changes: list[tuple[str, str]] = []
        self.waits: list[float] = []
        self.stop = threading.Event()
        self.informer: Informer[str] = Informer(
            kube or self.server.client(),
            PATH,
            transform=lambda obj: (obj["metadata"].get("annotations") or {}).get("t", "-"),
            on_change=on_change or (lambda kind, key, old, new: self.changes.append((kind, key))),
            rng=random.Random(3),
            wait=lambda stop, seconds: self.waits.append(seconds),
            min_watch_timeout=300,
            max_watch_timeout=600,
            read_timeout=read_timeout,
            clock=clock or time.monotonic,
        )
        self.thread = threading.Thread(target=self.informer.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def requests(self) -> list[dict[str, str]]:
        return [seen.query for seen in self.server.seen]

    def watching(self, count: int) -> None:
        """Wait until the server got `count` WATCH requests."""
        eventually(lambda: sum("watch" in q for q in self.requests()) >= count)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()
        self.server.close()


@pytest.fixture
def start():
    runs: list[Run] = []

    def make(replies: Sequence[Reply], **kw: Any) -> Run:
        runs.append(Run(replies, **kw))
        return runs[-1]

    yield make
    for run in runs:
        if not run.server.release.is_set():
            run.finish()


def test_backoff_doubles_from_0_8_to_a_30_second_cap_with_jitter_and_resets_after_quiet():
    now = [0.0]
    backoff = Backoff(random.Random(11), lambda: now[0])
    jitter = random.Random(11)
    delays = []
    for second in range(8):
        now[0] = float(second)
        delays.append(backoff.next())
    bases = [0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0]
    assert delays == pytest.approx([b * (1 + jitter.random()) for b in bases])
    assert all(b <= d <= 2 * b for b, d in zip(bases, delays, strict=True))
    now[0] += 119.0  # less than 2 minutes after the last failure
    assert backoff.next() == pytest.approx(30.0 * (1 + jitter.random()))
    now[0] += 120.0
    assert backoff.next() == pytest.approx(0.8 * (1 + jitter.random()))


def test_object_key_is_namespace_slash_name_or_name_when_cluster_scoped():
    assert object_key(ingress("a", "1", namespace="ns")) == "ns/a"
    assert object_key({"metadata": {"name": "node-1"}}) == "node-1"


def test_first_list_is_a_paged_consistent_read_that_fills_the_store_with_transformed_values(
    start,
):
    pages = [
        json_reply(
            {
                "metadata": {"continue": "c1", "resourceVersion": "10"},
                "items": [annotated("a", "8", "x")],
            }
        ),
        json_reply({"metadata": {"resourceVersion": "10"}, "items": [ingress("b", "9")]}),
    ]
    run = start(pages)
    assert run.informer.synced.wait(10)
    assert sorted(run.informer.items()) == [("ns/a", "x"), ("ns/b", "-")]
    assert run.changes == [("SYNC", "ns/a"), ("SYNC", "ns/b")]
    run.watching(1)
    first, second, watch = run.requests()
    assert first == {"limit": "500"}  # no resourceVersion=0: the cache ignores limit
    assert second == {"limit": "500", "continue": "c1"}
    assert watch["resourceVersion"] == "10"
    assert watch["allowWatchBookmarks"] == "true"
    assert 300 <= int(watch["timeoutSeconds"]) <= 600
    run.finish()


def test_normal_end_of_a_watch_resumes_from_the_last_bookmark_without_a_list(start):
    watch = Reply(
        chunks=[
            event("ADDED", annotated("c", "11", "new")),
            event("MODIFIED", annotated("a", "12", "y")),
            event("DELETED", ingress("b", "13")),
            event("BOOKMARK", {"kind": "Ingress", "metadata": {"resourceVersion": "15"}}),
        ]
    )
    run = start([listing("10", annotated("a", "8", "x"), ingress("b", "9")), watch])
    run.watching(2)
    assert run.requests()[-1]["resourceVersion"] == "15"
    assert run.changes[2:] == [("ADDED", "ns/c"), ("MODIFIED", "ns/a"), ("DELETED", "ns/b")]
    assert sorted(run.informer.keys()) == ["ns/a", "ns/c"]
    assert run.informer.get("ns/a") == "y"
    assert run.informer.get("ns/b") is None
    stats = run.informer.stats
    # The server has the request before the informer has counted its stream (on reply).
    eventually(lambda: stats.watches == 2)
    assert (stats.lists, stats.watches, stats.restarts, stats.events) == (1, 2, 1, 4)
    run.finish()


def test_a_watch_that_lasted_resumes_at_once_and_counts_as_a_restart(start):
    clock = [0.0]

    def later(obj: dict[str, Any]) -> str:
        clock[0] += 5.0  # the watch stays open a while before each event
        return str((obj["metadata"].get("annotations") or {}).get("t", "-"))

    watch = Reply(chunks=[event("MODIFIED", annotated("a", "12", "y"))])
    run = start([listing("10", annotated("a", "8", "x")), watch], clock=lambda: clock[0])
    run.informer._transform = later
    run.watching(2)
    assert run.informer.stats.restarts >= 1
    assert run.waits == []
    run.finish()


def test_watches_that_end_at_once_again_and_again_back_off(start):
    replies = [listing("10"), *(Reply(chunks=[]) for _ in range(6))]
    run = start(replies)
    run.watching(6)
    assert len(run.waits) >= 4
    assert run.waits[3] > run.waits[0]  # growing, not a tight loop
    assert run.informer.stats.restarts >= 5
    run.finish()


def test_a_410_after_an_outage_lists_again_without_waiting(start):
    replies = [
        listing("10"),
        *(json_reply(status(500, "InternalError"), 500) for _ in range(4)),
        json_reply(status(410, "Gone"), 410),
        listing("30"),
    ]
    run = start(replies)
    run.watching(6)
    assert len(run.waits) == 4  # the four failures; the 410 is answered by a LIST at once
    assert run.requests()[6] == {"limit": "500"}
    run.finish()


def test_expired_error_event_relists_with_a_consistent_read_and_reports_vanished_keys(start):
    replies = [
        listing("10", ingress("a", "8"), ingress("b", "9")),
        Reply(chunks=[event("ERROR", status(410, "Expired"))]),
        listing("20", ingress("b", "9"), ingress("c", "19")),
    ]
    run = start(replies)
    run.watching(2)
    list_again, watch = run.requests()[2:]
    assert list_again == {"limit": "500"}
    assert watch["resourceVersion"] == "20"
    assert run.changes == [
        ("SYNC", "ns/a"),
        ("SYNC", "ns/b"),
        ("SYNC", "ns/b"),
        ("SYNC", "ns/c"),
        ("DELETED", "ns/a"),
    ]
    assert sorted(run.informer.keys()) == ["ns/b", "ns/c"]
    assert (run.informer.stats.lists, run.informer.stats.relists_after_410) == (2, 1)
    run.finish()


def test_http_410_on_watch_relists(start):
    replies = [listing("10"), json_reply(status(410, "Gone"), 410), listing("30")]
    run = start(replies)
    run.watching(2)
    assert run.requests()[2] == {"limit": "500"}
    assert run.requests()[3]["resourceVersion"] == "30"
    assert run.informer.stats.relists_after_410 == 1
    run.finish()


def test_too_many_requests_honours_retry_after_and_watches_again_without_a_list(start):
    throttled = json_reply(status(429, "TooManyRequests"), 429, {"Retry-After": "7"})
    run = start([listing("10"), throttled])
    run.watching(2)
    assert run.requests()[2]["resourceVersion"] == "10"
    assert run.waits and run.waits[0] >= 7.0
    assert (run.informer.stats.lists, run.informer.stats.restarts) == (1, 1)
    run.finish()


def test_other_error_event_backs_off_and_watches_again_from_the_last_version(start):
    watch = Reply(
        chunks=[event("MODIFIED", ingress("a", "12")), event("ERROR", status(500, "InternalError"))]
    )
    run = start([listing("10", ingress("a", "8")), watch])
    run.watching(2)
    assert run.requests()[2]["resourceVersion"] == "12"
    assert len(run.waits) == 1 and 0.8 <= run.waits[0] <= 1.6
    assert run.informer.stats.lists == 1
    run.finish()


def test_read_timeout_watches_again_from_the_last_version_without_a_list(start):
    silent = Reply(chunks=[event("ADDED", ingress("a", "11"))], hold=True)
    run = start([listing("10"), silent], read_timeout=0.2)
    run.watching(2)
    assert run.requests()[2]["resourceVersion"] == "11"
    assert run.informer.stats.lists == 1
    assert run.informer.stats.restarts >= 1
    run.finish()


def test_streams_that_ran_a_while_then_broke_are_watched_again_after_the_first_step(start):
    # A middlebox resetting healthy watches: the apiserver answers each time, so the
    # delay must not grow toward the cap as it would for a server that is away.
    now = [0.0]

    def clock() -> float:
        now[0] += 1.0  # every look at the clock: a second later
        return now[0]

    def silent(rv: str) -> Reply:
        return Reply(chunks=[event("ADDED", ingress("a", rv))], hold=True)

    replies = [listing("10"), silent("11"), silent("12"), silent("13"), silent("14")]
    run = start(replies, read_timeout=0.2, clock=clock)
    eventually(lambda: len(run.waits) >= 3)
    assert all(0.8 <= w <= 1.6 for w in run.waits[:3]), run.waits
    assert run.informer.stats.lists == 1
    run.finish()


def test_refused_connection_backs_off_and_keeps_trying(start):
    closed = ReplayServer()
    closed.close()  # its port now refuses connections
    kube = KubeClient(closed.url, auth=StaticTokenAuth("t"), timeout=(1.0, 1.0))
    run = start([], kube=kube)
    eventually(lambda: len(run.waits) >= 3)
    assert run.waits[0] <= 1.6 < run.waits[1]
    assert not run.informer.synced.is_set()
    run.finish()


def test_a_failing_on_change_does_not_stop_the_informer(start):
    def explode(kind: str, key: str, old: object, new: object) -> None:
        raise RuntimeError("consumer bug")

    watch = Reply(
        chunks=[
            event("ADDED", annotated("a", "11", "p")),
            event("MODIFIED", annotated("a", "12", "q")),
        ]
    )
    run = start([listing("10"), watch], on_change=explode)
    run.watching(2)
    assert run.informer.get("ns/a") == "q"
    stats = run.informer.stats
    assert stats.events == 2 and stats.lists == 1  # one stream carried both: not broken
    run.finish()


def test_stop_ends_run_while_a_watch_is_blocked_in_a_read(start):
    run = start([listing("10")], read_timeout=600.0)
    run.watching(1)
    run.stop.set()
    run.thread.join(10)
    assert not run.thread.is_alive()
    assert run.informer.stats.restarts == 0
