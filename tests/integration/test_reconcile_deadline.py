"""One reconcile is bounded in time: its Compute calls share one deadline.

The controller's Manager against the real apiserver and the Compute fake; the
Compute client's clock is a fake one that each call moves on, so no test
sleeps through a real timeout.
"""

from __future__ import annotations

import random

import pytest

from controller.gcp.backends import DEADLINE, Compute
from controller.manager import Manager
from controller.model import BackendRef, Settings
from tests.integration.world import KEY, UID, World

pytestmark = pytest.mark.apiserver


class SlowClock:
    """Compute's clock: every call it makes takes ``per_call`` seconds of it."""

    def __init__(self, per_call: float) -> None:
        self.now = 1000.0
        self.per_call = per_call
        self.started: list[tuple[str, float]] = []  # (method, when it was sent)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def call(self, method: str, status: int) -> None:
        self.started.append((method, self.now))
        self.now += self.per_call


def slow_manager(world: World, clock: SlowClock) -> Manager:
    """A Manager whose Compute client runs on ``clock``, its Ingresses and records read."""
    compute = Compute(
        "demo-project",
        endpoint=world.fake.url,
        credentials=world.credentials(),
        clock=clock,
        sleep=clock.advance,
        rng=random.Random(7),
        on_call=clock.call,
    )
    settings = Settings(timeout_key=KEY, cluster_uid=UID, namespaces=frozenset({world.ns}))
    manager = Manager(
        kube=world.kube, compute=compute, settings=settings, namespace=world.ns, instance="t"
    )
    manager.informer.list_once()
    manager.records.load()
    return manager


def test_a_slow_compute_holds_a_reconcile_no_longer_than_its_deadline(world: World) -> None:
    web = world.backend("web")
    world.ingress("app", timeout="1h", backends=[web])
    world.fake.op_delay = 3600.0  # the operation never ends within the test
    world.fake.inject("GET", web, 503, times=2)  # two reads fail before one answers
    clock = SlowClock(per_call=40.0)
    manager = slow_manager(world, clock)
    begun = clock()

    outcome = manager.reconciler.reconcile(BackendRef("global", web))

    # Reads at 0, ~40 and ~80 s, the PATCH at ~120 s, then waits on its Operation:
    # its own 180 s would run to ~300 s, the reconcile's deadline (220 s) stops it first.
    methods = [m for m, _ in clock.started]
    assert methods[:4] == ["backendServices.get"] * 3 + ["backendServices.patch"]
    assert set(methods[4:]) == {"globalOperations.wait"}
    assert all(at < begun + DEADLINE for _, at in clock.started)
    assert (outcome.retry, outcome.error_kind) == ("soon", "transient")
    assert "deadline" in outcome.error
    # The write's intent is recorded: the next reconcile settles it or sends it again.
    assert world.records()[web]["intent"]["values"]["timeout"]["value"] == 3600


@pytest.mark.parametrize("waited", [0.0, 200.0])
def test_the_time_a_rest_waits_for_a_thread_does_not_count_against_its_deadline(
    world: World, waited: float
) -> None:
    web = world.backend("web")
    world.ingress("app", timeout="1h", backends=[web])
    world.fake.op_delay = 3600.0  # the operation never ends within the test
    clock = SlowClock(per_call=40.0)
    manager = slow_manager(world, clock)
    begun = clock()

    outcome = manager.reconciler.begin(BackendRef("global", web))  # a read, the PATCH
    assert outcome.rest is not None
    clock.advance(200.0)  # the rest waited for a finisher: past the decision's deadline
    outcome = manager.reconciler.finish(outcome, waited)

    waits = [at for m, at in clock.started if m == "globalOperations.wait"]
    if waited:  # it holds a thread no longer than a reconcile would
        assert waits and all(at < begun + DEADLINE + waited for at in waits)
        assert max(waits) >= begun + DEADLINE
    else:
        assert waits == []
    assert (outcome.retry, outcome.error_kind) == ("soon", "transient")
