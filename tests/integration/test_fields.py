"""Per-Service timeouts and connection draining, end to end: the real apiserver, the
Compute fake as strict as GCP (drainingTimeoutSec outside 0..3600 is a 400), the
controller in-process.
"""

from __future__ import annotations

import json
from typing import Any

from controller.records import GROUP, KIND, PLURAL, VERSION
from tests.integration.world import PREFIX, World
from tests.wait import eventually

TIMEOUTS = f"{PREFIX}/timeouts"
DRAINING = f"{PREFIX}/draining-timeout"


def settled(world: World) -> None:
    """Every key decided, nothing waiting: the controller has nothing more to do."""
    manager = world.manager
    assert manager is not None
    eventually(lambda: len(manager.queue) == 0 and manager.queue.delayed() == 0, what="idle")


def test_api_and_ws_of_one_ingress_get_30_and_3600(world: World):
    api, ws, web = world.backend("api", timeout=60), world.backend("ws"), world.backend("web")
    world.start()
    world.ingress("app", backends=[api, ws, web], services=["api", "ws", "web"], timeout="10m")
    world.annotate("app", json.dumps({"ws": "1h", "api": "30s"}), key=TIMEOUTS)

    eventually(
        lambda: (
            (world.timeout_of(api), world.timeout_of(ws), world.timeout_of(web)) == (30, 3600, 600)
        ),
        what="api 30, ws 3600, web the Ingress's 600",
    )
    eventually(
        lambda: any(
            ws in e["message"] and "to 3600s" in e["message"]
            for e in world.events("app", "TimeoutApplied")
        ),
        what="the Event of ws's hour",
    )
    settled(world)
    assert world.events("app", "InvalidTimeout") == []


def test_draining_300_is_applied_then_restored_to_0_when_the_annotation_goes(world: World):
    web = world.backend("web")
    world.ingress("app", backends=[web], annotations=None)
    world.start()
    world.annotate("app", "300", key=DRAINING)
    eventually(lambda: world.draining_of(web) == 300, what="draining 300")
    applied = eventually(lambda: world.events("app", "TimeoutApplied"), what="event")
    assert "connectionDraining.drainingTimeoutSec" in applied[0]["message"]
    eventually(lambda: world.records()[web]["intent"] is None, what="the write recorded")
    assert world.records()[web]["fields"]["draining"]["applied"] == 300

    world.annotate("app", None, key=DRAINING)
    eventually(lambda: world.draining_of(web) == 0, what="draining restored to 0")
    restored = eventually(lambda: world.events("app", "TimeoutRestored"), what="event")
    assert "connectionDraining.drainingTimeoutSec" in restored[0]["message"]
    eventually(lambda: web not in world.records(), what="record forgotten")
    assert world.drainings(web) == [300, 0]
    assert world.patches(web) == []  # nobody asked a timeout: timeoutSec never sent
    assert world.timeout_of(web) == 30


def test_timeout_and_draining_go_in_one_patch_with_one_fingerprint(world: World):
    web = world.backend("web")
    fingerprint = world.fake.backend(web)["fingerprint"]
    world.ingress(
        "app",
        backends=[web],
        annotations={
            "ingress.kubernetes.io/backends": json.dumps({web: "HEALTHY"}),
            f"{PREFIX}/timeout": "1h",
            DRAINING: "5m",
        },
    )
    world.start()
    eventually(lambda: (world.timeout_of(web), world.draining_of(web)) == (3600, 300))
    patches = [c for c in world.fake.calls if c.method == "PATCH"]
    assert [c.body for c in patches] == [
        {
            "timeoutSec": 3600,
            "connectionDraining": {"drainingTimeoutSec": 300},
            "fingerprint": fingerprint,
        }
    ]


def test_a_map_naming_a_service_the_ingress_does_not_route_to_warns_and_changes_nothing(
    world: World,
):
    web, other = world.backend("web"), world.backend("other")
    world.ingress("app", timeout="1h", backends=[web])
    world.start()
    eventually(lambda: world.timeout_of(web) == 3600)
    settled(world)
    calls_before = len([c for c in world.fake.calls if c.method == "PATCH"])

    world.annotate("app", json.dumps({"other": "5m"}), key=TIMEOUTS)
    warning = eventually(lambda: world.events("app", "InvalidTimeout"), what="warning")
    assert len(warning) == 1 and warning[0]["type"] == "Warning"
    assert '"other"' in warning[0]["message"] and TIMEOUTS in warning[0]["message"]
    settled(world)
    assert len([c for c in world.fake.calls if c.method == "PATCH"]) == calls_before
    assert (world.timeout_of(web), world.timeout_of(other)) == (3600, 30)


def test_a_bad_entry_is_refused_alone_and_the_others_apply(world: World):
    ws, api = world.backend("ws"), world.backend("api")
    world.start()
    world.ingress("app", backends=[ws, api], services=["ws", "api"])
    world.annotate("app", json.dumps({"ws": "1h", "api": "abc", "nope": "1m"}), key=TIMEOUTS)
    eventually(lambda: world.timeout_of(ws) == 3600, what="the good entry applied")
    warnings = eventually(
        lambda: (found := world.events("app", "InvalidTimeout")) and len(found) == 2 and found,
        what="a warning per bad entry",
    )
    assert sorted('"api"' in w["message"] for w in warnings) == [False, True]
    settled(world)
    assert world.timeout_of(api) == 30 and world.patches(api) == []


def _old_record(namespace: str, backend: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A BackendTimeout as the timeout-only version wrote it."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": f"global.{backend}", "namespace": namespace},
        "spec": {"backend": {"scope": "global", "name": backend}, **spec},
    }


def test_an_upgrade_keeps_every_record_and_writes_nothing_to_gcp(world: World):
    ours, theirs = world.backend("web", timeout=3600), world.backend("chat", timeout=900)
    world.ingress("a", timeout="1h", backends=[ours])
    world.ingress("b", timeout="15m", backends=[theirs], services=["chat"])
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{world.ns}/{PLURAL}"
    old: dict[str, dict[str, Any]] = {
        ours: {"desired": 3600, "applied": 3600, "claims": {f"{world.ns}/a": 3600}},
        # 900 was there before anyone asked: the record says it is not ours
        theirs: {"desired": 900, "applied": None, "claims": {f"{world.ns}/b": 900}},
    }
    for backend, spec in old.items():
        body = {**spec, "intent": None, "overridden": 0, "overriddenAt": None, "result": "Applied"}
        world.kube.post(path, _old_record(world.ns, backend, body))

    world.start()
    settled(world)
    assert [c for c in world.fake.calls if c.method in ("PATCH", "PUT", "POST")] == []
    assert (world.timeout_of(ours), world.timeout_of(theirs)) == (3600, 900)
    records = world.records()
    for backend, spec in old.items():
        # read as the timeout's state, whether or not it has been written anew since
        state = records[backend].get("fields", {}).get("timeout") or records[backend]
        assert {k: state[k] for k in spec} == spec, backend

    # Still ours after the upgrade: removing the annotation restores it; theirs stays.
    world.annotate("a", None)
    world.annotate("b", None)
    eventually(lambda: world.timeout_of(ours) == 30, what="ours restored after the upgrade")
    eventually(lambda: world.events("b", "RestoreSkipped") or theirs not in world.records())
    settled(world)
    assert world.timeout_of(theirs) == 900 and world.patches(theirs) == []
