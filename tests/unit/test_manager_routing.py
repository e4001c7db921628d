"""What one Ingress event queues, at any cluster size: the Manager's routing alone.

No apiserver or Compute is reached: the events are fed to ``_on_ingress`` as
the informer would, with the backend cache filled as a list would leave it.
"""

from __future__ import annotations

import threading

from controller.gcp.backends import Compute
from controller.ingress import Ask, Ingress
from controller.kube.client import Auth, KubeClient
from controller.manager import RESYNC_LANE, Manager
from controller.model import Backend, BackendRef, Settings
from controller.reconciler import IngressKey, Outcome

UID = "0e20ca25204f6195"
S = Settings(timeout_key="ingress-timeout.dev/timeout", cluster_uid=UID)
DEFAULT = BackendRef("global", f"k8s-be-30480--{UID}")


def own(ns: str) -> BackendRef:
    return BackendRef("global", f"k8s1-{UID[:8]}-{ns}-web-80-1111")


def ing(ns: str, seconds: int | None = 3600, refs: tuple[BackendRef, ...] = ()) -> Ingress:
    asks = () if seconds is None else (("timeout", Ask(seconds)),)
    return Ingress(ns, "app", f"uid-{ns}", frozenset({"web"}), refs or (own(ns), DEFAULT), asks)


def manager() -> Manager:
    m = Manager(
        kube=KubeClient("https://127.0.0.1:9", auth=Auth()),
        compute=Compute("p", endpoint="http://127.0.0.1:9"),
        settings=S,
        namespace="gke-ingress-timeout",
        instance="test",
    )
    m.cache.put(DEFAULT, Backend(DEFAULT, 30, "fp", "kube-system/default-http-backend"))
    return m


def queued(m: Manager) -> list[BackendRef | IngressKey]:
    keys: list[BackendRef | IngressKey] = []
    while (key := m.queue.get(timeout=0)) is not None:
        keys.append(key)
        m.queue.done(key)
    return keys


def test_a_change_queues_its_own_backend_and_not_the_default_one_every_ingress_names():
    for size in (200, 2000):
        m = manager()
        for i in range(size):
            ns = f"t{i}"
            m.cache.put(own(ns), Backend(own(ns), 30, "fp", f"{ns}/web"))
            m._on_ingress("SYNC", f"{ns}/app", None, ing(ns))
        assert DEFAULT not in queued(m)  # the list that filled the cache was its look
        m._on_ingress("MODIFIED", "t7/app", ing("t7"), ing("t7", 7200))
        assert queued(m) == [own("t7")], size
        assert len(m.index.claimants(DEFAULT)) == size
        assert m.index.claimants(DEFAULT, "kube-system") == set()


def test_an_ask_of_another_namespaces_backend_queues_a_report_not_the_backend():
    m = manager()
    bank = own("bank")
    m.cache.put(bank, Backend(bank, 30, "fp", "bank/web"))
    m._on_ingress("ADDED", "shop/app", None, ing("shop", refs=(own("shop"), bank)))
    assert set(queued(m)) == {own("shop"), IngressKey("shop/app")}
    # Another cluster's name is known to be nobody's without a look.
    other = BackendRef("global", "k8s1-9f00aa11-shop-web-80-1111")
    m._on_ingress("MODIFIED", "shop/app", ing("shop"), ing("shop", refs=(other,)))
    assert set(queued(m)) == {own("shop"), IngressKey("shop/app")}  # the one it left, too


def test_a_backend_not_looked_at_yet_is_queued_for_its_first_look():
    m = manager()
    m.cache.drop(DEFAULT)  # the backend list failed, say
    m._on_ingress("ADDED", "shop/app", None, ing("shop"))
    assert set(queued(m)) == {own("shop"), DEFAULT}


def test_a_change_to_a_backend_whose_last_write_is_still_being_finished_hurries_it():
    m = manager()
    m.cache.put(own("t7"), Backend(own("t7"), 30, "fp", "t7/web"))
    m._on_ingress("SYNC", "t7/app", None, ing("t7"))
    assert queued(m) == [own("t7")]
    finishing = Outcome(str(own("t7")))
    with m._finishers.path():  # a worker is on its way to another PATCH
        assert m._finishers.hand(own("t7"), finishing)
        assert m._finishers.take(wait=False) is None  # the rest waits for a quiet path
        m._on_ingress("MODIFIED", "t7/app", ing("t7"), ing("t7", 7200))
        # The new decision on it waits for that rest: it starts now.
        taken = m._finishers.take(wait=False)
        assert taken is not None and taken[:2] == (own("t7"), finishing)


def test_a_stop_starts_the_rests_waiting_for_a_finisher_at_once_and_tells_their_wait():
    # The path stays busy (a worker's last decision, a resync's list): without the
    # stop, the rest would wait out its patience. Its wait is not counted against
    # its deadline.
    m = manager()
    m._stop = threading.Event()
    ran: list[float] = []
    finishing = Outcome(str(own("t7")), rest=ran.append)
    m._finishers.start()
    with m._finishers.path():
        m.queue.add(own("t7"), "")
        assert m.queue.get(timeout=0) == own("t7")  # taken: its rest holds it
        assert m._finishers.hand(own("t7"), finishing)
        m._stop.set()
        m._close_on(m._stop)
        assert len(ran) == 1 and 0.0 <= ran[0] < 5.0
        assert m.queue.get(timeout=0) is None  # shut down; the key is done


def test_a_resync_leaves_a_waiting_rest_to_its_quiet_path():
    # A resync queues every backend: hurrying each waiting rest would start them all
    # at once, each on a thread of its own. Its look at that backend can wait.
    m = manager()
    finishing = Outcome(str(own("t7")))
    with m._finishers.path():
        assert m._finishers.hand(own("t7"), finishing)
        m._add({own("t7")}, RESYNC_LANE)
        assert m._finishers.take(wait=False) is None
        m._add({own("t7")}, "t7")  # a tenant's change does not wait
        taken = m._finishers.take(wait=False)
        assert taken is not None and taken[:2] == (own("t7"), finishing)
