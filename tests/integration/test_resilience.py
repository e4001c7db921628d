"""Failures the controller must ride out: an apiserver restart, GCP refusing one backend."""

from __future__ import annotations

from tests.conftest import create_namespace
from tests.fakes.compute import ComputeFake
from tests.integration.world import World
from tests.wait import eventually


def test_controller_carries_on_after_an_apiserver_restart(apiserver_factory):
    plane = apiserver_factory()
    with ComputeFake() as fake:
        world = World(plane, create_namespace(plane), fake)
        web = world.backend("web")
        world.ingress("app", timeout="90s", backends=[web])
        try:
            manager = world.start()
            eventually(lambda: world.timeout_of(web) == 90)
            plane.stop_apiserver()
            eventually(lambda: manager.informer.stats.restarts > 0, what="watch broke")
            plane.start_apiserver()
            world.annotate("app", "2h")
            eventually(lambda: world.timeout_of(web) == 7200, what="change after restart")
        finally:
            world.stop()


def test_a_refused_backend_does_not_hold_up_the_others(world: World):
    denied, fine = world.backend("web"), world.backend("chat")
    world.fake.deny(denied)
    world.ingress("blocked", timeout="1h", backends=[denied], services=["web"])
    world.ingress("other", timeout="2h", backends=[fine], services=["chat"])
    world.start()

    eventually(lambda: world.timeout_of(fine) == 7200, what="the other Ingress served")
    refused = eventually(lambda: world.events("blocked", "PermissionDenied"))
    assert refused[0]["type"] == "Warning"
    assert "compute.backendServices.update" in refused[0]["message"]
    assert world.timeout_of(denied) == 30
