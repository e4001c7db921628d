"""The decisions over the table of managed fields: the timeout and connection draining,
each under the timeout's rules, written together in one PATCH under one intent.

Table tests first, then properties over random runs in which Ingresses ask either
field, both or neither, per Service or for every backend, while someone else changes
either field and writes land, crash or are lost.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.fields import FIELDS, patch_body
from controller.ingress import KEEP, Ask, Ingress, Problem
from controller.model import Backend, BackendRef, Settings
from controller.plan import (
    Decision,
    Intent,
    Record,
    State,
    confirmed,
    decide,
    settle,
)

UID = "0e20ca25204f6195"
S = Settings(timeout_key="ingress-timeout.dev/timeout", cluster_uid=UID)
SHARED = BackendRef("global", f"k8s-be-30480--{UID}")
WS = BackendRef("global", f"k8s1-{UID[:8]}-shop-ws-8080-1111")
API = BackendRef("global", f"k8s1-{UID[:8]}-shop-api-80-2222")
SERVES = {SHARED: ("shop/web", "80"), WS: ("shop/ws", "8080"), API: ("shop/api", "80")}
NOW = 1_800_000_000.0


def at(ref=SHARED, timeout=30, draining=0, fingerprint="fp"):
    service, port = SERVES[ref]
    return Backend(ref, timeout, fingerprint, service, draining_sec=draining, port=port)


def ing(name="a", *, timeout=None, draining=None, per_service=(), refs=(SHARED,), kept=()):
    asks = []
    if timeout is not None or per_service or kept:
        kept_t = frozenset(k for f, k in kept if f == "timeout")
        asks.append(("timeout", Ask(timeout, tuple(sorted(per_service)), kept_t)))
    if draining is not None:
        asks.append(("draining", Ask(draining)))
    services = frozenset({"web", "ws", "api"})
    return Ingress("shop", name, f"uid-{name}", services, tuple(refs), tuple(asks))


def run(fact, ingresses=(), record=None, *, gone=(), now=NOW, rid="r1", config=S) -> Decision:
    claimants: dict[str, Ingress | None] = {i.key: i for i in ingresses}
    claimants.update(dict.fromkeys(gone))
    for key in record.ingresses() if record else ():
        claimants.setdefault(key, None)
    return decide(fact.ref, fact, claimants, record, config, now=now, request_id=rid)


def reasons(d: Decision, key=None):
    return sorted(n.reason for n in d.notes if key is None or n.key == key)


# --- the table --------------------------------------------------------------------------


def test_the_table_says_where_each_field_sits_in_a_backend_service():
    item = {"timeoutSec": 3600, "connectionDraining": {"drainingTimeoutSec": 300}}
    assert [(f.name, f.label, f.read(item)) for f in FIELDS] == [
        ("timeout", "timeoutSec", 3600),
        ("draining", "connectionDraining.drainingTimeoutSec", 300),
    ]
    assert [f.read({}) for f in FIELDS] == [30, 0]  # what Compute means by an absent field
    assert patch_body({"timeout": 3600, "draining": 300}, "fp") == {
        "timeoutSec": 3600,
        "connectionDraining": {"drainingTimeoutSec": 300},
        "fingerprint": "fp",
    }


# --- each field under the timeout's rules ----------------------------------------------


def test_draining_is_set_recorded_and_restored_to_its_own_default():
    d = run(at(), [ing(draining=300)])
    assert d.writes == {"draining": 300} and d.was == {"draining": 0}
    assert d.record is not None and d.record.intent == Intent(
        (("draining", 300, 0),), "r1", NOW, fingerprint="fp"
    )
    assert d.record.state("draining").applied is None  # not ours until seen done
    assert d.record.state("timeout") == State()  # nobody asks a timeout: nothing kept of it
    done = confirmed(d)
    kept = (("draining", State(300, 300, (("shop/a", 300),))),)
    assert done == Record(kept, result="Applied", notes=d.notes, notes_at=NOW)  # owed, kept
    removed = run(at(draining=300), [ing()], done)
    assert removed.writes == {"draining": 0} and removed.restores == {"draining"}
    assert reasons(removed) == ["TimeoutRestored"]
    assert "connectionDraining.drainingTimeoutSec" in removed.notes[0].message
    assert confirmed(removed) is None


def test_draining_is_restored_to_the_configured_default():
    config = replace(S, default_draining_timeout=60)
    done = confirmed(run(at(), [ing(draining=300)], config=config))
    removed = run(at(draining=300), [], done, gone=["shop/a"], config=config)
    assert removed.writes == {"draining": 60}


def test_a_draining_value_already_there_is_not_taken_as_ours():
    d = run(at(draining=300), [ing(draining=300)])
    assert d.writes == {} and d.record is not None
    assert d.record.state("draining").applied is None and d.record.result == "AlreadySet"
    removed = run(at(draining=300), [ing()], d.record)
    assert removed.writes == {} and removed.record is None  # the BackendConfig's value stays


def test_a_draining_value_someone_else_set_since_is_theirs_on_removal():
    done = confirmed(run(at(), [ing(draining=300)]))
    d = run(at(draining=120), [ing()], done)
    assert d.writes == {} and d.record is None and reasons(d) == ["RestoreSkipped"]
    assert "120s" in d.notes[0].message and "drainingTimeoutSec" in d.notes[0].message


def test_zero_draining_asked_over_ours_is_a_write_not_a_restore():
    done = confirmed(run(at(), [ing(draining=300)]))
    d = run(at(draining=300), [ing(draining=0)], done)
    assert d.writes == {"draining": 0} and d.restores == frozenset()
    kept = (("draining", State(0, 0, (("shop/a", 0),))),)
    assert confirmed(d) == Record(kept, result="Applied", notes=d.notes, notes_at=NOW)


def test_each_field_fights_someone_else_on_its_own():
    record = confirmed(run(at(), [ing(timeout=3600, draining=300)]))
    for i in range(1, 4):
        d = run(
            at(timeout=3600, draining=0), [ing(timeout=3600, draining=300)], record, now=NOW + i
        )
        record = confirmed(d) if d.writes else d.record
    assert d.writes == {} and reasons(d) == ["TimeoutOverridden"]
    assert "drainingTimeoutSec" in d.notes[0].message
    assert record is not None and record.state("draining").overridden == 3
    assert record.state("timeout").overridden == 0 and record.state("timeout").applied == 3600


# --- both fields, one PATCH -------------------------------------------------------------


def test_both_fields_that_differ_go_in_one_write_under_one_intent():
    d = run(at(), [ing(timeout=3600, draining=300)])
    assert d.writes == {"timeout": 3600, "draining": 300}
    assert d.was == {"timeout": 30, "draining": 0}
    assert d.record is not None
    assert d.record.intent == Intent(
        (("timeout", 3600, 30), ("draining", 300, 0)), "r1", NOW, fingerprint="fp"
    )
    messages = sorted(n.message for n in d.notes)
    assert [m.split(" of ")[0] for m in messages] == [
        "set connectionDraining.drainingTimeoutSec",
        "set timeoutSec",
    ]
    again = run(at(timeout=3600, draining=300), [ing(timeout=3600, draining=300)], confirmed(d))
    assert again.writes == {} and again.notes == ()


def test_only_the_field_that_differs_is_written():
    done = confirmed(run(at(), [ing(timeout=3600, draining=300)]))
    d = run(at(timeout=3600, draining=300), [ing(timeout=7200, draining=300)], done)
    assert d.writes == {"timeout": 7200}


def test_the_replaced_value_put_back_by_someone_else_is_not_a_write_on_its_way():
    # Our restore landed (30), then someone set 3600 again: the value is the one our
    # write replaced, but the fingerprint is not the one it was sent against.
    held = confirmed(run(at(timeout=30, fingerprint="f1"), [ing(timeout=3600)]))
    restoring = run(at(timeout=3600, fingerprint="f2"), [], held, gone=["shop/a"]).record
    assert restoring is not None and restoring.intent is not None
    assert restoring.intent.fingerprint == "f2"
    still = run(at(timeout=3600, fingerprint="f2"), [], restoring, gone=["shop/a"], now=NOW + 5)
    assert still.writes == {"timeout": 30}  # nothing written since: the same restore again
    theirs = run(at(timeout=3600, fingerprint="f4"), [], restoring, gone=["shop/a"], now=NOW + 5)
    assert theirs.writes == {} and theirs.record is None


def test_a_crash_after_the_intent_of_both_is_settled_by_the_values_there():
    pending = run(at(), [ing(timeout=3600, draining=300)], rid="first").record
    landed = run(at(timeout=3600, draining=300), [ing()], pending, now=NOW + 5)
    assert landed.writes == {"timeout": 30, "draining": 0}  # both ours: both restored
    lost = run(at(), [ing(timeout=3600, draining=300)], pending, rid="second", now=NOW + 5)
    assert lost.writes == {"timeout": 3600, "draining": 300}
    assert lost.record is not None and lost.record.intent is not None
    assert lost.record.intent.request_id == "first"  # the same write again: the same id


def test_a_pending_part_given_up_for_another_fields_write_is_no_longer_ours():
    # Both ours (600, 60); then the timeout is restored and draining set to 0 in one
    # write that is lost in a crash; then nobody asks anything. The timeout's restore is
    # sent again; draining's set, which may still land, is given up with that write:
    # what draining shows is not known to be ours any more, and is never restored.
    held = confirmed(run(at(), [ing("c", timeout=600, draining=60)]))
    lost = run(at(timeout=600, draining=60), [ing("a", draining=0)], held, gone=["shop/c"])
    assert lost.writes == {"timeout": 30, "draining": 0} and lost.restores == {"timeout"}
    d = run(at(timeout=600, draining=60), [], lost.record, gone=["shop/a", "shop/c"], now=NOW + 1)
    assert d.writes == {"timeout": 30} and d.restores == {"timeout"}
    done = confirmed(d)
    assert done is None or done.state("draining").applied is None
    again = run(at(timeout=30, draining=60), [], done, gone=["shop/a", "shop/c"], now=NOW + 2)
    assert again.writes == {}


def test_settle_takes_each_field_on_its_own():
    intent = Intent((("timeout", 3600, 30), ("draining", 300, 0)), "r", NOW, fingerprint="fp")
    record = Record(intent=intent)
    # The timeout is there; draining is still what it replaced, under the fingerprint the
    # write was sent against: still on its way (an impossible mix for one PATCH, but each
    # field is settled on its own).
    settled = settle(record, at(timeout=3600, draining=0), NOW + 1, S)
    assert settled is not None and settled.state("timeout").applied == 3600
    assert settled.intent == Intent((("draining", 300, 0),), "r", NOW, fingerprint="fp")
    # Long after, a value neither ours nor the one replaced: someone else's.
    late = settle(record, at(timeout=60, draining=0), NOW + S.intent_ttl + 1, S)
    assert late is not None and late.intent is None and late.fields == ()


# --- a shared backend -------------------------------------------------------------------


def test_shared_backend_one_ingress_asks_draining_the_other_only_a_timeout():
    drains, waits = ing("drains", draining=300), ing("waits", timeout=3600)
    d = run(at(), [drains, waits])
    assert d.writes == {"timeout": 3600, "draining": 300}
    assert reasons(d) == ["TimeoutApplied", "TimeoutApplied"]  # no conflict: different fields
    told = {n.key: n.message for n in d.notes}
    assert "drainingTimeoutSec" in told["shop/drains"] and "timeoutSec" in told["shop/waits"]
    assert "drainingTimeoutSec" not in told["shop/waits"]
    done = confirmed(d)
    assert done is not None
    assert done.state("timeout").claims == (("shop/waits", 3600),)
    assert done.state("draining").claims == (("shop/drains", 300),)
    # The draining annotation goes: draining comes back to 0, the timeout stays.
    d = run(at(timeout=3600, draining=300), [ing("drains"), waits], done)
    assert d.writes == {"draining": 0} and d.restores == {"draining"}
    assert reasons(d, "shop/drains") == ["TimeoutRestored"] and reasons(d, "shop/waits") == []
    kept = confirmed(d)
    assert kept == Record(
        (("timeout", State(3600, 3600, (("shop/waits", 3600),))),),
        result="Applied",
        notes=d.notes,  # the restore's Event, owed until a later write
        notes_at=NOW,
    )


def test_largest_draining_wins_and_both_are_told_naming_the_field():
    d = run(at(), [ing("a", draining=60), ing("b", draining=600)])
    assert d.writes == {"draining": 600}
    assert reasons(d, "shop/a") == ["SharedBackendConflict", "TimeoutApplied"]
    conflict = next(n for n in d.notes if n.reason == "SharedBackendConflict")
    assert "drainingTimeoutSec" in conflict.message and "600s" in conflict.message


def test_a_foreign_backend_is_refused_once_whatever_the_fields_asked():
    theirs = Backend(SHARED, 30, "fp", "bank/api", port="80")
    d = run(theirs, [ing(timeout=3600, draining=300)])
    assert d.writes == {} and reasons(d) == ["ForeignBackend"]


# --- per Service ------------------------------------------------------------------------


def test_a_per_service_timeout_overrides_the_ingress_timeout_for_that_service_only():
    asks = ing(timeout=30, per_service=[("ws", 3600)], refs=(WS, API))
    assert run(at(WS), [asks]).writes == {"timeout": 3600}
    assert run(at(API, timeout=60), [asks]).writes == {"timeout": 30}


def test_name_and_port_is_more_specific_than_name():
    asks = ing(per_service=[("ws", 600), ("ws:8080", 3600), ("ws:9090", 60)], refs=(WS,))
    assert run(at(WS), [asks]).writes == {"timeout": 3600}


def test_a_per_service_entry_alone_leaves_the_other_services_alone():
    asks = ing(per_service=[("ws", 3600)], refs=(WS, API))
    assert run(at(WS), [asks]).writes == {"timeout": 3600}
    d = run(at(API), [asks])
    assert d.writes == {} and d.record is None and d.notes == ()


def test_a_per_service_value_refused_keeps_what_that_service_asked_before():
    before = confirmed(run(at(WS), [ing(per_service=[("ws", 3600)], refs=(WS,))]))
    refused = ing(timeout=30, kept=[("timeout", "ws")], refs=(WS, API))
    d = run(at(WS, timeout=3600), [refused], before)
    assert d.writes == {} and d.record is not None
    assert d.record.state("timeout").claims == (("shop/a", 3600),)
    assert run(at(API, timeout=60), [refused]).writes == {"timeout": 30}  # the rest applies


def test_an_ingress_refused_as_a_whole_keeps_every_field():
    done = confirmed(run(at(), [ing(timeout=3600, draining=300)]))
    broken = replace(ing(), asks=(), refs=(), problem=Problem("InvalidBackends", "no"))
    d = run(at(timeout=3600, draining=300), [broken], done)
    assert d.writes == {} and d.record is not None
    assert d.record.state("timeout").claims == (("shop/a", 3600),)
    assert d.record.state("draining").claims == (("shop/a", 300),)


# --- properties -------------------------------------------------------------------------

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    database=None,
    derandomize=os.environ.get("CI", "").lower() == "true",
    suppress_health_check=[HealthCheck.too_slow],
)
KEYS = ("shop/a", "shop/b", "shop/c")
TIMEOUTS = st.sampled_from([None, 30, 60, 3600, 7200])
DRAININGS = st.sampled_from([None, 0, 60, 300, 3600])
PER_SERVICE = st.sampled_from([(), (("web", 600),), (("web:80", 900),), (("other", 5),)])
OUTCOMES = st.sampled_from(["done", "done", "crash_landed", "crash_lost"])
EXTERNAL = st.sampled_from(
    [None, None, None, ("timeout", 60), ("draining", 120), ("timeout", 3600)]
)
DT = st.sampled_from([0.0, 1.0, 60.0, 1801.0, 3601.0])


@dataclass(frozen=True)
class Step:
    asks: Mapping[str, Ingress | None]
    external: tuple[str, int] | None
    dt: float
    outcome: str


@st.composite
def steps(draw: st.DrawFn) -> list[Step]:
    out = []
    for _ in range(draw(st.integers(1, 6))):
        asks: dict[str, Ingress | None] = {}
        for key in draw(st.lists(st.sampled_from(KEYS), unique=True, max_size=3)):
            name = key.split("/")[1]
            if draw(st.booleans()) and draw(st.booleans()):
                asks[key] = None  # deleted
                continue
            asks[key] = ing(
                name,
                timeout=draw(TIMEOUTS),
                draining=draw(DRAININGS),
                per_service=draw(PER_SERVICE),
            )
        out.append(Step(asks, draw(EXTERNAL), draw(DT), draw(OUTCOMES)))
    return out


@dataclass(frozen=True)
class Seen:
    fact: Backend
    asks: Mapping[str, Ingress | None]
    record: Record | None
    decision: Decision
    ours: Mapping[str, int | None]  # the model: per field, the value there that is ours


def simulate(run: list[Step]) -> list[Seen]:
    """Passes over SHARED with a model of whose each field's value is: ours after our
    write landed, nobody's (None) after anyone else's change."""
    values = {"timeout": 30, "draining": 0}
    ours: dict[str, int | None] = {"timeout": None, "draining": None}
    record: Record | None = None
    now, seen, writes = NOW, [], 0  # every write gives the backend a new fingerprint
    for i, step in enumerate(run):
        if step.external is not None and values[step.external[0]] != step.external[1]:
            name, value = step.external
            # Someone else's value is theirs, unless it is the very value of a write of
            # ours that was sent and never seen to end: the two cannot be told apart.
            sent = record.intent.of(name) if record and record.intent else None
            values[name], ours[name] = value, value if sent and sent[0] == value else None
            writes += 1
        now += step.dt
        fact = at(timeout=values["timeout"], draining=values["draining"], fingerprint=f"f{writes}")
        d = run_pass(fact, step.asks, record, now, f"rid-{i}")
        seen.append(Seen(fact, step.asks, record, d, dict(ours)))
        record = d.record
        if d.writes and step.outcome != "crash_lost":
            values.update(d.writes)
            ours.update(d.writes)
            writes += 1
            if step.outcome == "done":
                record = confirmed(d)
    return seen


def run_pass(fact, asks, record, now, rid) -> Decision:
    claimants = dict(asks)
    for key in record.ingresses() if record else ():
        claimants.setdefault(key, None)
    return decide(fact.ref, fact, claimants, record, S, now=now, request_id=rid)


def asked(ingress: Ingress | None, field: str) -> int | None:
    """What ``ingress`` asks of ``field`` of SHARED (no strategy here refuses a value)."""
    ask = ingress.ask(field) if ingress is not None else None
    value = None if ask is None else ask.of("web", "80")
    assert value != KEEP
    return value


@PROPERTY
@given(steps())
def test_each_field_is_written_the_largest_claim_on_it_or_restored_to_its_default(run):
    for s in simulate(run):
        for f in FIELDS:
            if f.name not in s.decision.writes:
                continue
            claims = [v for v in (asked(i, f.name) for i in s.asks.values()) if v is not None]
            if f.name in s.decision.restores:
                assert s.decision.writes[f.name] == f.default(S) and not claims
            else:
                assert s.decision.writes[f.name] == max(claims)


@PROPERTY
@given(steps())
def test_a_field_nobody_asks_of_is_never_set_only_restored(run):
    for s in simulate(run):
        for name in s.decision.writes:
            if all(asked(i, name) is None for i in s.asks.values()):
                assert name in s.decision.restores


@PROPERTY
@given(steps())
def test_a_field_is_restored_only_over_a_value_that_is_ours(run):
    for s in simulate(run):
        for name in s.decision.restores:
            assert s.fact.value(name) == s.ours[name], (name, s.fact, s.ours)


@PROPERTY
@given(steps())
def test_one_write_one_intent_carrying_exactly_the_fields_written(run):
    for s in simulate(run):
        d = s.decision
        if not d.writes:
            continue
        assert d.record is not None and d.record.intent is not None
        assert {(n, v, w) for n, v, w in d.record.intent.values} == {
            (n, v, d.was[n]) for n, v in d.writes.items()
        }
        assert all(d.was[n] == s.fact.value(n) != v for n, v in d.writes.items())


@PROPERTY
@given(steps())
def test_a_pass_over_its_own_confirmed_output_writes_nothing(run):
    for s in simulate(run):
        d = s.decision
        if not d.writes:
            continue
        after = s.fact.with_values(d.writes)
        again = run_pass(after, s.asks, confirmed(d), NOW + 10**6, "again")
        assert again.writes == {}
