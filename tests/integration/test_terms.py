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
from controller.kube.lease import LeaderElector, LeaseConfig
from controller.manager import Manager
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
