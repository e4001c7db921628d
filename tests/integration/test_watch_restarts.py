"""Watches that the apiserver closes every few seconds lose nothing and cost no LIST."""

from __future__ import annotations

import time

import pytest

from tests.conftest import create_namespace
from tests.fakes.compute import ComputeFake
from tests.integration.world import World
from tests.wait import eventually


@pytest.mark.long(minutes=1.5)  # a change a second for a minute
def test_every_change_reaches_gcp_in_order_across_watch_restarts(apiserver_factory):
    plane = apiserver_factory(min_request_timeout=7)  # watches end after 7-14 s
    with ComputeFake() as fake:
        world = World(plane, create_namespace(plane), fake)
        web = world.backend("web")
        world.ingress("app", timeout="100", backends=[web])
        try:
            manager = world.start(informer={"min_watch_timeout": 0, "max_watch_timeout": 0})
            eventually(lambda: world.timeout_of(web) == 100)
            written = [100]
            for value in range(101, 161):  # one change a second for a minute
                world.annotate("app", str(value))
                written.append(value)
                time.sleep(1)  # the cadence under test, not a wait for a result
            eventually(lambda: world.timeout_of(web) == 160, what="last value applied")
        finally:
            world.stop()

    assert world.patches(web) == written
    stats = manager.informer.stats
    assert stats.watches > 4, stats  # the server really closed watches several times
    assert stats.lists == 1, stats
    assert world.list_calls == 1  # counted on the wire too: no LIST after a normal close
