"""The backend cache's freshness rules and the claim index, with an injected clock."""

from __future__ import annotations

import pytest

from controller.gcp.cache import BackendCache
from controller.index import ClaimIndex
from controller.model import Backend, BackendRef, of_cluster

UID = "0e20ca25204f6195"
A = BackendRef("global", f"k8s1-{UID[:8]}-shop-a-80-1111")
B = BackendRef("global", f"k8s1-{UID[:8]}-shop-b-80-2222")
R = BackendRef("europe-west1", f"k8s1-{UID[:8]}-e-shop-r-80-3333")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def backend(ref: BackendRef, timeout: int = 30, fingerprint: str = "f1") -> Backend:
    return Backend(ref, timeout, fingerprint, "shop/a")


def test_a_list_that_began_before_a_write_does_not_overwrite_it():
    # issue 6, item 6: the resync's list began, a worker's PATCH landed, then the list ended
    clock = Clock()
    cache = BackendCache(clock)
    began = cache.began()
    clock.now += 1
    cache.put(A, backend(A, 3600, ""), replacing="old")  # our write, after the list began
    clock.now += 1
    changed = cache.fill(["global"], [backend(A, 30, "old"), backend(B)], began)
    assert cache.get(A) == (True, backend(A, 3600, ""))
    assert changed == {B}


def test_a_list_that_saw_gcp_after_our_write_wins_even_if_it_began_before():
    # The list began while our write was in flight and read A after it was DONE and
    # someone changed it: the fingerprint is no longer the one our write replaced.
    clock = Clock()
    cache = BackendCache(clock)
    began = cache.began()
    clock.now += 1
    cache.put(A, backend(A, 3600, ""), replacing="old")
    clock.now += 1
    changed = cache.fill(["global"], [backend(A, 120, "console")], began)
    assert cache.get(A) == (True, backend(A, 120, "console"))
    assert changed == {A}


def test_a_list_that_saw_gcp_after_our_write_wins_even_if_we_hear_done_after_it():
    # The list was read after our write was DONE in GCP and someone changed it, but it
    # was taken in before we heard DONE: what our write left is older than what it saw.
    clock = Clock()
    cache = BackendCache(clock)
    cache.put(A, backend(A, 30, "old"))  # what our write was decided from
    clock.now += 1
    changed = cache.fill(["global"], [backend(A, 120, "console")], cache.began())
    clock.now += 1
    cache.put(A, backend(A, 3600, ""), replacing="old")  # DONE heard now
    assert changed == {A}
    assert cache.get(A) == (True, backend(A, 120, "console"))


def test_a_read_sent_before_a_list_began_gives_way_to_it_whenever_it_is_answered():
    # The read that learns our write's fingerprint was sent, someone changed the backend,
    # a resync's list began and saw the change, and the read's older answer came last.
    clock = Clock()
    cache = BackendCache(clock)
    cache.put(A, backend(A, 3600, ""), replacing="f1")  # our write
    clock.now += 1
    asked = cache.began()
    clock.now += 1
    began = cache.began()
    clock.now += 1
    assert cache.fill(["global"], [backend(A, 120, "f3")], began) == {A}
    clock.now += 1
    cache.put(A, backend(A, 3600, "f2"), asked=asked)
    assert cache.get(A) == (True, backend(A, 120, "f3"))


def test_a_read_sent_before_a_list_began_is_older_than_the_list():
    # Answered before the list began, still sent before it: the list is the newer view.
    clock = Clock()
    cache = BackendCache(clock)
    asked = cache.began()
    clock.now += 2
    cache.put(A, backend(A, 3600, "f2"), asked=asked)
    began = cache.began() - 1  # the list began after the read was sent
    assert cache.fill(["global"], [backend(A, 120, "f3")], began) == {A}
    assert cache.get(A) == (True, backend(A, 120, "f3"))


def test_our_write_replaces_what_a_read_before_it_showed():
    clock = Clock()
    cache = BackendCache(clock)
    cache.fill(["global"], [backend(A, 30, "old")], cache.began())
    clock.now += 1
    cache.put(A, backend(A, 3600, ""), replacing="old")
    assert cache.get(A) == (True, backend(A, 3600, ""))


def test_a_list_showing_our_write_teaches_its_fingerprint_and_changes_nothing():
    clock = Clock()
    cache = BackendCache(clock)
    cache.put(A, backend(A, 3600, ""), replacing="old")
    clock.now += 1
    assert cache.fill(["global"], [backend(A, 3600, "ours")], cache.began()) == set()
    assert cache.get(A) == (True, backend(A, 3600, "ours"))


def test_fill_reports_what_changed_behind_our_back_and_only_that():
    clock = Clock()
    cache = BackendCache(clock)
    assert cache.fill(["global"], [backend(A), backend(B)], cache.began()) == {A, B}
    clock.now += 1
    assert cache.fill(["global"], [backend(A), backend(B)], cache.began()) == set()
    clock.now += 1
    changed = cache.fill(["global"], [backend(A, 120, "f2"), backend(B)], cache.began())
    assert changed == {A}
    clock.now += 1
    assert cache.fill(["global"], [backend(A, 120, "f2")], cache.began()) == {B}  # deleted
    assert cache.get(B) == (False, None)


def test_fill_of_one_scope_leaves_the_others_alone():
    clock = Clock()
    cache = BackendCache(clock)
    cache.put(R, backend(R))
    clock.now += 1
    cache.fill(["global"], [backend(A)], cache.began())
    assert cache.get(R) == (True, backend(R))


def test_a_missing_backend_is_remembered_as_missing_until_the_next_list():
    clock = Clock()
    cache = BackendCache(clock)
    cache.put(A, None)
    assert cache.get(A) == (True, None)
    clock.now += 1
    assert cache.fill(["global"], [], cache.began()) == set()
    assert cache.get(A) == (False, None)


def test_index_moves_an_ingress_between_the_backends_it_names():
    index = ClaimIndex()
    index.update("shop/x", (), (A, B))
    index.update("shop/y", (), (A,))
    assert index.claimants(A) == {"shop/x", "shop/y"}
    index.update("shop/x", (A, B), (B,))
    assert index.claimants(A) == {"shop/y"} and index.claimants(B) == {"shop/x"}
    index.update("shop/y", (A,), ())
    assert index.refs() == {B}


def test_index_answers_the_claimants_of_one_namespace_without_the_others():
    index = ClaimIndex()
    for i in range(1000):
        index.update(f"tenant{i}/app", (), (A,))
    index.update("kube-system/x", (), (A,))
    assert index.claimants(A, "kube-system") == {"kube-system/x"}
    assert index.claimants(A, "") == set()
    assert len(index.claimants(A)) == 1001
    index.update("kube-system/x", (A,), ())
    assert index.claimants(A, "kube-system") == set() and len(index.claimants(A)) == 1000


def test_index_finds_the_backends_a_record_lists_an_ingress_on():
    index = ClaimIndex()
    index.record(A, (), ("shop/x",))
    index.record(B, (), ("shop/x", "shop/y"))
    assert index.recorded("shop/x") == {A, B}
    index.record(B, ("shop/x", "shop/y"), ("shop/y",))
    assert index.recorded("shop/x") == {A} and index.recorded("shop/y") == {B}
    index.record(A, ("shop/x",), ())
    assert index.recorded("shop/x") == set()


def test_index_grows_from_one_claimant_to_many_and_back_in_every_namespace():
    # One claimant is kept as its key alone; the answers must not tell the difference.
    index = ClaimIndex()
    index.update("shop/x", (), (A,))
    assert index.claimants(A) == {"shop/x"} and index.claimants(A, "shop") == {"shop/x"}
    assert index.claimants(A, "bank") == set() and index.claimants(B) == set()
    index.update("shop/x", (), (A,))  # the same claim again changes nothing
    index.update("bank/y", (), (A,))
    index.update("bank/z", (), (A,))
    assert index.claimants(A) == {"shop/x", "bank/y", "bank/z"}
    assert index.claimants(A, "bank") == {"bank/y", "bank/z"}
    index.update("shop/x", (A,), ())
    index.update("bank/y", (A,), ())
    assert index.claimants(A) == {"bank/z"} and index.claimants(A, "shop") == set()
    index.update("bank/y", (A,), ())  # a claim it no longer has: nothing to drop
    index.update("shop/x", (), (A,))
    assert index.claimants(A) == {"shop/x", "bank/z"}
    index.update("bank/z", (A,), ())
    index.update("shop/x", (A,), ())
    assert index.refs() == set() and len(index) == 0


def test_index_records_grow_from_one_backend_to_many_and_back():
    index = ClaimIndex()
    index.record(A, (), ("shop/x",))
    index.record(A, (), ("shop/x",))
    assert index.recorded("shop/x") == {A}
    index.record(B, (), ("shop/x",))
    index.record(R, (), ("shop/x",))
    assert index.recorded("shop/x") == {A, B, R}
    index.record(A, ("shop/x",), ())
    index.record(R, ("shop/x",), ())
    assert index.recorded("shop/x") == {B}
    index.record(A, ("shop/x",), ())  # not listed there any more: nothing to drop
    assert index.recorded("shop/x") == {B}
    index.record(B, ("shop/x",), ())
    assert index.recorded("shop/x") == set()


def test_only_names_carrying_this_clusters_uid_are_this_clusters():
    assert of_cluster(f"k8s1-{UID[:8]}-shop-web-80-abcd1234", UID)
    assert of_cluster(f"k8s-be-30480--{UID}", UID)
    assert not of_cluster("k8s1-9f00aa11-shop-web-80-abcd1234", UID)
    assert not of_cluster("k8s-be-30480--9f00aa11bb22cc33", UID)
    assert not of_cluster(f"k8s-be-30480--{UID}x", UID)
    assert not of_cluster(f"my-k8s1-{UID[:8]}-x", UID)
    assert not of_cluster(f"k8s1-{UID[:8]}-x", "")  # no uid known: nothing is ours


def test_a_list_that_finds_nothing_changed_keeps_what_is_held():
    # A resync lists every backend service again: what it finds unchanged stays the very
    # objects held since, so that each resync does not put 10,000 new long-lived objects
    # in the heap for the old ones to leave holes behind.
    clock = Clock()
    cache = BackendCache(clock)
    cache.fill(["global"], [backend(A), backend(B)], cache.began())
    held = cache.get(A)[1]
    clock.now += 1
    assert cache.fill(["global"], [backend(A), backend(B, 120)], cache.began()) == {B}
    assert cache.get(A)[1] is held
    assert cache.get(B) == (True, backend(B, 120))


def test_a_list_is_taken_in_as_it_comes_and_a_failed_one_removes_nothing():
    # Page by page: what a page shows is known before the next page is read (the whole
    # list is never held at once), and a list that fails midway deletes nothing.
    clock = Clock()
    cache = BackendCache(clock)
    cache.fill(["global"], [backend(A), backend(B)], cache.began())
    clock.now += 1

    def pages():
        yield backend(A, 120, "f2")
        assert cache.get(A) == (True, backend(A, 120, "f2"))
        raise RuntimeError("the list failed on its second page")

    with pytest.raises(RuntimeError):
        cache.fill(["global"], pages(), cache.began())
    assert cache.get(A) == (True, backend(A, 120, "f2"))
    assert cache.get(B) == (True, backend(B))
