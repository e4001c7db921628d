"""The long tail against the real apiserver and the strict fake: a record deleted by hand,
a backend service that appears after it was named, a stand-off that ends by itself, and
a narrowed --namespaces. Each promise is kept without anyone touching the Ingress again.
"""

from __future__ import annotations

import pytest

from controller.records import GROUP, PLURAL, VERSION
from tests.conftest import create_namespace
from tests.fakes.compute import neg_backend_name
from tests.ground.controlplane import ControlPlane
from tests.integration.world import UID, World, applied
from tests.wait import eventually


def record_path(world: World, backend: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{world.ns}/{PLURAL}/global.{backend}"


def test_a_record_deleted_by_hand_is_created_again(world: World) -> None:
    web = world.backend("web")
    world.start()
    world.ingress("app", timeout="1h", backends=[web])
    eventually(lambda: applied(world.records().get(web)) == 3600, what="settled")
    world.kube.request("DELETE", record_path(world, web))  # kubectl delete backendtimeout
    world.annotate("app", "2h")
    eventually(lambda: world.timeout_of(web) == 7200, what="the new value applied")
    record = eventually(lambda: world.records().get(web), what="the record is back")
    eventually(lambda: applied(world.records().get(web)) == 7200, what="recorded")
    assert record["fields"]["timeout"]["claims"] == {f"{world.ns}/app": 7200}
    world.annotate("app", None)  # and the restore still knows the value is ours
    eventually(lambda: world.timeout_of(web) == 30, what="restored")


def test_a_backend_service_created_after_it_was_named_gets_its_timeout(world: World) -> None:
    web = neg_backend_name(world.ns, "web", 80, UID, regional=False)
    world.start(slow_retry=1.0)  # SLOW_RETRY (300 s) made short
    world.ingress("app", timeout="1h", backends=[web])  # ingress-gce names it first ...
    eventually(lambda: world.events("app", "BackendNotFound"), what="BackendNotFound")
    world.backend("web")  # ... and creates it a moment later
    eventually(lambda: world.timeout_of(web) == 3600, what="applied with no Ingress change")


def test_a_stand_off_ends_by_itself_when_its_window_is_over(world: World) -> None:
    web = world.backend("web")
    manager = world.start(settings={"fight_limit": 1, "fight_window": 3.0})
    world.ingress("app", timeout="1h", backends=[web])
    eventually(lambda: applied(world.records().get(web)) == 3600, what="settled")
    world.fake.set_timeout_out_of_band(web, 120)  # the console
    manager.resync()  # the periodic resync notices, and stops fighting (limit 1)
    eventually(lambda: world.events("app", "TimeoutOverridden"), what="TimeoutOverridden")
    assert world.timeout_of(web) == 120
    # No resync, no edit: the stand-off's own timer brings the key back.
    eventually(lambda: world.timeout_of(web) == 3600, what="re-applied after the window")
    assert world.patches(web) == [3600, 3600]


@pytest.fixture
def other(apiserver: ControlPlane) -> str:
    return create_namespace(apiserver)


def test_a_narrowed_namespaces_leaves_the_others_alone(world: World, other: str) -> None:
    bank = World(world.plane, other, world.fake)  # a second tenant, same controller
    web, api = world.backend("web"), bank.backend("api")
    both = {"namespaces": frozenset({world.ns, other})}
    world.start(settings=both)
    world.ingress("app", timeout="1h", backends=[web])
    bank.ingress("pay", timeout="2h", backends=[api], services=["api"])
    eventually(lambda: bank.timeout_of(api) == 7200, what="applied in the other namespace")
    eventually(lambda: applied(world.records().get(api)) == 7200, what="settled")
    world.stop()

    world.start()  # restarted watching only its own namespace
    bank.annotate("pay", None)  # out of scope now: not a removal this controller sees
    world.annotate("app", "30m")
    eventually(lambda: world.timeout_of(web) == 1800, what="its own namespace still served")
    world.manager.resync()  # type: ignore[union-attr]
    eventually(lambda: world.timeout_of(web) == 1800 and len(world.manager.queue) == 0)  # type: ignore[union-attr]
    assert bank.timeout_of(api) == 7200
    kept = world.records()[api]["fields"]["timeout"]["claims"]
    assert kept == {f"{other}/pay": 7200}  # kept for whoever watches
    assert bank.events("pay", "TimeoutRestored") == []
    assert world.patches(api) == [7200]


def test_stop_takes_no_more_work_even_in_the_middle_of_a_resync(world: World) -> None:
    web = world.backend("web")
    manager = world.start(resync=0.5)
    world.ingress("app", timeout="1h", backends=[web])
    eventually(lambda: world.timeout_of(web) == 3600, what="applied")
    seen = len(world.fake.calls)
    world.fake.latency = 8.0  # the next periodic resync's list pages come slowly

    def listing() -> bool:
        return any(c.method == "GET" and c.path.endswith("/backendServices")
                   for c in world.fake.calls[seen:])  # fmt: skip

    eventually(listing, what="a resync listing")
    world._stop.set()  # SIGTERM, while the list is still going
    ref = next(iter(manager.index.refs()))

    def closed() -> bool:
        manager.queue.add(ref)  # a change arriving now: taken in line, or refused if closed
        return len(manager.queue) == 0

    eventually(closed, timeout=6, what="the queue closed before the list ended")
    world.fake.latency = 0.0
    world.stop()
