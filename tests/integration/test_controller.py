"""The user story end to end: annotate an Ingress, watch its backend services follow.

Real kube-apiserver, the Compute fake reached through google-api-python-client,
the controller running in-process.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from controller.gcp.ratelimit import WriteLimiter
from tests.fakes.compute import ComputeFake
from tests.ground.controlplane import ControlPlane
from tests.integration.world import PAGE_CAP, TOKEN, WAIT_MAX, World, applied
from tests.wait import eventually


def test_annotation_patches_every_owned_backend_and_says_so(world: World):
    web, chat = world.backend("web"), world.backend("chat")
    world.start()
    world.ingress("app", backends=[web, chat], services=["web", "chat"])
    world.annotate("app", "1h")

    eventually(
        lambda: world.timeout_of(web) == 3600 and world.timeout_of(chat) == 3600,
        what="both backends at 3600",
    )
    applied = eventually(lambda: world.events("app", "TimeoutApplied"), what="event")
    assert applied[0]["type"] == "Normal"
    assert "3600s" in applied[0]["message"]
    patch = next(c for c in world.fake.calls if c.method == "PATCH")
    assert patch.body is not None and patch.body["fingerprint"]
    assert patch.query["requestId"]


def test_the_next_change_after_our_own_write_goes_out_without_a_read_on_its_path(
    world: World,
):
    # GCP does not answer a write with the fingerprint it leaves. The read that learns it
    # comes after the write, off the path of the change that follows.
    web = world.backend("web")
    world.start()
    world.ingress("app", timeout="1h", backends=[web], services=["web"])
    eventually(lambda: world.patches(web) == [3600], what="the first write")

    def read_after_the_write() -> bool:
        calls = [c for c in world.fake.calls if c.path.endswith(f"/backendServices/{web}")]
        methods = [c.method for c in calls]
        return "PATCH" in methods and "GET" in methods[methods.index("PATCH") :]

    eventually(read_after_the_write, what="its new fingerprint read after the write")
    world.fake.clear_calls()
    world.annotate("app", "2h")
    eventually(lambda: world.patches(web) == [7200], what="the change applied")
    to_web = [c.method for c in world.fake.calls if c.path.endswith(f"/backendServices/{web}")]
    assert to_web[0] == "PATCH", to_web


def test_no_recorded_intent_waits_for_a_write_token(world: World):
    # A kill between an intent and its PATCH leaves a write nobody can tell from one still
    # on its way; the wait for the write rate comes before the intent, not in that gap.
    web = world.backend("web")
    intents: list[object] = []

    class Watching(WriteLimiter):
        def acquire(self) -> None:
            intents.append(world.records().get(web, {}).get("intent"))

    world.start(compute={"limiter": Watching(rate=1.0)})
    world.ingress("app", timeout="1h", backends=[web], services=["web"])
    eventually(lambda: world.patches(web) == [3600], what="the first write")
    world.annotate("app", "2h")
    eventually(lambda: world.patches(web) == [3600, 7200], what="the change applied")
    assert intents == [None, None]


def test_a_write_not_recorded_when_told_to_stop_is_left_to_the_next_term(world: World):
    # SIGTERM, then maybe SIGKILL before the write could finish: a write decided but not
    # yet recorded is not begun, so no intent is left without its PATCH.
    web = world.backend("web")
    armed, taken = threading.Event(), threading.Event()

    class Stopping(WriteLimiter):
        def acquire(self) -> None:
            if armed.is_set():
                world._stop.set()  # told to stop while the write waited for its token
                taken.set()

    world.start(compute={"limiter": Stopping(rate=1.0)})
    armed.set()
    world.ingress("app", timeout="1h", backends=[web], services=["web"])
    eventually(taken.is_set, what="the write's token taken")
    world.stop()
    assert world.fake.count("PATCH") == 0
    assert web not in world.records()
    world.start()  # the next term decides it
    eventually(lambda: world.timeout_of(web) == 3600, what="the next term's write")


def test_ingress_annotated_before_start_is_reconciled_at_start(world: World):
    web = world.backend("web")
    world.ingress("early", timeout="15m", backends=[web])
    world.start()
    eventually(lambda: world.timeout_of(web) == 900, what="reconciled at start")
    # read at start from the paged list, not one GET per backend service
    before_patch = world.fake.calls[: [c.method for c in world.fake.calls].index("PATCH")]
    assert [c.path.rsplit("/", 1)[-1] for c in before_patch] == ["backendServices"] * 2


def test_change_then_remove_restores_default_across_a_restart(world: World):
    web = world.backend("web")
    world.ingress("app", timeout="90s", backends=[web])
    world.start()
    eventually(lambda: world.timeout_of(web) == 90)
    world.annotate("app", "2h")
    eventually(lambda: world.timeout_of(web) == 7200, what="changed value applied")

    world.stop()  # what was applied must survive the controller's restart
    world.annotate("app", None)
    world.start()
    eventually(lambda: world.timeout_of(web) == 30, what="default restored after restart")
    eventually(lambda: world.events("app", "TimeoutRestored"))
    assert world.patches(web) == [90, 7200, 30]


def test_deleting_the_ingress_restores_the_default(world: World):
    web = world.backend("web")
    world.ingress("app", timeout="1h", backends=[web])
    world.start()
    eventually(lambda: world.timeout_of(web) == 3600)
    world.delete("app")
    eventually(lambda: world.timeout_of(web) == 30, what="restored after delete")


@pytest.mark.parametrize("bad", ["abc", "-5", "0", "1.5", "", "99999999999", '{"t":1}', "١٢"])
def test_invalid_value_warns_once_and_keeps_what_was_applied(world: World, bad: str):
    web = world.backend("web")
    world.ingress("app", timeout="10m", backends=[web])
    manager = world.start()
    eventually(lambda: world.timeout_of(web) == 600)
    patches_before = world.patches()

    world.annotate("app", bad)
    warning = eventually(lambda: world.events("app", "InvalidTimeout"), what="warning")
    assert len(warning) == 1 and warning[0]["type"] == "Warning"
    assert "1h30m" in warning[0]["message"]
    eventually(lambda: len(manager.queue) == 0 and manager.queue.delayed() == 0)
    assert world.patches() == patches_before
    assert world.timeout_of(web) == 600


def test_forged_backend_of_another_namespace_is_refused(world: World):
    mine = world.backend("web")
    theirs = world.backend("api", namespace="bank")
    world.ingress("app", timeout="1h", backends=[mine, theirs])
    world.start()
    eventually(lambda: world.timeout_of(mine) == 3600)
    refused = eventually(lambda: world.events("app", "ForeignBackend"), what="refusal")
    assert "bank/api" not in refused[0]["message"]  # never says whose it is
    assert world.timeout_of(theirs) == 30
    assert world.patches(theirs) == []


def test_shared_backend_takes_the_largest_and_does_not_flap(world: World):
    shared = world.backend("web")
    world.ingress("short", timeout="60", backends=[shared])
    world.ingress("long", timeout="600", backends=[shared])
    manager = world.start(resync=0.5)
    eventually(lambda: world.timeout_of(shared) == 600)

    def conflict_of(name: str) -> list[dict[str, Any]]:
        return world.events(name, "SharedBackendConflict")

    # The overruled one is told, naming whose timeout applies; that one is not.
    assert f"{world.ns}/long" in eventually(lambda: conflict_of("short"))[0]["message"]
    assert conflict_of("long") == []

    lists = world.fake.count("GET", "/global/backendServices")
    eventually(
        lambda: world.fake.count("GET", "/global/backendServices") >= lists + 4,
        what="several resyncs",
    )
    assert manager is not None
    assert world.patches(shared) == [600]


def test_internal_class_uses_regional_calls_only(world: World):
    regional = world.backend("web", region="europe-west1")
    world.ingress("internal", timeout="1h", backends=[regional], ingress_class="gce-internal")
    world.start()
    eventually(lambda: world.timeout_of(regional, "europe-west1") == 3600)
    writes = [c for c in world.fake.calls if c.method in ("PATCH", "PUT", "POST")]
    assert writes and all("/regions/europe-west1/" in c.path for c in writes)


def test_other_ingress_classes_are_ignored_entirely(world: World):
    web = world.backend("web")
    world.ingress("nginx", timeout="1h", backends=[web], ingress_class="nginx")
    world.ingress("gce", timeout="1h", backends=[], ingress_class="gce")
    manager = world.start()
    eventually(lambda: len(manager.queue) == 0)
    world.fake.clear_calls()
    manager.resync()
    eventually(lambda: len(manager.queue) == 0 and not world.fake.count("PATCH"))
    assert world.events("nginx") == []
    assert world.timeout_of(web) == 30
    assert all(
        c.method == "GET" and c.path.endswith("/backendServices") for c in world.fake.calls
    )  # only the resync's list


def test_value_already_right_is_never_patched(world: World):
    web = world.backend("web", timeout=3600)
    world.ingress("app", timeout="1h", backends=[web])
    manager = world.start()
    manager.resync()
    manager.resync()
    eventually(lambda: len(manager.queue) == 0)
    assert world.fake.count("PATCH") == 0


def test_stale_fingerprint_and_transient_errors_are_retried(world: World):
    web, chat = world.backend("web"), world.backend("chat")
    world.fake.inject("PATCH", web, 412, times=1)
    world.fake.inject("PATCH", chat, 503, times=2)
    world.fake.inject("PATCH", chat, 403, times=1, reason="rateLimitExceeded")
    world.start()
    world.ingress("app", timeout="1h", backends=[web, chat], services=["web", "chat"])
    eventually(lambda: world.timeout_of(web) == 3600 and world.timeout_of(chat) == 3600)

    web_patches = [c for c in world.fake.calls if c.method == "PATCH" and web in c.path]
    assert [c.status for c in web_patches] == [412, 200]
    to_web = [(c.method, c.status) for c in world.fake.calls if c.path.endswith(web)]
    refused = to_web.index(("PATCH", 412))
    assert ("GET", 200) in to_web[refused : to_web.index(("PATCH", 200))], (
        "a 412 must be followed by a fresh GET before the write is sent again"
    )
    chat_patches = [c for c in world.fake.calls if c.method == "PATCH" and chat in c.path]
    assert [c.status for c in chat_patches] == [503, 503, 403, 200]
    assert len({c.query["requestId"] for c in chat_patches}) == 1  # one write, retried


def test_someone_reverting_again_and_again_is_left_alone_with_a_warning(world: World):
    web = world.backend("web")
    world.ingress("app", timeout="1h", backends=[web])
    manager = world.start()
    eventually(lambda: world.timeout_of(web) == 3600)

    def overridden() -> int:
        return int(world.records()[web]["fields"]["timeout"]["overridden"])

    def written() -> bool:
        # GCP shows 3600 as soon as the operation is done, before the controller has
        # heard so and recorded it; the console changes it back only after that.
        return world.records()[web]["intent"] is None

    eventually(written, what="the first write recorded")
    for round_ in (1, 2):  # the console sets 120 s; the resync puts 3600 s back, twice
        world.fake.set_timeout_out_of_band(web, 120)
        manager.resync()
        eventually(lambda: overridden() == round_, what=f"override #{round_} noticed")  # noqa: B023
        eventually(lambda: world.timeout_of(web) == 3600, what=f"put back #{round_}")
        eventually(written, what=f"put back #{round_} recorded")
    world.fake.set_timeout_out_of_band(web, 120)  # the third time, it stops fighting
    manager.resync()
    eventually(lambda: world.events("app", "TimeoutOverridden"), what="stop-fighting warning")
    eventually(lambda: overridden() == 3)
    assert world.patches(web) == [3600, 3600, 3600]
    assert world.timeout_of(web) == 120
    manager.resync()  # standing off: no write, and the warning is not said again
    manager.resync()
    # Nothing ready; one key waits: the stand-off's own timer, for when its hour is over.
    eventually(lambda: len(manager.queue) == 0 and manager.queue.delayed() == 1)
    assert world.patches(web) == [3600, 3600, 3600]
    assert sum(e.get("count", 1) for e in world.events("app", "TimeoutOverridden")) == 1


def test_backend_recreated_under_a_new_name_is_reconciled_like_any_other(world: World):
    old = world.backend("web")
    world.ingress("app", timeout="1h", backends=[old])
    world.start()
    eventually(lambda: world.timeout_of(old) == 3600)
    eventually(lambda: world.events("app", "TimeoutApplied"), what="that reconcile finished")

    # ingress-gce replaces the backend service (e.g. NEG -> instance group): new name, 30 s
    world.fake.delete_backend(old)
    new = "k8s-be-31999--0e20ca25204f6195"
    world.fake.add_backend(new, service=f"{world.ns}/web", timeout=30)
    world.annotate("app", json.dumps({new: "HEALTHY"}), key="ingress.kubernetes.io/backends")
    eventually(lambda: world.timeout_of(new) == 3600, what="new backend patched")
    assert world.events("app", "BackendNotFound") == []  # the old one is simply forgotten


def test_malformed_backends_annotation_warns_and_keeps_what_was_applied(world: World):
    web = world.backend("web")
    world.ingress("app", timeout="10m", backends=[web])
    manager = world.start()
    eventually(lambda: world.timeout_of(web) == 600)
    eventually(lambda: world.events("app", "TimeoutApplied"), what="that reconcile finished")

    world.annotate("app", "{not json", key="ingress.kubernetes.io/backends")
    warning = eventually(lambda: world.events("app", "InvalidBackends"), what="warning")
    assert warning[0]["type"] == "Warning"
    manager.resync()  # a later pass changes nothing either: no restore of the kept value
    eventually(lambda: len(manager.queue) == 0 and not manager.queue.delayed())
    assert world.patches(web) == [600]
    assert world.timeout_of(web) == 600


def test_a_failing_read_after_a_stale_fingerprint_is_retried_not_a_crash(world: World, caplog):
    web = world.backend("web")
    world.fake.inject("PATCH", web, 412, times=1)
    world.fake.inject("GET", web, 503, times=8)  # the fresh read fails a while too
    world.start()
    world.ingress("app", timeout="1h", backends=[web])
    eventually(lambda: world.timeout_of(web) == 3600, what="applied in the end")
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


def test_a_record_write_failing_after_the_patch_still_tells_the_event(world: World):
    # The outcome record write after a PATCH fails (409: someone changed the record
    # meanwhile); the retry finds the value already right, and the write is still told.
    web = world.backend("web")
    world.ingress("app", backends=[web])
    world.start()
    world.fake.op_delay = 2.0  # long enough to change the record while it waits
    world.annotate("app", "1h")
    pending = eventually(
        lambda: (world.records().get(web) or {}).get("intent"), what="the intent recorded"
    )
    assert pending["values"]["timeout"]["value"] == 3600
    eventually(lambda: world.fake.pending_operations() == 1, what="the PATCH sent")
    name = next(
        i["metadata"]["name"]
        for i in world.kube.get(
            f"/apis/ingress-timeout.dev/v1/namespaces/{world.ns}/backendtimeouts"
        )["items"]
    )
    world.kube.patch(
        f"/apis/ingress-timeout.dev/v1/namespaces/{world.ns}/backendtimeouts/{name}",
        {"metadata": {"labels": {"touched": "yes"}}},
    )
    eventually(lambda: world.timeout_of(web) == 3600)
    [event] = eventually(lambda: world.events("app", "TimeoutApplied"), what="TimeoutApplied")
    assert event["count"] == 1
    eventually(lambda: (world.records().get(web) or {}).get("intent") is None, what="settled")
    assert world.patches(web) == [3600]
    assert [e["count"] for e in world.events("app", "TimeoutApplied")] == [1]


def test_a_write_waiting_on_its_operation_holds_its_backend_not_the_worker(
    apiserver: ControlPlane, namespace: str
):
    # The fake's operations end only when this clock moves: until then every write
    # waits on its operation, as on GCP, where one takes seconds.
    now = [0.0]
    with ComputeFake(
        op_delay=10.0, wait_max=WAIT_MAX, token=TOKEN, page_cap=PAGE_CAP, clock=lambda: now[0]
    ) as fake:
        world = World(apiserver, namespace, fake)
        try:
            first, second = world.backend("first"), world.backend("second")
            world.ingress("a", timeout="1h", backends=[first], services=["first"])
            world.ingress("b", timeout="1h", backends=[second], services=["second"])
            world.start(workers=1)
            # One worker, and both PATCHes out while the first operation still runs.
            eventually(
                lambda: world.patches(first) == [3600] and world.patches(second) == [3600],
                what="the second backend's PATCH sent while the first write waits",
            )
            world.annotate("a", "2h")  # its backend's next decision waits for the first write
            fake.op_delay = 0.0
            now[0] += 10.0
            eventually(lambda: world.patches(first) == [3600, 7200], what="the change applied")
            eventually(lambda: world.events("a", "TimeoutApplied") and world.events("b"))
            eventually(lambda: applied(world.records().get(first)) == 7200, what="outcome")
            assert applied(world.records().get(second)) == 3600
            # Never a decision on a backend while its write was under way: GCP would have
            # refused a second PATCH with resourceNotReady.
            assert not [c for c in fake.calls if c.method == "PATCH" and c.status != 200]
        finally:
            world.stop()
