"""The decisions, table by table: no fakes, plain data in and out."""

from __future__ import annotations

import json

from controller.ingress import Ingress
from controller.model import Backend, BackendRef
from controller.plan import Plan, Record, Settings, backends_to_read, decide

KEY = "ingress-timeout.dev/timeout"
S = Settings(timeout_key=KEY, region="europe-west1")
WEB = BackendRef("global", "k8s1-aaaa-shop-web-80-1111")
CHAT = BackendRef("global", "k8s1-aaaa-shop-chat-80-2222")
SHARED = BackendRef("global", "k8s-be-30480--0e20ca25204f6195")
DEFAULT = BackendRef("global", "k8s-be-31000--0e20ca25204f6195")
OTHER_NS = BackendRef("global", "k8s1-aaaa-bank-api-80-3333")


def ing(
    name="chat",
    ns="shop",
    timeout="1h",
    backends=(WEB, CHAT),
    services=("web", "chat"),
    ingress_class="gce",
):
    raw = None if backends is None else json.dumps({r.name: "HEALTHY" for r in backends})
    return Ingress(ns, name, f"uid-{name}", ingress_class, None, timeout, raw, frozenset(services))


def fact(ref, timeout=30, service=None):
    owners = {
        WEB: "shop/web",
        CHAT: "shop/chat",
        SHARED: "shop/web",
        DEFAULT: "kube-system/default-http-backend",
        OTHER_NS: "bank/api",
    }
    return Backend(ref, timeout, "fp", service or owners.get(ref))


def run(key, ingresses, facts, records=None, settings=S) -> Plan:
    by_key = {i.key: i for i in ingresses}
    return decide(key, by_key, {f.ref: f for f in facts}, records or {}, settings)


def writes(plan):
    return {s.ref: s.set_to for s in plan.steps if s.set_to is not None}


def notes(plan):
    return [*plan.notes, *(n for s in plan.steps for n in s.notes)]


def reasons(plan, key=None):
    return sorted(n.reason for n in notes(plan) if key is None or n.key == key)


def test_annotation_sets_every_owned_backend():
    plan = run("shop/chat", [ing()], [fact(WEB), fact(CHAT)])
    assert writes(plan) == {WEB: 3600, CHAT: 3600}
    assert reasons(plan) == ["TimeoutApplied", "TimeoutApplied"]
    assert {s.ref: s.record for s in plan.steps}[WEB] == Record(3600, (("shop/chat", 3600),))


def test_value_already_right_writes_nothing():
    plan = run("shop/chat", [ing()], [fact(WEB, 3600), fact(CHAT, 3600)])
    assert writes(plan) == {}
    assert reasons(plan) == []


def test_value_already_right_is_not_claimed_as_ours_to_restore():
    plan = run("shop/chat", [ing()], [fact(WEB, 3600)])
    assert plan.steps[0].record == Record(None, (("shop/chat", 3600),))
    removed = run("shop/chat", [ing(timeout=None)], [fact(WEB, 3600)], {WEB: plan.steps[0].record})
    assert writes(removed) == {}


def test_invalid_timeout_warns_and_keeps_what_was_applied():
    before = {WEB: Record(600, (("shop/chat", 600),))}
    plan = run("shop/chat", [ing(timeout="abc")], [fact(WEB, 600)], before)
    assert writes(plan) == {}
    assert reasons(plan) == ["InvalidTimeout"]
    assert plan.steps[0].record == before[WEB]


def test_invalid_timeout_keeps_its_claim_on_a_shared_backend():
    before = {SHARED: Record(600, (("shop/a", 600), ("shop/b", 60)))}
    ingresses = [
        ing("a", timeout="-5", backends=(SHARED,)),
        ing("b", timeout="60s", backends=(SHARED,)),
    ]
    plan = run("shop/b", ingresses, [fact(SHARED, 600)], before)
    assert writes(plan) == {}  # b's 60 does not undercut a's kept 600


def test_malformed_backends_warn_and_change_nothing():
    broken = Ingress("shop", "chat", "u", "gce", None, "1h", "{not json", frozenset({"web"}))
    before = {WEB: Record(600, (("shop/chat", 600),))}
    plan = run("shop/chat", [broken], [fact(WEB, 600)], before)
    assert writes(plan) == {}
    assert reasons(plan) == ["InvalidBackends"]


def test_removal_restores_the_default_when_the_value_is_still_ours():
    before = {WEB: Record(3600, (("shop/chat", 3600),))}
    plan = run("shop/chat", [ing(timeout=None)], [fact(WEB, 3600)], before)
    assert writes(plan) == {WEB: 30}
    assert plan.steps[0].restore and plan.steps[0].record is None
    assert reasons(plan) == ["TimeoutRestored"]


def test_deleted_ingress_restores_too():
    before = {WEB: Record(3600, (("shop/chat", 3600),))}
    plan = run("shop/chat", [], [fact(WEB, 3600)], before)
    assert writes(plan) == {WEB: 30}


def test_restore_uses_the_configured_default():
    before = {WEB: Record(3600, (("shop/chat", 3600),))}
    settings = Settings(timeout_key=KEY, default_timeout=45)
    plan = run("shop/chat", [], [fact(WEB, 3600)], before, settings)
    assert writes(plan) == {WEB: 45}


def test_removal_leaves_a_value_someone_else_changed_and_says_so():
    before = {WEB: Record(3600, (("shop/chat", 3600),))}
    plan = run("shop/chat", [ing(timeout=None)], [fact(WEB, 120)], before)
    assert writes(plan) == {}
    assert plan.steps[0].record is None
    assert reasons(plan) == ["RestoreSkipped"]


def test_backends_to_read_include_those_remembered_for_a_deleted_ingress():
    records = {WEB: Record(3600, (("shop/chat", 3600),)), CHAT: Record(60, (("shop/x", 60),))}
    assert backends_to_read("shop/chat", {}, records, S) == {WEB}
    assert backends_to_read("shop/chat", {"shop/chat": ing()}, {}, S) == {WEB, CHAT}


def test_largest_timeout_wins_on_shared_backend_and_everyone_is_warned():
    a = ing("a", timeout="60", backends=(SHARED,), services=("web",))
    b = ing("b", timeout="600", backends=(SHARED,), services=("web",))
    plan = run("shop/a", [a, b], [fact(SHARED)])
    assert writes(plan) == {SHARED: 600}
    conflicts = [n for n in notes(plan) if n.reason == "SharedBackendConflict"]
    assert {n.key for n in conflicts} == {"shop/a", "shop/b"}
    assert "shop/b (600s)" in next(n.message for n in conflicts if n.key == "shop/a")


def test_shared_backend_does_not_flap_between_reconciles_of_either_ingress():
    a = ing("a", timeout="60", backends=(SHARED,), services=("web",))
    b = ing("b", timeout="600", backends=(SHARED,), services=("web",))
    first = run("shop/a", [a, b], [fact(SHARED)])
    record = {SHARED: first.steps[0].record}
    for key in ["shop/b", "shop/a", "shop/b"]:
        assert writes(run(key, [a, b], [fact(SHARED, 600)], record)) == {}


def test_one_ingress_leaving_a_shared_backend_lowers_it_to_the_rest():
    b = ing("b", timeout="60", backends=(SHARED,), services=("web",))
    before = {SHARED: Record(600, (("shop/a", 600), ("shop/b", 60)))}
    plan = run("shop/a", [b], [fact(SHARED, 600)], before)
    assert writes(plan) == {SHARED: 60}


def test_forged_backend_in_another_namespace_is_refused():
    plan = run("shop/chat", [ing(backends=(OTHER_NS,))], [fact(OTHER_NS)])
    assert writes(plan) == {}
    assert reasons(plan) == ["ForeignBackend"]
    assert "bank/api" in plan.notes[0].message


def test_backend_of_a_service_the_ingress_does_not_route_to_is_refused():
    plan = run("shop/chat", [ing(services=("web",))], [fact(WEB), fact(CHAT)])
    assert writes(plan) == {WEB: 3600}
    assert "ForeignBackend" in reasons(plan)


def test_backend_without_ingress_gce_description_is_refused():
    odd = Backend(WEB, 30, "fp", None)
    plan = decide("shop/chat", {"shop/chat": ing()}, {WEB: odd}, {}, S)
    assert writes(plan) == {} and reasons(plan) == ["ForeignBackend"]


def test_cluster_default_backend_is_skipped_without_warning():
    plan = run("shop/chat", [ing(backends=(WEB, DEFAULT))], [fact(WEB), fact(DEFAULT)])
    assert writes(plan) == {WEB: 3600}
    assert reasons(plan) == ["TimeoutApplied"]


def test_missing_backend_is_reported_and_forgotten():
    plan = decide("shop/chat", {"shop/chat": ing(backends=(WEB,))}, {WEB: None}, {}, S)
    assert writes(plan) == {} and reasons(plan) == ["BackendNotFound"]


def test_non_gce_class_and_unwatched_namespace_ask_nothing():
    nginx = ing(ingress_class="nginx")
    assert backends_to_read("shop/chat", {"shop/chat": nginx}, {}, S) == set()
    only_bank = Settings(timeout_key=KEY, namespaces=frozenset({"bank"}))
    assert backends_to_read("shop/chat", {"shop/chat": ing()}, {}, only_bank) == set()


def test_internal_class_targets_regional_backends():
    internal = ing(ingress_class="gce-internal", backends=(WEB,))
    assert backends_to_read("shop/chat", {"shop/chat": internal}, {}, S) == {
        BackendRef("europe-west1", WEB.name)
    }


def test_override_by_someone_else_is_reapplied_then_left_after_the_fight_limit():
    record = Record(3600, (("shop/chat", 3600),))
    for round_ in range(1, 3):
        plan = run("shop/chat", [ing(backends=(WEB,))], [fact(WEB, 120)], {WEB: record})
        assert writes(plan) == {WEB: 3600}
        assert plan.steps[0].record is not None
        record = plan.steps[0].record
        assert record.overridden == round_
    plan = run("shop/chat", [ing(backends=(WEB,))], [fact(WEB, 120)], {WEB: record})
    assert writes(plan) == {}
    assert reasons(plan) == ["TimeoutOverridden"]


def test_changing_the_annotation_ends_the_stand_off():
    record = Record(3600, (("shop/chat", 3600),), overridden=3)
    plan = run("shop/chat", [ing(timeout="2h", backends=(WEB,))], [fact(WEB, 120)], {WEB: record})
    assert writes(plan) == {WEB: 7200}
    assert plan.steps[0].record == Record(7200, (("shop/chat", 7200),), overridden=0)


def test_regional_ingress_without_a_known_region_warns_and_changes_nothing():
    internal = ing(ingress_class="gce-internal", backends=(WEB,))
    no_region = Settings(timeout_key=KEY)
    assert backends_to_read("shop/chat", {"shop/chat": internal}, {}, no_region) == set()
    plan = decide("shop/chat", {"shop/chat": internal}, {}, {}, no_region)
    assert reasons(plan) == ["RegionUnknown"]
