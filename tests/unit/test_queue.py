"""WorkQueue: de-duplication, one worker a key, delays on a fake clock, shut-down."""

from __future__ import annotations

import threading

from controller.queue import WorkQueue

JOIN = 10.0  # generous bound for a thread that should finish promptly


class FakeClock:
    """A settable clock that can also tell when a given thread is about to wait.

    get() reads the clock under the queue's lock right before it waits, so once
    a thread has read it, anything the test does next (which needs that lock)
    happens while the thread is blocked in the wait, or already has its key.
    """

    def __init__(self) -> None:
        self.now = 1000.0
        self._readers: dict[threading.Thread, threading.Event] = {}

    def __call__(self) -> float:
        read = self._readers.get(threading.current_thread())
        if read is not None:
            read.set()
        return self.now

    def read_by(self, thread: threading.Thread) -> threading.Event:
        return self._readers.setdefault(thread, threading.Event())

    def advance(self, seconds: float) -> None:
        self.now += seconds


def drain(queue: WorkQueue[str]) -> list[str]:
    """Take (and finish) every ready key, without waiting."""
    keys = []
    while (key := queue.get(timeout=0)) is not None:
        keys.append(key)
        queue.done(key)
    return keys


def test_burst_of_adds_of_one_key_collapses_into_one() -> None:
    queue: WorkQueue[str] = WorkQueue()
    for _ in range(5):
        queue.add("ns/a")
    queue.add("ns/b")
    queue.add("ns/a")

    assert len(queue) == 2
    assert drain(queue) == ["ns/a", "ns/b"]


def test_key_in_process_is_not_handed_to_a_second_worker() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("ns/a")
    assert queue.get(timeout=0) == "ns/a"

    queue.add("ns/a")

    assert queue.get(timeout=0) is None
    assert len(queue) == 0


def test_key_added_during_processing_runs_once_more_after_done() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("ns/a")
    key = queue.get(timeout=0)
    assert key == "ns/a"
    queue.add("ns/a")
    queue.add("ns/a")

    queue.done(key)

    assert drain(queue) == ["ns/a"]


def test_done_without_a_new_add_does_not_requeue() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("ns/a")
    assert drain(queue) == ["ns/a"]
    assert drain(queue) == []


def test_concurrent_workers_never_process_one_key_at_once() -> None:
    queue: WorkQueue[str] = WorkQueue()
    in_process: set[str] = set()
    overlaps: list[str] = []
    lock = threading.Lock()
    runs = 0

    def worker() -> None:
        nonlocal runs
        while (key := queue.get()) is not None:
            with lock:
                if key in in_process:
                    overlaps.append(key)
                in_process.add(key)
                runs += 1
            # Re-adding while in process is the case the queue must serialise.
            queue.add(key)
            with lock:
                in_process.discard(key)
            queue.done(key)
            with lock:
                if runs >= 2000:
                    queue.shut_down()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for key in ("a", "b", "c"):
        queue.add(key)
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN)

    assert not any(t.is_alive() for t in threads)
    assert overlaps == []
    assert runs >= 2000


def test_blocked_worker_gets_key_released_by_done_of_another() -> None:
    clock = FakeClock()
    queue: WorkQueue[str] = WorkQueue(clock=clock)
    queue.add("ns/a")
    assert queue.get(timeout=0) == "ns/a"
    queue.add("ns/a")
    got: list[str | None] = []
    second = threading.Thread(target=lambda: got.append(queue.get(timeout=JOIN)))
    blocked = clock.read_by(second)
    second.start()
    assert blocked.wait(JOIN)

    queue.done("ns/a")
    second.join(JOIN)

    assert got == ["ns/a"]


def test_add_after_becomes_ready_when_the_clock_passes_its_due_time() -> None:
    clock = FakeClock()
    queue: WorkQueue[str] = WorkQueue(clock=clock)
    queue.add_after("ns/a", 10)

    assert queue.get(timeout=0) is None
    assert queue.delayed() == 1
    clock.advance(9.9)
    assert queue.get(timeout=0) is None
    clock.advance(0.1)

    assert queue.get(timeout=0) == "ns/a"
    assert queue.delayed() == 0


def test_add_after_keeps_the_earliest_due_time() -> None:
    clock = FakeClock()
    queue: WorkQueue[str] = WorkQueue(clock=clock)
    queue.add_after("ns/a", 5)
    queue.add_after("ns/a", 50)
    queue.add_after("ns/b", 50)
    queue.add_after("ns/b", 5)

    clock.advance(5)

    assert drain(queue) == ["ns/a", "ns/b"]
    clock.advance(100)
    assert drain(queue) == []
    assert queue.delayed() == 0


def test_add_after_with_no_delay_is_a_plain_add() -> None:
    queue: WorkQueue[str] = WorkQueue(clock=FakeClock())
    queue.add_after("ns/a", 0)
    assert len(queue) == 1
    assert queue.delayed() == 0


def test_poke_wakes_a_blocked_worker_for_a_key_that_fell_due() -> None:
    clock = FakeClock()
    queue: WorkQueue[str] = WorkQueue(clock=clock)
    queue.add_after("ns/a", 30)
    got: list[str | None] = []
    worker = threading.Thread(target=lambda: got.append(queue.get(timeout=JOIN)))
    blocked = clock.read_by(worker)
    worker.start()
    assert blocked.wait(JOIN)

    clock.advance(30)
    queue.poke()
    worker.join(JOIN)

    assert got == ["ns/a"]


def test_poke_releases_due_keys_into_the_ready_count() -> None:
    clock = FakeClock()
    queue: WorkQueue[str] = WorkQueue(clock=clock)
    queue.add_after("ns/a", 1)
    clock.advance(1)
    queue.poke()
    assert (len(queue), queue.delayed()) == (1, 0)


def test_add_rate_limited_doubles_the_delay_from_5ms() -> None:
    clock = FakeClock()
    queue: WorkQueue[str] = WorkQueue(clock=clock)
    for delay in (0.005, 0.01, 0.02, 0.04, 0.08):
        queue.add_rate_limited("ns/a")
        assert _ready_after(queue, clock, "ns/a", delay)

    assert queue.failures("ns/a") == 5


def test_add_rate_limited_delay_is_capped_at_max_delay() -> None:
    clock = FakeClock()
    queue: WorkQueue[str] = WorkQueue(clock=clock, base_delay=1.0, max_delay=8.0)
    for _ in range(200):
        queue.add_rate_limited("ns/a")
        queue.poke()
        clock.advance(1000)
        drain(queue)

    queue.add_rate_limited("ns/a")
    assert _ready_after(queue, clock, "ns/a", 8.0)


def test_forget_resets_the_backoff() -> None:
    clock = FakeClock()
    queue: WorkQueue[str] = WorkQueue(clock=clock)
    for _ in range(3):
        queue.add_rate_limited("ns/a")
        clock.advance(1)
        drain(queue)

    queue.forget("ns/a")

    assert queue.failures("ns/a") == 0
    queue.add_rate_limited("ns/a")
    assert _ready_after(queue, clock, "ns/a", 0.005)


def test_shut_down_wakes_a_blocked_get() -> None:
    clock = FakeClock()
    queue: WorkQueue[str] = WorkQueue(clock=clock)
    got: list[str | None] = ["unset"]
    worker = threading.Thread(target=lambda: got.__setitem__(0, queue.get()))
    blocked = clock.read_by(worker)
    worker.start()
    assert blocked.wait(JOIN)

    queue.shut_down()
    worker.join(JOIN)

    assert not worker.is_alive()
    assert got == [None]


def test_shut_down_drops_pending_keys_and_ignores_new_ones() -> None:
    clock = FakeClock()
    queue: WorkQueue[str] = WorkQueue(clock=clock)
    queue.add("ns/a")
    queue.add_after("ns/b", 1)

    queue.shut_down()
    queue.add("ns/c")
    clock.advance(5)

    assert (len(queue), queue.delayed()) == (0, 0)
    assert queue.get(timeout=0) is None


def _ready_after(queue: WorkQueue[str], clock: FakeClock, key: str, delay: float) -> bool:
    """Whether ``key`` is held until just before ``delay`` and ready just after it."""
    clock.advance(delay * 0.99)
    held = queue.get(timeout=0) is None
    clock.advance(delay * 0.02)
    got = queue.get(timeout=0)
    if got is not None:
        queue.done(got)
    return held and got == key


def test_one_busy_lane_cannot_starve_another() -> None:
    queue: WorkQueue[str] = WorkQueue()
    for i in range(1000):
        queue.add(f"noisy/{i}", "noisy")
    queue.add("quiet/a", "quiet")
    first = [queue.get(timeout=0) for _ in range(2)]
    assert "quiet/a" in first  # its turn comes after at most one key of the busy lane


def test_lanes_take_turns_and_each_keeps_its_order() -> None:
    queue: WorkQueue[str] = WorkQueue()
    for key, lane in [("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b"), ("c1", "c"), ("b2", "b")]:
        queue.add(key, lane)
    assert drain(queue) == ["a1", "b1", "c1", "a2", "b2", "a3"]


def test_keys_of_any_hashable_type_are_deduplicated() -> None:
    queue: WorkQueue[tuple[str, str]] = WorkQueue()
    queue.add(("global", "x"), "ns")
    queue.add(("global", "x"), "other")
    assert len(queue) == 1


def test_a_key_named_from_a_long_lane_still_gets_the_turn_of_its_own_lane() -> None:
    queue: WorkQueue[str] = WorkQueue()
    for i in range(100):
        queue.add(f"noisy/{i}", "noisy")
    queue.add("quiet/web", "noisy")  # a tenant names another's backend first
    queue.add("quiet/web", "quiet")  # then its owner's change arrives
    assert len(queue) == 101
    first = [queue.get(timeout=0) for _ in range(2)]
    assert "quiet/web" in first
    taken = drain(queue)
    assert "quiet/web" not in taken and len(taken) == 99  # it ran once, not twice


def test_keys_that_go_first_are_taken_before_the_rest_of_their_lane() -> None:
    queue: WorkQueue[str] = WorkQueue(first=lambda key: key.startswith("report/"))
    for i in range(100):
        queue.add(f"backend/{i}", "shop")
    queue.add("report/chat", "shop")  # an Ingress's own Warning, after a flood of changes
    assert queue.get(timeout=0) == "report/chat"


def test_keys_that_go_first_wait_for_their_lanes_turn() -> None:
    # A tenant with a thousand reports gets its own turns, no more.
    queue: WorkQueue[str] = WorkQueue(first=lambda key: key.startswith("report/"))
    for i in range(1000):
        queue.add(f"report/{i}", "noisy")
    queue.add("backend/web", "quiet")
    first = [queue.get(timeout=0) for _ in range(2)]
    assert "backend/web" in first


def test_a_retried_key_that_goes_first_goes_first_again() -> None:
    clock = FakeClock()
    queue: WorkQueue[str] = WorkQueue(clock=clock, first=lambda key: key.startswith("report/"))
    queue.add("report/chat", "shop")
    assert queue.get(timeout=0) == "report/chat"
    queue.add("report/chat", "shop")  # changed again while it ran
    for i in range(10):
        queue.add(f"backend/{i}", "shop")
    queue.done("report/chat")
    assert queue.get(timeout=0) == "report/chat"
