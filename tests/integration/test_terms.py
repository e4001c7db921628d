"""Leadership terms of the controller against the real apiserver: a gap ends the term.

The controller runs as a replica does (``Terms``: campaign, lead with a fresh
Manager, stand by, campaign again) with short Lease durations. A renewal held
back before it is sent is a slow network that lets it through later.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest

from controller.__main__ import Terms
from controller.gcp.backends import Compute
from controller.kube.client import KubeClient, StaticTokenAuth
from controller.kube.events import EventQueue, EventRecorder
from controller.kube.lease import LeaderElector, LeaseConfig
from controller.manager import COMPONENT, Manager
from controller.model import Settings
from tests.integration.test_lease_apiserver import LEASE, Network
from tests.integration.world import KEY, UID, World
from tests.wait import eventually

pytestmark = pytest.mark.apiserver


class JumpingClock:
    """The elector's monotonic clock, which a test can move ahead at once."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def jump(self, seconds: float) -> None:
        self.offset += seconds


def test_a_restore_refused_in_a_leadership_gap_is_done_by_the_next_term(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="controller.reconciler")
    web = world.backend("web")
    world.ingress("app", timeout="1h", backends=[web])
    network = Network()
    kube = KubeClient(
        world.plane.url,
        auth=StaticTokenAuth(world.plane.admin_token),
        verify=world.plane.ca_file,
        session=network,
    )
    compute = Compute(
        "demo-project",
        endpoint=world.fake.url,
        credentials=world.credentials(),
        base_delay=0.01,
        max_delay=0.05,
    )
    settings = Settings(timeout_key=KEY, cluster_uid=UID, namespaces=frozenset({world.ns}))
    managers: list[Manager] = []

    def new_manager() -> Manager:
        managers.append(
            Manager(kube=kube, compute=compute, settings=settings, namespace=world.ns, instance="t")
        )
        return managers[-1]

    clock = JumpingClock()
    lease = LeaseConfig(
        world.ns, LEASE, "replica-a", lease_duration=3.0, renew_deadline=2.0, retry_period=0.5
    )
    elector = LeaderElector(kube, lease, clock=clock)
    terms = Terms(elector, new_manager, first=new_manager())
    stop = threading.Event()
    thread = threading.Thread(target=terms.run, args=(stop,))
    thread.start()
    try:
        eventually(lambda: world.timeout_of(web) == 3600, what="the first term applied 1h")
        first = managers[0]

        network.renewals.clear()
        eventually(lambda: network.held_renewals, what="a renewal is held back")
        clock.jump(lease.renew_deadline)  # ... for longer than the renew deadline
        world.delete("app")
        eventually(
            lambda: any("no longer the leader" in r.getMessage() for r in caplog.records),
            what="the restore refused in the gap",
        )
        # The term ends there, while its renewal is still held back.
        eventually(lambda: not first.ready.is_set(), what="the first term stopped")
        assert network.held_renewals == 1 and not network.renewals.is_set()
        network.renewals.set()

        eventually(lambda: world.timeout_of(web) == 30, what="the default restored")
        assert len(managers) >= 2, "restored by a term of its own"
        eventually(lambda: web not in world.records(), what="its record gone with the claim")
    finally:
        network.renewals.set()
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()


@pytest.mark.parametrize("on_the_apiserver", [True, False], ids=["told", "lost"])
def test_a_new_term_owing_more_events_than_a_namespace_may_hold_drops_none(
    world: World, on_the_apiserver: bool
) -> None:
    # The records of 12 writes owe their TimeoutApplied; a namespace may hold 4 waiting
    # Events. Told already: the new term posts nothing. Lost (an Event deleted, as a
    # kill before it went out leaves it): each is told once. Neither is a drop.
    names = [f"app{i}" for i in range(12)]
    for name in names:
        world.ingress(name, timeout="1h", backends=[world.backend(name)], services=[name])
    world.start()
    eventually(
        lambda: all(world.events(n, "TimeoutApplied") for n in names), what="the first term told"
    )
    world.stop()
    if not on_the_apiserver:
        for name in names:
            for event in world.events(name, "TimeoutApplied"):
                world.kube.delete(
                    f"/api/v1/namespaces/{world.ns}/events/{event['metadata']['name']}"
                )

    drops: list[str] = []
    recorder = EventRecorder(world.kube, component=COMPONENT, instance="second")
    queue = EventQueue(recorder, capacity=8, per_namespace=4, on_drop=drops.append)
    stop = threading.Event()
    poster = threading.Thread(target=queue.run, args=(stop,))
    poster.start()
    try:
        world.start(events=queue)
        eventually(
            lambda: all(world.events(n, "TimeoutApplied") for n in names) and not queue.owes(),
            what="the owed Events settled",
        )
        eventually(lambda: len(queue) == 0, what="the queue drained")
    finally:
        world.stop()
        stop.set()
        poster.join(timeout=30)
    assert drops == []
    counts = {n: [e["count"] for e in world.events(n, "TimeoutApplied")] for n in names}
    assert counts == {n: [1] for n in names}


def test_a_cold_start_whose_events_outrun_the_posters_drops_none(world: World) -> None:
    # 12 writes in one namespace while no Event goes out (the posters held back), where 4
    # may wait: those without room are set aside and told from the records once the
    # posters run. Nothing dropped, nothing told twice.
    names = [f"app{i}" for i in range(12)]
    for name in names:
        world.ingress(name, timeout="1h", backends=[world.backend(name)], services=[name])
    drops: list[str] = []
    recorder = EventRecorder(world.kube, component=COMPONENT, instance="cold")
    queue = EventQueue(recorder, capacity=8, per_namespace=4, on_drop=drops.append)
    stop = threading.Event()
    poster = threading.Thread(target=queue.run, args=(stop,))
    try:
        world.start(events=queue)
        eventually(
            lambda: (
                all(r.get("intent") is None and r.get("notes") for r in world.records().values())
                and len(world.records()) == len(names)
                and len(queue) == 4
            ),
            what="every write done and its Event queued or set aside",
        )
        poster.start()
        eventually(
            lambda: all(world.events(n, "TimeoutApplied") for n in names) and not queue.owes(),
            what="every write told",
        )
        eventually(lambda: len(queue) == 0, what="the queue drained")
    finally:
        world.stop()
        stop.set()
        if poster.is_alive():
            poster.join(timeout=30)
    assert drops == []
    counts = {n: [e["count"] for e in world.events(n, "TimeoutApplied")] for n in names}
    assert counts == {n: [1] for n in names}
