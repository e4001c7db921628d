"""When the rest of a write starts: after the path is quiet, at the latest after
its patience, at once when it is in the way (on a thread of its own if need be);
when it cannot wait; and a stop runs them side by side.

A fake clock and ``take(wait=False)`` decide without threads; the threaded tests
wait on events that the finishers set, never on a fixed sleep.
"""

from __future__ import annotations

import threading

import pytest

from controller.finishers import Finishers


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def finishers(clock: Clock, *, count: int = 8) -> Finishers[str, str]:
    """Not started: the test takes what is due itself."""
    return Finishers(count, lambda key, item, waited: None, quiet=0.05, patience=5.0, clock=clock)


def due(f: Finishers[str, str]) -> tuple[str, str, float] | None:
    """What is due now, with the seconds it waited to the millisecond."""
    taken = f.take(wait=False)
    return taken and (taken[0], taken[1], round(taken[2], 3))


def test_a_rest_handed_during_a_workers_path_waits_until_the_path_has_been_quiet():
    clock = Clock()
    f = finishers(clock)
    with f.path():
        assert f.hand("a", "rest of a")
        clock.now += 1.0
        assert f.take(wait=False) is None  # a worker is on its way to a PATCH
    assert f.take(wait=False) is None  # the path just became quiet
    clock.now += 0.049
    assert f.take(wait=False) is None
    clock.now += 0.002
    assert due(f) == ("a", "rest of a", 1.051)  # and how long it waited


def test_the_path_is_quiet_only_once_every_worker_has_left_it():
    clock = Clock()
    f = finishers(clock)
    f.hand("a", "rest")
    with f.path():
        with f.path():
            pass
        clock.now += 1.0
        assert f.take(wait=False) is None  # the other worker is still on it
    clock.now += 0.06
    assert due(f) == ("a", "rest", 1.06)


def test_a_rest_waits_no_longer_than_its_patience_however_busy_the_path():
    clock = Clock()
    f = finishers(clock)
    with f.path():
        f.hand("a", "rest")
        clock.now += 4.9
        assert f.take(wait=False) is None
        clock.now += 0.2
        assert due(f) == ("a", "rest", 5.1)


def test_the_oldest_rest_starts_first():
    clock = Clock()
    f = finishers(clock)
    for key in ("b", "a", "c"):
        f.hand(key, key)
        clock.now += 0.001
    clock.now += 1.0
    taken = [f.take(wait=False) for _ in range(4)]
    assert [t and t[0] for t in taken] == ["b", "a", "c", None]


def test_a_rest_wanted_again_starts_at_once_ahead_of_older_ones():
    clock = Clock()
    f = finishers(clock)
    with f.path():
        f.hand("old", "old")
        f.hand("wanted", "wanted")
        f.expedite("wanted")
        f.expedite("unknown")  # nothing of it waits: nothing to hurry
        assert f.take(wait=False) == ("wanted", "wanted", 0.0)
        assert f.take(wait=False) is None  # the other still waits for a quiet path
        assert len(f) == 1


def test_a_rest_taken_after_another_is_told_how_long_it_waited():
    # With one finisher, the second waits until the first is done. The wait holds no
    # thread: the reconcile's deadline does not count it.
    clock = Clock()
    f = finishers(clock, count=1)
    f.hand("a", "a")
    f.hand("b", "b")
    clock.now += 1.0
    assert f.take(wait=False) == ("a", "a", 1.0)  # the one finisher runs it
    clock.now += 3.0
    f.done()
    assert f.take(wait=False) == ("b", "b", 4.0)


def test_no_more_rests_wait_than_there_is_room_for():
    f: Finishers[str, str] = Finishers(1, lambda key, item, waited: None, room=2, clock=Clock())
    assert f.hand("a", "a") and f.hand("b", "b")
    assert not f.hand("c", "c")  # the worker finishes it itself
    assert not f.hand("a", "again")  # nor is a key waiting handed twice


def test_once_a_rest_is_overdue_the_workers_finish_their_own():
    # Past its patience a rest is due: if it still waits, no finisher was free for it
    # and the finishers do not keep up; the workers slow down to their pace.
    clock = Clock()
    f = finishers(clock, count=1)
    with f.path():
        assert f.hand("a", "a")
        clock.now += 5.0
        assert f.hand("b", "b")  # "a" is due, not yet overdue
        clock.now += 0.01
        assert not f.hand("c", "c")
        assert due(f) == ("a", "a", 5.01)
        assert f.hand("c", "c")  # the oldest waiting ("b") is within its patience


def test_a_rest_in_the_way_starts_on_a_thread_of_its_own_when_no_finisher_is_free():
    release, slow, second = threading.Event(), threading.Event(), threading.Event()
    ran: list[str] = []

    def finish(key: str, item: str, waited: float) -> None:
        ran.append(key)
        if key == "slow":
            slow.set()
            release.wait(10)  # a GCP operation that takes long
        else:
            second.set()

    f: Finishers[str, str] = Finishers(1, finish, quiet=0.0, patience=60.0)
    f.start()
    try:
        f.hand("slow", "slow")
        f.expedite("slow")
        assert slow.wait(10)  # the one finisher has taken it
        with f.path():  # never quiet: only the expedite starts it
            assert f.hand("wanted", "wanted")
            f.expedite("wanted")
            assert second.wait(10)  # while the finisher still waits on the slow one
        assert ran == ["slow", "wanted"]
    finally:
        release.set()
        f.stop()


def test_nothing_is_handed_in_once_stopping():
    clock = Clock()
    f = finishers(clock)
    f.stop()
    assert not f.hand("a", "a")


def test_started_finishers_run_a_rest_once_the_path_is_quiet():
    done = threading.Event()
    ran: list[tuple[str, str]] = []

    def finish(key: str, item: str, waited: float) -> None:
        ran.append((key, item))
        done.set()

    f: Finishers[str, str] = Finishers(2, finish, quiet=0.0, patience=60.0)
    f.start()
    try:
        with f.path():
            f.hand("a", "rest")
        assert done.wait(10)
        assert ran == [("a", "rest")]
    finally:
        f.stop()


def test_stop_runs_every_waiting_rest_before_it_returns():
    ran: list[str] = []
    f: Finishers[str, str] = Finishers(4, lambda key, item, waited: ran.append(key), patience=60.0)
    f.start()
    with f.path():  # the path is never quiet: only the stop starts them
        for key in ("a", "b", "c"):
            assert f.hand(key, key)
        f.stop()
    assert sorted(ran) == ["a", "b", "c"]
    assert len(f) == 0


@pytest.mark.parametrize("count", [1, 4])
def test_stop_runs_the_waiting_rests_side_by_side_not_one_after_another(count: int):
    # Each rest returns only once all three run at the same time: one after
    # another, the first would wait alone and the barrier would break. With one
    # finisher, the stop starts a thread for each of the others.
    together = threading.Barrier(3, timeout=10)
    broken: list[str] = []

    def finish(key: str, item: str, waited: float) -> None:
        try:
            together.wait()
        except threading.BrokenBarrierError:
            broken.append(key)

    f: Finishers[str, str] = Finishers(count, finish, patience=60.0)
    f.start()
    with f.path():
        for key in ("a", "b", "c"):
            assert f.hand(key, key)
        f.stop()
    assert broken == []
    assert len(f) == 0


@pytest.mark.parametrize("count", [0, 2])
def test_stop_with_nothing_waiting_returns(count: int):
    f: Finishers[str, str] = Finishers(count, lambda key, item, waited: None)
    f.start()
    f.stop()
    assert len(f) == 0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_finisher_that_died_makes_them_unhealthy():
    def finish(key: str, item: str, waited: float) -> None:
        raise RuntimeError("a bug")

    f: Finishers[str, str] = Finishers(1, finish, quiet=0.0)
    f.start()
    assert f.healthy()
    f.hand("a", "rest")
    for thread in f._threads:
        thread.join(10)
    assert not f.healthy()
