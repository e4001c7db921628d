"""EventRecorder: what it posts, how it aggregates repeats, rate-limits and fails."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest

from controller.kube.client import KubeError
from controller.kube.events import EventQueue, EventRecorder, ObjectRef, Owed
from tests.wait import eventually

START = 1_700_000_000.0  # 2023-11-14T22:13:20Z
INGRESS = ObjectRef(
    kind="Ingress", api_version="networking.k8s.io/v1", namespace="shop", name="chat", uid="u-1"
)
OTHER = ObjectRef(
    kind="Ingress", api_version="networking.k8s.io/v1", namespace="shop", name="web", uid="u-2"
)
EVENTS = "/api/v1/namespaces/shop/events"


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class RecordingSink:
    """Stands in for our KubeClient: records each call, names posted Events like the server."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.post_error: Exception | None = None
        self.patch_error: Exception | None = None
        self._posted = 0

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("POST", path, body))
        if self.post_error is not None:
            raise self.post_error
        self._posted += 1
        name = f"{body['metadata']['generateName']}{self._posted:05d}"
        return {**body, "metadata": {**body["metadata"], "name": name}}

    def patch(
        self, path: str, body: dict[str, Any], *, patch_type: str = "merge"
    ) -> dict[str, Any]:
        assert patch_type == "merge"
        self.calls.append(("PATCH", path, body))
        if self.patch_error is not None:
            raise self.patch_error
        return body

    def methods(self) -> list[str]:
        return [method for method, _, _ in self.calls]


def kube_error(status: int) -> KubeError:
    return KubeError(status=status, reason="NotFound" if status == 404 else "", message="")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
def recorder(sink: RecordingSink, clock: FakeClock) -> EventRecorder:
    return EventRecorder(sink, component="timeout-ctl", instance="pod-1", clock=clock)


def test_first_record_posts_a_complete_core_v1_event(
    recorder: EventRecorder, sink: RecordingSink
) -> None:
    recorder.record(INGRESS, "Warning", "InvalidTimeout", "bad value", action="Validate")

    assert sink.calls == [
        (
            "POST",
            EVENTS,
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"generateName": "chat.", "namespace": "shop"},
                "involvedObject": {
                    "kind": "Ingress",
                    "apiVersion": "networking.k8s.io/v1",
                    "namespace": "shop",
                    "name": "chat",
                    "uid": "u-1",
                },
                "type": "Warning",
                "reason": "InvalidTimeout",
                "message": "bad value",
                "action": "Validate",
                "source": {"component": "timeout-ctl"},
                "reportingComponent": "timeout-ctl",
                "reportingInstance": "pod-1",
                "firstTimestamp": "2023-11-14T22:13:20Z",
                "lastTimestamp": "2023-11-14T22:13:20Z",
                "count": 1,
            },
        )
    ]


def test_repeats_patch_count_and_last_timestamp_of_the_posted_event(
    recorder: EventRecorder, sink: RecordingSink, clock: FakeClock
) -> None:
    for _ in range(3):
        recorder.record(INGRESS, "Warning", "InvalidTimeout", "bad value")
        clock.now += 10

    assert sink.methods() == ["POST", "PATCH", "PATCH"]
    assert sink.calls[1:] == [
        ("PATCH", f"{EVENTS}/chat.00001", {"count": 2, "lastTimestamp": "2023-11-14T22:13:30Z"}),
        ("PATCH", f"{EVENTS}/chat.00001", {"count": 3, "lastTimestamp": "2023-11-14T22:13:40Z"}),
    ]


def test_different_message_posts_a_new_event(recorder: EventRecorder, sink: RecordingSink) -> None:
    recorder.record(INGRESS, "Warning", "InvalidTimeout", "bad value")
    recorder.record(INGRESS, "Warning", "InvalidTimeout", "another bad value")
    recorder.record(INGRESS, "Normal", "InvalidTimeout", "bad value")
    recorder.record(OTHER, "Warning", "InvalidTimeout", "bad value")

    assert sink.methods() == ["POST", "POST", "POST", "POST"]


def test_repeat_one_resync_later_still_aggregates(
    recorder: EventRecorder, sink: RecordingSink, clock: FakeClock
) -> None:
    recorder.record(INGRESS, "Warning", "SharedBackendConflict", "shared")
    clock.now += 660  # a 10-minute resync with its full jitter
    recorder.record(INGRESS, "Warning", "SharedBackendConflict", "shared")

    assert sink.methods() == ["POST", "PATCH"]


def test_repeat_after_the_aggregate_window_posts_a_new_event(
    recorder: EventRecorder, sink: RecordingSink, clock: FakeClock
) -> None:
    recorder.record(INGRESS, "Normal", "TimeoutApplied", "3600s")
    clock.now += 3601
    recorder.record(INGRESS, "Normal", "TimeoutApplied", "3600s")

    assert sink.methods() == ["POST", "POST"]
    assert sink.calls[1][2]["count"] == 1


def test_patch_of_an_expired_event_posts_a_new_one_and_aggregates_into_it(
    recorder: EventRecorder, sink: RecordingSink
) -> None:
    recorder.record(INGRESS, "Warning", "ForeignBackend", "refused")
    sink.patch_error = kube_error(404)
    recorder.record(INGRESS, "Warning", "ForeignBackend", "refused")
    sink.patch_error = None
    recorder.record(INGRESS, "Warning", "ForeignBackend", "refused")

    assert sink.methods() == ["POST", "PATCH", "POST", "PATCH"]
    assert sink.calls[2][2]["count"] == 1
    assert sink.calls[3][1:] == (
        f"{EVENTS}/chat.00002",
        {"count": 2, "lastTimestamp": "2023-11-14T22:13:20Z"},
    )


def test_failed_patch_keeps_the_count_for_the_next_repeat(
    recorder: EventRecorder, sink: RecordingSink
) -> None:
    recorder.record(INGRESS, "Warning", "ForeignBackend", "refused")
    sink.patch_error = kube_error(500)
    recorder.record(INGRESS, "Warning", "ForeignBackend", "refused")
    sink.patch_error = None
    recorder.record(INGRESS, "Warning", "ForeignBackend", "refused")

    assert sink.methods() == ["POST", "PATCH", "PATCH"]
    assert [body["count"] for _, _, body in sink.calls[1:]] == [2, 2]


def test_rate_limit_drops_events_beyond_the_burst_for_that_object_only(
    sink: RecordingSink, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = EventRecorder(sink, component="c", instance="i", clock=clock, per_object_burst=3)
    caplog.set_level(logging.DEBUG, logger="controller.kube.events")
    for n in range(5):
        recorder.record(INGRESS, "Warning", "Reason", f"message {n}")
    recorder.record(OTHER, "Warning", "Reason", "message")

    assert [body["message"] for _, _, body in sink.calls] == [
        "message 0",
        "message 1",
        "message 2",
        "message",
    ]
    assert "rate limit" in caplog.text


def test_repeats_count_against_the_rate_limit(sink: RecordingSink, clock: FakeClock) -> None:
    recorder = EventRecorder(sink, component="c", instance="i", clock=clock, per_object_burst=3)
    for _ in range(5):
        recorder.record(INGRESS, "Warning", "Reason", "same")

    assert sink.methods() == ["POST", "PATCH", "PATCH"]


def test_rate_limit_refills_one_token_per_refill_period(
    sink: RecordingSink, clock: FakeClock
) -> None:
    recorder = EventRecorder(
        sink,
        component="c",
        instance="i",
        clock=clock,
        per_object_burst=2,
        per_object_refill=1 / 300,
    )
    for n in range(3):
        recorder.record(INGRESS, "Warning", "Reason", f"first {n}")
    assert len(sink.calls) == 2

    clock.now += 299
    recorder.record(INGRESS, "Warning", "Reason", "too early")
    clock.now += 1
    recorder.record(INGRESS, "Warning", "Reason", "refilled")
    recorder.record(INGRESS, "Warning", "Reason", "over again")

    assert [body["message"] for _, _, body in sink.calls[2:]] == ["refilled"]


def test_refill_never_exceeds_the_burst(sink: RecordingSink, clock: FakeClock) -> None:
    recorder = EventRecorder(sink, component="c", instance="i", clock=clock, per_object_burst=2)
    recorder.record(INGRESS, "Warning", "Reason", "first")
    clock.now += 1_000_000
    for n in range(4):
        recorder.record(INGRESS, "Warning", "Reason", f"later {n}")

    assert len(sink.calls) == 3


@pytest.mark.parametrize("error", [kube_error(403), kube_error(500), ConnectionError("refused")])
def test_failures_are_swallowed_and_logged(
    recorder: EventRecorder,
    sink: RecordingSink,
    caplog: pytest.LogCaptureFixture,
    error: Exception,
) -> None:
    sink.post_error = error

    recorder.record(INGRESS, "Warning", "InvalidTimeout", "bad value")

    assert sink.methods() == ["POST"]
    assert "could not record event Warning InvalidTimeout on Ingress shop/chat" in caplog.text


def test_failed_post_is_posted_again_on_the_next_repeat(
    recorder: EventRecorder, sink: RecordingSink
) -> None:
    sink.post_error = kube_error(500)
    recorder.record(INGRESS, "Warning", "InvalidTimeout", "bad value")
    sink.post_error = None
    recorder.record(INGRESS, "Warning", "InvalidTimeout", "bad value")

    assert sink.methods() == ["POST", "POST"]


def test_message_is_truncated_to_1024_bytes_on_a_character_boundary(
    recorder: EventRecorder, sink: RecordingSink
) -> None:
    recorder.record(INGRESS, "Warning", "Long", "x" + "é" * 600)
    recorder.record(OTHER, "Warning", "Long", "y" * 1024)

    first, second = (body["message"] for _, _, body in sink.calls)
    assert first == "x" + "é" * 511
    assert len(first.encode()) == 1023
    assert second == "y" * 1024


def test_memory_of_posted_events_is_bounded(sink: RecordingSink, clock: FakeClock) -> None:
    recorder = EventRecorder(sink, component="c", instance="i", clock=clock, cache_size=2)
    for message in ("a", "b", "c", "a"):
        recorder.record(INGRESS, "Normal", "Reason", message)

    assert sink.methods() == ["POST", "POST", "POST", "POST"]


def test_concurrent_repeats_aggregate_into_one_event_with_increasing_counts(
    sink: RecordingSink, clock: FakeClock
) -> None:
    recorder = EventRecorder(sink, component="c", instance="i", clock=clock, per_object_burst=1000)
    start = threading.Barrier(8)

    def repeat() -> None:
        start.wait()
        for _ in range(10):
            recorder.record(INGRESS, "Warning", "Reason", "same")

    threads = [threading.Thread(target=repeat) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)

    assert sink.methods() == ["POST"] + ["PATCH"] * 79
    assert [body["count"] for _, _, body in sink.calls[1:]] == list(range(2, 81))


def test_object_ref_of_an_api_object() -> None:
    ingress = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"namespace": "shop", "name": "chat", "uid": "u-1", "labels": {}},
    }
    assert ObjectRef.of(ingress) == INGRESS


def test_a_slow_post_for_one_object_does_not_hold_up_another_objects_events():
    release = threading.Event()

    class SlowForChat(RecordingSink):
        def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
            if body["involvedObject"]["uid"] == INGRESS.uid:
                assert release.wait(10), "the other object's Event never went out"
            return super().post(path, body)

    sink = SlowForChat()
    recorder = EventRecorder(sink, component="c", instance="i", clock=FakeClock())
    slow = threading.Thread(
        target=recorder.record, args=(INGRESS, "Normal", "TimeoutApplied", "set")
    )
    slow.start()
    recorder.record(OTHER, "Normal", "TimeoutApplied", "set")  # must not wait for chat's
    release.set()
    slow.join(10)
    assert [c[2]["involvedObject"]["name"] for c in sink.calls] == ["web", "chat"]


def test_events_wait_out_an_outage_in_order_and_go_out_when_it_ends():
    sink = RecordingSink()
    sink.post_error = KubeError(503, "ServiceUnavailable", "etcd is down")
    queue = EventQueue(EventRecorder(sink, component="c", instance="i", clock=FakeClock()))
    waits: list[float] = []
    stop = threading.Event()

    def wait(stop: threading.Event, seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            sink.post_error = None  # the apiserver is back

    queue._wait = wait
    for name in ("a", "b", "c"):
        queue.record(OTHER, "Normal", "TimeoutApplied", name)
    thread = threading.Thread(target=queue.run, args=(stop,))
    thread.start()
    try:
        for _ in range(500):
            if len(queue) == 0:
                break
            threading.Event().wait(0.01)
    finally:
        stop.set()
        thread.join(10)
    posted = [body["message"] for method, _, body in sink.calls if body.get("message")]
    assert posted[-3:] == ["a", "b", "c"] and len(waits) == 3
    assert len(queue) == 0


def test_flush_at_stop_gives_up_at_the_first_event_the_apiserver_cannot_take():
    sink = RecordingSink()
    sink.post_error = KubeError(503, "ServiceUnavailable", "down")
    queue = EventQueue(EventRecorder(sink, component="c", instance="i", clock=FakeClock()))
    for name in ("a", "b", "c"):
        queue.record(OTHER, "Normal", "TimeoutApplied", name)
    queue.flush()
    assert len(sink.calls) == 1  # one try, not one per Event


def test_a_refused_event_is_dropped_not_retried():
    sink = RecordingSink()
    sink.post_error = KubeError(422, "Invalid", "bad")
    recorder = EventRecorder(sink, component="c", instance="i", clock=FakeClock())
    assert recorder.deliver(OTHER, "Normal", "TimeoutApplied", "x") is True


# --- the queue: spam filter first, fair across namespaces, bounded -----------------------


def ingress(namespace: str, name: str) -> ObjectRef:
    return ObjectRef("Ingress", "networking.k8s.io/v1", namespace, name, f"{namespace}/{name}")


def queue_of(sink: RecordingSink, **options: Any) -> tuple[EventQueue, list[str]]:
    drops: list[str] = []
    recorder = EventRecorder(sink, component="c", instance="i", clock=FakeClock())
    return EventQueue(recorder, on_drop=drops.append, **options), drops


def posted(sink: RecordingSink) -> list[str]:
    """namespace/name of each Event posted, in order."""
    return [
        f"{body['involvedObject']['namespace']}/{body['involvedObject']['name']}"
        for method, _, body in sink.calls
        if method == "POST"
    ]


def drain(queue: EventQueue) -> None:
    stop = threading.Event()
    stop.set()
    queue.run(stop)  # stopped at once: flushes what waits, on this thread


def test_namespaces_take_turns_so_a_flood_delays_only_its_own():
    sink = RecordingSink()
    queue, _ = queue_of(sink)
    for i in range(300):
        queue.record(ingress("flood", f"bad{i}"), "Warning", "InvalidTimeout", "bad")
    queue.record(ingress("shop", "chat"), "Normal", "TimeoutApplied", "set 3600s")
    queue.record(ingress("blog", "home"), "Normal", "TimeoutApplied", "set 60s")
    drain(queue)
    order = posted(sink)
    assert order[:4] == ["flood/bad0", "shop/chat", "blog/home", "flood/bad1"]
    assert len(order) == 302


def test_a_repeat_of_a_waiting_event_is_folded_into_it():
    sink = RecordingSink()
    queue, _ = queue_of(sink)
    for _ in range(3):
        queue.record(INGRESS, "Warning", "SharedBackendConflict", "shared")
    assert len(queue) == 1
    drain(queue)
    assert sink.methods() == ["POST"] and sink.calls[0][2]["count"] == 3


def test_the_rate_limit_applies_before_the_queue_and_is_counted():
    sink = RecordingSink()
    recorder = EventRecorder(
        sink, component="c", instance="i", clock=FakeClock(), per_object_burst=2
    )
    drops: list[str] = []
    queue = EventQueue(recorder, on_drop=drops.append)
    for n in range(5):
        queue.record(INGRESS, "Warning", "Reason", f"message {n}")
    # Two go in; of the three past the limit, the latest waits for the next token.
    assert len(queue) == 2 and drops == ["rate_limited"] * 2


def test_one_namespace_holds_at_most_its_share_dropping_its_oldest_warnings_first():
    sink = RecordingSink()
    queue, drops = queue_of(sink, capacity=100, per_namespace=3)
    queue.record(ingress("flood", "applied"), "Normal", "TimeoutApplied", "set")
    for i in range(5):
        queue.record(ingress("flood", f"bad{i}"), "Warning", "InvalidTimeout", "bad")
    queue.record(ingress("shop", "chat"), "Warning", "InvalidTimeout", "bad")
    assert drops == ["namespace_full"] * 3
    drain(queue)
    assert posted(sink) == ["flood/applied", "shop/chat", "flood/bad3", "flood/bad4"]


def test_a_namespace_full_of_normal_events_refuses_a_new_warning():
    sink = RecordingSink()
    queue, drops = queue_of(sink, per_namespace=2)
    queue.record(ingress("shop", "a"), "Normal", "TimeoutApplied", "set")
    queue.record(ingress("shop", "b"), "Normal", "TimeoutApplied", "set")
    queue.record(ingress("shop", "c"), "Warning", "InvalidTimeout", "bad")
    queue.record(ingress("shop", "d"), "Normal", "TimeoutRestored", "restored")
    drain(queue)
    assert drops == ["namespace_full", "namespace_full"]
    assert posted(sink) == ["shop/b", "shop/d"]  # the Warning, then the oldest Normal


def test_a_full_queue_drops_from_the_noisiest_namespace():
    sink = RecordingSink()
    queue, drops = queue_of(sink, capacity=6, per_namespace=4)
    for i in range(4):
        queue.record(ingress("noisy", f"bad{i}"), "Warning", "InvalidTimeout", "bad")
    queue.record(ingress("shop", "a"), "Warning", "InvalidTimeout", "bad")
    queue.record(ingress("blog", "b"), "Normal", "TimeoutApplied", "set")
    queue.record(ingress("blog", "c"), "Normal", "TimeoutApplied", "set")
    assert drops == ["queue_full"] and len(queue) == 6
    drain(queue)
    assert sorted(posted(sink)) == sorted(
        ["noisy/bad1", "noisy/bad2", "noisy/bad3", "shop/a", "blog/b", "blog/c"]
    )


def test_memory_has_a_ceiling_whatever_tenants_do():
    sink = RecordingSink()
    queue, drops = queue_of(sink, capacity=50, per_namespace=10)
    for t in range(20):
        for i in range(100):
            queue.record(ingress(f"tenant{t}", f"i{i}"), "Warning", "InvalidTimeout", "x" * 2000)
    assert len(queue) == 50
    assert len(drops) == 20 * 100 - 50


def test_drops_are_logged_once_an_episode(caplog: pytest.LogCaptureFixture):
    clock = FakeClock()
    sink = RecordingSink()
    recorder = EventRecorder(sink, component="c", instance="i", clock=clock)
    queue = EventQueue(recorder, per_namespace=1, clock=clock, quiet=10)
    caplog.set_level(logging.INFO, logger="controller.kube.events")

    def flood(n: int) -> None:
        for i in range(n):
            queue.record(ingress("flood", f"bad{i}"), "Warning", "InvalidTimeout", "bad")
        drain(queue)

    flood(50)
    clock.now += 11
    flood(1)  # an Event goes out, quietly: the episode ends
    flood(5)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    ended = [r for r in caplog.records if "no longer dropped" in r.getMessage()]
    assert len(warnings) == 2
    assert "1 Events already wait for namespace flood" in warnings[0].getMessage()
    assert len(ended) == 1 and "49 dropped" in ended[0].getMessage()


def test_events_that_could_not_go_out_before_stopping_are_counted():
    sink = RecordingSink()
    sink.post_error = KubeError(503, "ServiceUnavailable", "down")
    queue, drops = queue_of(sink)
    for name in ("a", "b", "c"):
        queue.record(ingress("shop", name), "Normal", "TimeoutApplied", "set")
    queue.flush()
    assert drops == ["stopped"] * 3 and len(queue) == 0


# --- what the apiserver says was told before ----------------------------------------------


def told(
    ref: ObjectRef, type: str, reason: str, message: str, *, at: str, count: int = 1
) -> dict[str, Any]:
    """An Event as the apiserver lists it."""
    return {
        "metadata": {"name": f"{ref.name}.told", "namespace": ref.namespace},
        "involvedObject": {"uid": ref.uid, "name": ref.name},
        "type": type,
        "reason": reason,
        "message": message,
        "count": count,
        "lastTimestamp": at,
        "source": {"component": "timeout-ctl"},
    }


def test_a_standing_warning_told_before_the_term_is_not_told_again(
    recorder: EventRecorder, sink: RecordingSink, clock: FakeClock
) -> None:
    ten_minutes_ago = "2023-11-14T22:03:20Z"
    recorder.recall(
        [told(INGRESS, "Warning", "SharedBackendConflict", "shared", at=ten_minutes_ago)]
    )
    recorder.record(INGRESS, "Warning", "SharedBackendConflict", "shared")
    assert sink.calls == []
    clock.now += 60  # then it happens again, in this term: the count goes on
    recorder.record(INGRESS, "Warning", "SharedBackendConflict", "shared")
    assert sink.calls == [
        (
            "PATCH",
            f"{EVENTS}/chat.told",
            {"count": 2, "lastTimestamp": "2023-11-14T22:14:20Z"},
        )
    ]


def test_a_normal_event_told_before_the_term_is_counted_not_skipped(
    recorder: EventRecorder, sink: RecordingSink
) -> None:
    # Each TimeoutApplied tells of a write of its own: never skipped as told.
    recorder.recall(
        [told(INGRESS, "Normal", "TimeoutApplied", "set", at="2023-11-14T22:03:20Z", count=4)]
    )
    recorder.record(INGRESS, "Normal", "TimeoutApplied", "set")
    assert sink.calls == [
        ("PATCH", f"{EVENTS}/chat.told", {"count": 5, "lastTimestamp": "2023-11-14T22:13:20Z"})
    ]


def test_events_told_long_ago_or_by_others_are_not_recalled(
    recorder: EventRecorder, sink: RecordingSink
) -> None:
    two_hours_ago = "2023-11-14T20:13:20Z"
    theirs = told(OTHER, "Warning", "InvalidTimeout", "bad", at="2023-11-14T22:13:00Z")
    theirs["source"] = {"component": "someone-else"}
    recalled = recorder.recall(
        [told(INGRESS, "Warning", "InvalidTimeout", "bad", at=two_hours_ago), theirs, {"x": 1}]
    )
    recorder.record(INGRESS, "Warning", "InvalidTimeout", "bad")
    recorder.record(OTHER, "Warning", "InvalidTimeout", "bad")
    assert recalled == 0 and sink.methods() == ["POST", "POST"]


def test_an_owed_event_is_not_told_again_if_told_since_it_was_owed(
    recorder: EventRecorder, sink: RecordingSink, clock: FakeClock
) -> None:
    decided = clock.now
    recorder.record(INGRESS, "Normal", "TimeoutApplied", "set")  # told after the write
    assert recorder.deliver(INGRESS, "Normal", "TimeoutApplied", "set", since=decided)
    assert sink.methods() == ["POST"]
    # One told before an earlier write, with the same words, is not this one's.
    assert recorder.deliver(INGRESS, "Normal", "TimeoutApplied", "set", since=decided + 60)
    assert sink.methods() == ["POST", "PATCH"]


def ingresses(n: int) -> list[ObjectRef]:
    return [dataclasses.replace(INGRESS, name=f"chat-{i}", uid=f"uid-{i}") for i in range(n)]


def test_every_event_recalled_is_kept_so_none_owed_is_posted_again(
    sink: RecordingSink, clock: FakeClock
) -> None:
    # More Events told before the term than the recorder keeps of its own posts (a new
    # leader at 10,000 Ingresses recalls 10,000 TimeoutApplied), and this term's posts
    # come before the owed ones are fed: each owed one is still known as told.
    recorder = EventRecorder(sink, component="timeout-ctl", instance="i", clock=clock, cache_size=2)
    before = ingresses(6)
    recalled = recorder.recall(
        [told(ing, "Normal", "TimeoutApplied", "set", at="2023-11-14T22:08:20Z") for ing in before]
    )
    for i in range(3):
        recorder.record(dataclasses.replace(OTHER, uid=f"other-{i}"), "Normal", "Applied", "x")
    for ing in before:
        assert recorder.deliver(ing, "Normal", "TimeoutApplied", "set", since=START - 600)
    assert recalled == 6 and sink.methods() == ["POST"] * 3
    # Its own posts are remembered within cache_size, as before.
    recorder.record(dataclasses.replace(OTHER, uid="other-0"), "Normal", "Applied", "x")
    assert sink.methods() == ["POST"] * 4


def test_what_a_term_recalls_has_a_ceiling(sink: RecordingSink, clock: FakeClock) -> None:
    recorder = EventRecorder(
        sink, component="timeout-ctl", instance="i", clock=clock, cache_size=2, recall_limit=4
    )
    before = ingresses(6)
    recorder.recall(
        [told(ing, "Normal", "TimeoutApplied", "set", at="2023-11-14T22:08:20Z") for ing in before]
    )
    for ing in before:
        recorder.deliver(ing, "Normal", "TimeoutApplied", "set", since=START - 600)
    posted = [body["involvedObject"]["uid"] for _, _, body in sink.calls]
    assert posted == ["uid-4", "uid-5"]  # listed after the first four


def test_posters_side_by_side_keep_events_going_while_one_post_is_slow():
    other_posted = threading.Event()

    class SlowForChat(RecordingSink):
        def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
            if body["involvedObject"]["uid"] == INGRESS.uid:
                assert other_posted.wait(10), "the other Event waited for the slow one"
            posted = super().post(path, body)
            other_posted.set()
            return posted

    sink = SlowForChat()
    queue, drops = queue_of(sink, posters=2)
    queue.record(INGRESS, "Normal", "TimeoutApplied", "set")
    queue.record(OTHER, "Normal", "TimeoutApplied", "set")
    stop = threading.Event()
    thread = threading.Thread(target=queue.run, args=(stop,))
    thread.start()
    try:
        for _ in range(1000):
            if len(sink.calls) == 2:
                break
            threading.Event().wait(0.01)
    finally:
        stop.set()
        thread.join(10)
    assert [c[2]["involvedObject"]["name"] for c in sink.calls] == ["web", "chat"]
    assert not drops and len(queue) == 0


# --- the Events earlier writes owe, told when a term begins ---------------------------------


def running(queue: EventQueue, until: Callable[[], object]) -> None:
    """Run the queue's posters until ``until`` holds, then stop them."""
    stop = threading.Event()
    thread = threading.Thread(target=queue.run, args=(stop,))
    thread.start()
    try:
        eventually(until, what="the queue settled")
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_owed_events_the_apiserver_has_take_no_slot_no_token_and_are_not_dropped():
    # A restart at 1,200 Ingresses in one namespace: each write owes its TimeoutApplied,
    # which the apiserver has (listed when the term began).
    sink = RecordingSink()
    recorder = EventRecorder(
        sink, component="timeout-ctl", instance="i", clock=FakeClock(), per_object_burst=1
    )
    drops: list[str] = []
    queue = EventQueue(recorder, per_namespace=500, on_drop=drops.append)
    refs = [ingress("shop", f"app{i}") for i in range(1200)]
    recorder.recall(
        [told(r, "Normal", "TimeoutApplied", "set", at="2023-11-14T22:12:20Z") for r in refs]
    )
    queue.owe(lambda: [Owed(r, "Normal", "TimeoutApplied", "set", START - 60) for r in refs])
    running(queue, lambda: not queue.owes())
    assert sink.calls == [] and drops == [] and len(queue) == 0
    queue.record(refs[0], "Warning", "InvalidTimeout", "bad")  # its one token is still there
    assert len(queue) == 1 and drops == []


def test_owed_events_go_in_as_the_queue_drains_and_none_is_dropped():
    # The same restart, the Events lost meanwhile (a kill before they went out).
    waiting: list[int] = []

    class Watching(RecordingSink):
        def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
            waiting.append(len(queue))
            return super().post(path, body)

    sink = Watching()
    queue, drops = queue_of(sink, per_namespace=500)
    refs = [ingress("shop", f"app{i}") for i in range(1200)]
    queue.owe(lambda: [Owed(r, "Normal", "TimeoutApplied", "set", START - 60) for r in refs])
    running(queue, lambda: not queue.owes() and len(queue) == 0)
    assert sorted(posted(sink)) == sorted(f"shop/app{i}" for i in range(1200))
    assert drops == []
    # Never more than half the namespace's share: the rest stays free for new Events.
    assert max(waiting) <= 250


def test_an_owed_event_already_waiting_is_not_counted_twice():
    sink = RecordingSink()
    queue, _ = queue_of(sink)
    queue.record(INGRESS, "Normal", "TimeoutApplied", "set")
    queue.record(INGRESS, "Normal", "TimeoutApplied", "set", since=START - 60)
    drain(queue)
    assert sink.methods() == ["POST"] and sink.calls[0][2]["count"] == 1


def test_owed_events_not_taken_in_at_stop_are_not_counted_as_dropped():
    # The records still owe them: the next term tells them.
    sink = RecordingSink()
    queue, drops = queue_of(sink, per_namespace=4)
    owed = [
        Owed(ingress("shop", f"a{i}"), "Normal", "TimeoutApplied", "set", START) for i in range(9)
    ]
    queue.owe(lambda: owed)
    drain(queue)
    assert drops == [] and not queue.owes()


def test_a_cold_start_outrunning_the_posters_sets_owed_events_aside_and_tells_them_later():
    # Writes in one namespace faster than Events go out: 10 TimeoutApplied where 4 may
    # wait. Each is owed by its record, so the ones without room are told from the
    # records once there is room: nothing dropped, nothing told twice.
    sink = RecordingSink()
    queue, drops = queue_of(sink, capacity=8, per_namespace=4)
    owing: list[Owed] = []
    queue.owe(lambda: list(owing), reasons={"TimeoutApplied"})
    # A restore's record may be gone after it: its Event is no record's to tell again.
    queue.record(ingress("shop", "gone"), "Normal", "TimeoutRestored", "restored")
    for i in range(10):
        ref = ingress("shop", f"app{i}")
        owing.append(Owed(ref, "Normal", "TimeoutApplied", "set", START))  # the outcome record
        queue.record(ref, "Normal", "TimeoutApplied", "set")  # then its Event
    assert len(queue) == 4 and drops == ["namespace_full"]
    running(queue, lambda: not queue.owes() and len(queue) == 0)
    assert sorted(posted(sink)) == sorted(f"shop/app{i}" for i in range(10))
    assert [body["count"] for _, _, body in sink.calls] == [1] * 10
    assert drops == ["namespace_full"]


def test_an_event_alike_an_owed_one_waiting_is_one_occurrence_and_is_told():
    sink = RecordingSink()
    queue, _ = queue_of(sink)
    queue.recorder.record(INGRESS, "Normal", "TimeoutApplied", "set")  # told before
    queue.record(INGRESS, "Normal", "TimeoutApplied", "set", since=START - 60)  # settled
    assert len(queue) == 0
    queue.record(OTHER, "Normal", "TimeoutApplied", "set", since=START - 60)
    queue.record(OTHER, "Normal", "TimeoutApplied", "set")  # its write's own Event
    drain(queue)
    assert sink.methods() == ["POST", "POST"] and sink.calls[1][2]["count"] == 1


# --- the latest Warning past the rate limit -------------------------------------------------


def test_the_latest_event_past_the_rate_limit_goes_out_when_its_token_comes():
    # Churn on one Ingress: its final InvalidTimeout is what its owner must read.
    sink = RecordingSink()
    clock = FakeClock()
    recorder = EventRecorder(sink, component="c", instance="i", clock=clock, per_object_burst=2)
    drops: list[str] = []
    queue = EventQueue(recorder, on_drop=drops.append)
    for n in range(5):
        queue.record(INGRESS, "Warning", "InvalidTimeout", f"timeout 'x{n}' is not a duration")
    assert drops == ["rate_limited"] * 2  # x2, then x3, each replaced by a later one
    stop = threading.Event()
    thread = threading.Thread(target=queue.run, args=(stop,))
    thread.start()
    try:
        eventually(lambda: len(sink.calls) == 2, what="the burst posted")
        clock.now += 300  # one token
        eventually(lambda: len(sink.calls) == 3, what="the latest Warning posted")
    finally:
        stop.set()
        thread.join(10)
    assert [body["message"] for _, _, body in sink.calls] == [
        "timeout 'x0' is not a duration",
        "timeout 'x1' is not a duration",
        "timeout 'x4' is not a duration",
    ]
    assert drops == ["rate_limited"] * 2


def test_events_held_for_a_token_have_a_ceiling():
    sink = RecordingSink()
    recorder = EventRecorder(
        sink, component="c", instance="i", clock=FakeClock(), per_object_burst=0
    )
    drops: list[str] = []
    queue = EventQueue(recorder, capacity=3, per_namespace=3, on_drop=drops.append)
    for i in range(10):
        queue.record(ingress("flood", f"bad{i}"), "Warning", "InvalidTimeout", "bad")
    queue.record(INGRESS, "Normal", "TimeoutApplied", "set")
    assert drops == ["rate_limited"] * 8  # the oldest held go: 3 are kept
    drain(queue)  # stopped: what is held goes with it, counted
    assert drops == ["rate_limited"] * 8 + ["stopped"] * 3


def test_a_flooding_namespace_cannot_push_out_anothers_held_event():
    # One Ingress of a quiet namespace past its rate limit, then a namespace of many:
    # past the ceiling, the flood lets go of its own, and the quiet one's Warning stays.
    sink = RecordingSink()
    clock = FakeClock()
    recorder = EventRecorder(sink, component="c", instance="i", clock=clock, per_object_burst=1)
    drops: list[str] = []
    queue = EventQueue(recorder, capacity=3, per_namespace=3, on_drop=drops.append)
    flood = [ingress("flood", f"bad{i}") for i in range(10)]
    for ref in [INGRESS, *flood]:
        assert recorder.admit(ref.uid)  # each has spent its token already
    queue.record(INGRESS, "Warning", "InvalidTimeout", "timeout 'x' is not a duration")
    for ref in flood:
        queue.record(ref, "Warning", "InvalidTimeout", "bad")
    assert drops == ["rate_limited"] * 8
    assert (len(queue), queue.waiting()) == (0, 3)  # the gauge counts the held ones too
    clock.now += 300  # a token for each
    running(queue, lambda: len(sink.calls) == 3)
    assert sorted(posted(sink)) == ["flood/bad8", "flood/bad9", "shop/chat"]


def test_an_event_held_for_a_token_is_not_told_after_a_later_one_of_its_object():
    sink = RecordingSink()
    clock = FakeClock()
    recorder = EventRecorder(sink, component="c", instance="i", clock=clock, per_object_burst=1)
    drops: list[str] = []
    queue = EventQueue(recorder, on_drop=drops.append)
    queue.record(INGRESS, "Warning", "InvalidTimeout", "timeout 'x' is not a duration")
    queue.record(INGRESS, "Warning", "InvalidTimeout", "timeout 'y' is not a duration")  # held
    clock.now += 300
    queue.record(INGRESS, "Normal", "TimeoutApplied", "set")  # fixed: told with the token
    clock.now += 300  # the held one's token would have come by now
    queue.record(OTHER, "Normal", "TimeoutApplied", "set")
    running(queue, lambda: "shop/web" in posted(sink))
    assert [body["message"] for _, _, body in sink.calls] == [
        "timeout 'x' is not a duration",
        "set",
        "set",
    ]
    assert drops == ["rate_limited"]
