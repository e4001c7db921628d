"""The decisions, table by table: no fakes, plain data in and out.

Each backend service is decided on its own, from its claimants, its record
and its value now; a pass is fed the record the previous pass left.
"""

from __future__ import annotations

from dataclasses import replace

from controller.ingress import Ask, Ingress, Problem
from controller.model import Backend, BackendRef, Settings
from controller.plan import (
    MAX_OWED,
    Decision,
    Intent,
    Record,
    State,
    confirmed,
    decide,
    owner,
    refusal,
    refused,
)

UID = "0e20ca25204f6195"
OTHER_UID = "9f00aa11bb22cc33"
S = Settings(timeout_key="ingress-timeout.dev/timeout", cluster_uid=UID, region="europe-west1")
WEB = BackendRef("global", f"k8s1-{UID[:8]}-shop-web-80-1111")
SHARED = BackendRef("global", f"k8s-be-30480--{UID}")
DEFAULT = BackendRef("global", f"k8s-be-31000--{UID}")
OTHER_NS = BackendRef("global", f"k8s1-{UID[:8]}-bank-api-80-3333")
PROD_WEB = BackendRef("global", f"k8s1-{OTHER_UID[:8]}-shop-web-80-1111")  # another cluster's
PROD_IG = BackendRef("global", f"k8s-be-30480--{OTHER_UID}")
OWNERS = {
    WEB: "shop/web",
    SHARED: "shop/web",
    DEFAULT: "kube-system/default-http-backend",
    OTHER_NS: "bank/api",
    PROD_WEB: "shop/web",
    PROD_IG: "shop/web",
}
NOW = 1_800_000_000.0


def rec(desired, applied, claims=(), *, intent=None, overridden=0, overridden_at=0.0, result=""):
    """A record of the timeout alone, as every record was before draining."""
    state = State(desired, applied, tuple(claims), overridden, overridden_at)
    return Record((("timeout", state),) if state != State() else (), intent, result)


def intent(value, was, request_id, at, field="timeout", restore=False):
    restores = frozenset({field}) if restore else frozenset()
    return Intent(((field, value, was),), request_id, at, restores, fingerprint="fp")


def write(d: Decision, field="timeout"):
    """The value ``d`` writes to ``field``, or None."""
    return d.writes.get(field)


def restored(d: Decision, field="timeout"):
    return field in d.writes and field in d.restores


def was(d: Decision, field="timeout"):
    return d.was.get(field)


def ing(name="app", seconds=3600, refs=(WEB,), ns="shop", services=("web",), problem=None):
    asks = () if seconds is None else (("timeout", Ask(seconds)),)
    return Ingress(ns, name, f"uid-{name}", frozenset(services), tuple(refs), asks, problem)


def at(ref=WEB, timeout=30, fingerprint="fp"):
    return Backend(ref, timeout, fingerprint, OWNERS.get(ref))


def run(backend, ingresses=(), record=None, *, gone=(), now=NOW, settings=S, rid="req-1"):
    claimants: dict[str, Ingress | None] = {i.key: i for i in ingresses}
    claimants.update({k: None for k in gone})
    ref = backend.ref if backend is not None else WEB
    return decide(ref, backend, claimants, record, settings, now=now, request_id=rid)


def reasons(decision: Decision, key=None):
    return sorted(n.reason for n in decision.notes if key is None or n.key == key)


def after(decision: Decision) -> Record | None:
    """The record once the decision's write (if any) is done."""
    return confirmed(decision)


def test_annotation_sets_an_owned_backend_with_an_intent_first():
    d = run(at(WEB), [ing()])
    assert write(d) == 3600 and was(d) == 30
    assert d.record is not None and d.record.intent == intent(3600, 30, "req-1", NOW)
    assert d.record.state("timeout").applied is None  # not ours until the write is seen done
    assert reasons(d) == ["TimeoutApplied"]
    done = after(d)
    assert done == replace(
        rec(3600, 3600, (("shop/app", 3600),), result="Applied"), notes=d.notes, notes_at=NOW
    )
    assert d.record.notes == d.notes and d.record.notes_at == NOW  # owed from the intent on


def test_a_write_found_done_after_its_record_write_failed_is_told_then():
    # The intent was recorded, the PATCH landed, the outcome record was never written
    # (a kill, a failed write, a lost Lease): the next decision tells what it owed.
    first = run(at(WEB), [ing()])
    again = run(at(WEB, 3600), [ing()], first.record)
    assert write(again) is None
    assert reasons(again) == ["TimeoutApplied"] and again.notes == first.notes
    assert again.record is not None and again.record.intent is None
    assert run(at(WEB, 3600), [ing()], again.record).notes == ()  # told once, not again


def test_a_write_that_never_landed_owes_nothing():
    first = run(at(WEB), [ing()])
    retried = run(at(WEB, 30), [ing()], first.record)
    assert write(retried) == 3600  # sent again, same requestId; told once it is done
    assert reasons(retried) == ["TimeoutApplied"]
    assert retried.record is not None and retried.record.notes == first.notes


def test_a_restore_found_done_tells_what_it_owed():
    applied = after(run(at(WEB), [ing()]))
    restoring = run(at(WEB, 3600), [ing(seconds=None)], applied)
    assert restored(restoring) and reasons(restoring) == ["TimeoutRestored"]
    found_done = run(at(WEB, 30), [ing(seconds=None)], restoring.record)
    assert reasons(found_done) == ["TimeoutRestored"] and found_done.record is None


def test_the_events_a_record_owes_are_bounded():
    many = [ing(name=f"app{i}") for i in range(40)]
    d = run(at(WEB), many)
    assert len(d.notes) == 40 and d.record is not None and len(d.record.notes) == MAX_OWED


def test_second_pass_over_its_own_output_changes_nothing():
    first = run(at(WEB), [ing()])
    second = run(at(WEB, 3600), [ing()], after(first))
    assert write(second) is None
    assert second.record == after(first)
    assert second.notes == ()


def test_value_already_there_is_not_patched_and_not_taken_as_ours():
    # item 2: a BackendConfig set 3600; the annotation asks the same
    d = run(at(WEB, 3600), [ing()])
    assert write(d) is None and d.record is not None and d.record.state("timeout").applied is None
    again = run(at(WEB, 3600), [ing()], d.record)  # the next resync, and the one after
    again = run(at(WEB, 3600), [ing()], again.record)
    assert again.record is not None and again.record.state("timeout").applied is None
    removed = run(at(WEB, 3600), [ing(seconds=None, refs=())], again.record)
    assert write(removed) is None and removed.record is None  # the BackendConfig's value stays


def test_largest_timeout_wins_on_a_shared_backend_and_both_are_told():
    short, long_ = ing("short", 60, refs=(SHARED,)), ing("long", 600, refs=(SHARED,))
    d = run(at(SHARED), [short, long_])
    assert write(d) == 600
    assert reasons(d, "shop/short") == ["SharedBackendConflict", "TimeoutApplied"]
    assert "600s (asked by shop/long)" in next(n.message for n in d.notes if n.key == "shop/short")


def many(k: int, seconds: int = 600) -> list[Ingress]:
    return [ing(f"c{i:04}", seconds, refs=(SHARED,)) for i in range(k)]


def test_one_change_among_a_thousand_claimants_tells_only_the_one_that_changed():
    held = after(run(at(SHARED), many(1000)))
    assert held is not None and held.state("timeout").applied == 600
    raised = [*many(1000)[:-1], ing("c0999", 900, refs=(SHARED,))]
    d = run(at(SHARED, 600), raised, held)
    assert write(d) == 900
    assert [(n.key, n.reason) for n in d.notes] == [("shop/c0999", "TimeoutApplied")]
    lowered = [*many(1000)[:-1], ing("c0999", 60, refs=(SHARED,))]
    d = run(at(SHARED, 600), lowered, held)
    assert write(d) is None
    assert [(n.key, n.reason) for n in d.notes] == [("shop/c0999", "SharedBackendConflict")]


def test_a_conflict_message_does_not_grow_with_the_claimants():
    def message(k: int) -> str:
        held = after(run(at(SHARED), many(k)))
        d = run(at(SHARED, 600), [*many(k)[1:], ing("c0000", 60, refs=(SHARED,))], held)
        (note,) = d.notes
        return str(note.message)

    assert len(message(1000)) - len(message(10)) <= 2  # the count's digits alone


def test_a_revert_no_claimant_caused_tells_the_claimant_that_decides():
    held = after(run(at(SHARED), [*many(999), ing("big", 900, refs=(SHARED,))]))
    d = run(at(SHARED, 120, "changed"), [*many(999), ing("big", 900, refs=(SHARED,))], held)
    assert write(d) == 900
    assert [(n.key, n.reason) for n in d.notes] == [("shop/big", "TimeoutApplied")]


def test_a_restart_with_every_claim_recorded_tells_nobody():
    claimants = [*many(5), ing("short", 60, refs=(SHARED,))]
    held = after(run(at(SHARED), claimants))
    assert run(at(SHARED, 600), claimants, held).notes == ()


def test_lost_update_cannot_happen_claims_are_read_together():
    # item 1: one decision sees every claim; the record matches what is written
    d = run(at(SHARED, 60), [ing("a", 60, refs=(SHARED,)), ing("b", 120, refs=(SHARED,))])
    done = after(d)
    assert write(d) == 120 and done is not None and done.state("timeout").applied == 120
    both_gone = run(at(SHARED, 120), [], done, gone=("shop/a", "shop/b"))
    assert write(both_gone) == 30 and restored(both_gone)


def test_removal_restores_the_default_only_if_the_value_is_still_ours():
    held = after(run(at(WEB), [ing()]))
    d = run(at(WEB, 3600), [], held, gone=["shop/app"])
    assert write(d) == 30 and restored(d) and after(d) is None
    console = run(at(WEB, 120), [ing(seconds=None, refs=())], held)
    assert write(console) is None and console.record is None
    assert reasons(console) == ["RestoreSkipped"]


def test_after_a_412_the_fresh_read_is_decided_again_not_the_old_decision_resent():
    # item 3: the restore was decided on 3600; the fresh read shows 120 from the console
    held = after(run(at(WEB), [ing()]))
    stale = run(at(WEB, 3600, "old"), [], held, gone=["shop/app"])
    assert write(stale) == 30
    fresh = run(at(WEB, 120, "new"), [], stale.record, gone=["shop/app"])
    assert write(fresh) is None and reasons(fresh) == []


def test_crash_between_patch_and_outcome_still_counts_the_value_as_ours():
    # item 4: the intent was recorded, the PATCH landed, the outcome was never recorded
    intent_only = run(at(WEB), [ing()]).record
    restart = run(at(WEB, 3600), [ing(seconds=None, refs=())], intent_only)
    assert write(restart) == 30 and restored(restart)


def test_a_write_not_yet_landed_is_sent_again_with_the_same_request_id():
    intent_only = run(at(WEB), [ing()], rid="first").record
    again = run(at(WEB, 30), [ing()], intent_only, rid="second", now=NOW + 200)
    assert write(again) == 3600
    assert again.record is not None and again.record.intent is not None
    assert again.record.intent.request_id == "first"


def test_an_unconfirmed_write_long_ago_that_never_landed_is_forgotten():
    intent_only = run(at(WEB), [ing()]).record
    later = run(at(WEB, 30), [ing(seconds=None, refs=())], intent_only, now=NOW + S.intent_ttl + 1)
    assert write(later) is None and later.record is None


def test_removal_while_a_write_may_still_land_keeps_the_record_until_settled():
    intent_only = run(at(WEB), [ing()]).record
    d = run(at(WEB, 30), [ing(seconds=None, refs=())], intent_only, now=NOW + 5)
    assert write(d) is None and d.record is not None and d.record.intent is not None
    landed = run(at(WEB, 3600), [ing(seconds=None, refs=())], d.record, now=NOW + 60)
    assert write(landed) == 30 and restored(landed)


def test_someone_else_changing_our_value_is_reverted_then_left_alone():
    record = after(run(at(WEB), [ing()]))
    writes = []
    for i in range(1, 4):
        d = run(at(WEB, 120), [ing()], record, now=NOW + i * 600, rid=f"r{i}")
        writes.append(write(d))
        record = after(d) if write(d) else d.record
    assert writes == [3600, 3600, None]
    assert reasons(d) == ["TimeoutOverridden"]
    standing = run(at(WEB, 120), [ing()], record, now=NOW + 2400)
    assert write(standing) is None and standing.notes == ()  # said once, not every resync
    right = run(at(WEB, 3600), [ing()], record, now=NOW + 2500)
    assert right.notes == ()


def test_overrides_far_apart_never_stop_the_controller():
    # item 5: the count is per fight window, not for ever
    record = after(run(at(WEB), [ing()]))
    for i in range(1, 6):
        d = run(at(WEB, 120), [ing()], record, now=NOW + i * 90 * 86400)
        assert write(d) == 3600, f"override #{i}"
        record = after(d)


def test_a_stand_off_ends_after_the_fight_window():
    record = after(run(at(WEB), [ing()]))
    for i in range(1, 4):
        d = run(at(WEB, 120), [ing()], record, now=NOW + i)
        record = after(d) if write(d) else d.record
    assert write(d) is None
    assert write(run(at(WEB, 120), [ing()], record, now=NOW + 3 + S.fight_window + 1)) == 3600


def test_changing_the_annotation_ends_a_stand_off():
    record = rec(3600, 3600, (("shop/app", 3600),), overridden=3, overridden_at=NOW)
    assert write(run(at(WEB, 120), [ing(seconds=7200)], record)) == 7200


def test_forged_backend_of_another_namespace_is_refused_without_naming_it():
    d = run(at(OTHER_NS), [ing(refs=(OTHER_NS,))])
    assert write(d) is None and reasons(d) == ["ForeignBackend"]
    assert "bank/api" not in d.notes[0].message  # only the name the tenant wrote itself


def test_backend_of_another_cluster_is_refused_whatever_its_description_says():
    # issue 7, item 1: staging names prod's backend; prod's description says shop/web too
    for ref in (PROD_WEB, PROD_IG):
        d = run(at(ref), [ing(refs=(ref,))])
        assert write(d) is None and reasons(d) == ["ForeignBackend"], ref
        # the same words as for any backend not theirs: nothing says whose it is
        assert d.notes[0].message == run(at(OTHER_NS), [ing(refs=(OTHER_NS,))]).notes[
            0
        ].message.replace(str(OTHER_NS), str(ref))


def test_instance_group_backend_of_this_cluster_is_owned():
    assert write(run(at(SHARED), [ing(refs=(SHARED,))])) == 3600


def test_cluster_default_backend_is_skipped_without_a_warning():
    d = run(at(DEFAULT), [ing(refs=(DEFAULT,))])
    assert write(d) is None and d.notes == ()


def test_invalid_input_keeps_what_was_asked_before():
    record = after(run(at(WEB), [ing()]))
    bad = ing(seconds=None, refs=(), problem=Problem("InvalidTimeout", "no"))
    d = run(at(WEB, 3600), [bad], record)
    assert write(d) is None and d.record is not None and d.record.state("timeout").applied == 3600
    assert d.record.state("timeout").claims == (("shop/app", 3600),)


def test_a_kept_claim_is_checked_again_against_the_backend_as_it_is_now():
    # issue 7, item 2: the NodePort was reused for another namespace's Service
    record = after(run(at(SHARED), [ing(refs=(SHARED,))]))
    reused = Backend(SHARED, 30, "fp", "bank/api")
    bad = ing(seconds=None, refs=(), problem=Problem("InvalidTimeout", "no"))
    d = run(reused, [bad], record)
    assert write(d) is None and reasons(d) == ["ForeignBackend"]


def test_missing_backend_warns_its_claimants_and_forgets_the_record():
    d = decide(WEB, None, {"shop/app": ing()}, rec(3600, 3600), S, now=NOW, request_id="r")
    assert write(d) is None and d.record is None and reasons(d) == ["BackendNotFound"]


def test_a_deleted_claimant_is_told_nothing_but_still_released():
    held = after(run(at(WEB), [ing()]))
    d = run(at(WEB, 3600), [], held, gone=["shop/app"])
    assert restored(d) and d.notes == ()


def test_unchanged_value_with_a_pending_write_elsewhere_keeps_the_intent():
    pending = intent(600, 3600, "r", NOW)
    record = rec(600, None, (("shop/app", 600),), intent=pending)
    d = run(at(WEB, 3600), [ing(seconds=3600)], record, now=NOW + 1)
    assert write(d) is None and d.record is not None and d.record.intent == pending


def test_states_replace_keeps_fields():
    state = State(1, 1, overridden=2)
    assert replace(state, applied=2).overridden == 2


def test_a_restore_cut_short_by_a_crash_is_sent_again_with_its_request_id():
    held = after(run(at(WEB), [ing()]))
    restoring = run(at(WEB, 3600), [], held, gone=["shop/app"], rid="restore-1").record
    again = run(at(WEB, 3600), [], restoring, gone=["shop/app"], rid="other", now=NOW + 60)
    assert write(again) == 30 and restored(again)
    assert again.record is not None and again.record.intent is not None
    assert again.record.intent.request_id == "restore-1"
    landed = run(at(WEB, 30), [], restoring, gone=["shop/app"], now=NOW + 60)
    assert write(landed) is None and landed.record is None


def test_a_kept_claim_is_never_written_above_todays_max_timeout():
    record = rec(7200, None, (("shop/app", 7200),))  # asked under a higher max
    bad = ing(seconds=None, refs=(), problem=Problem("InvalidBackends", "no"))
    d = run(at(WEB), [bad], record, settings=replace(S, max_timeout=3600))
    assert write(d) == 3600


def test_another_clusters_backend_is_never_restored_whatever_a_record_says():
    # a record moved from an earlier version, which checked descriptions only
    d = run(at(PROD_WEB, 600), [], rec(None, 600), gone=["shop/app"])
    assert write(d) is None and d.record is None


# --- issue 13: "ours" means ours, timers, scope ---------------------------------------


def test_a_value_someone_else_set_back_to_ours_is_theirs_and_never_restored():
    # We wrote 3600; a BackendConfig set 60 and the annotation moved to 60; later gcloud
    # set 3600 and the annotation went. The 3600 there is gcloud's, not ours.
    record = after(run(at(WEB), [ing()]))
    moved = run(at(WEB, 60), [ing(seconds=60)], record, now=NOW + 60)
    assert write(moved) is None and moved.record is not None
    assert moved.record.state("timeout").applied is None and moved.record.result == "AlreadySet"
    removed = run(at(WEB, 3600), [ing(seconds=None, refs=())], moved.record, now=NOW + 120)
    assert write(removed) is None and not restored(removed)


def test_a_value_changed_while_standing_off_is_no_longer_ours():
    record = after(run(at(WEB), [ing()]))
    for i in range(1, 4):
        d = run(at(WEB, 120), [ing()], record, now=NOW + i)
        record = after(d) if write(d) else d.record
    assert record is not None and record.result == "Overridden"
    assert record.state("timeout").applied is None
    # The console puts 3600 back during the stand-off, then the annotation goes.
    back = run(at(WEB, 3600), [ing()], record, now=NOW + 10)
    gone = run(at(WEB, 3600), [], back.record, gone=["shop/app"], now=NOW + 20)
    assert write(gone) is None and not restored(gone)


def test_after_a_412_from_someone_writing_the_same_value_it_is_not_ours():
    d = run(at(WEB, 30), [ing()])
    assert write(d) == 3600
    left = refused(d, None)  # 412: someone else set 3600 between our read and our PATCH
    assert left is not None and left.intent is None
    assert left.state("timeout").applied is None
    again = run(at(WEB, 3600, "theirs"), [ing()], left, now=NOW + 1)
    assert (
        write(again) is None
        and again.record is not None
        and again.record.state("timeout").applied is None
    )
    removed = run(at(WEB, 3600, "theirs"), [], again.record, gone=["shop/app"], now=NOW + 2)
    assert write(removed) is None


def test_after_a_412_an_earlier_send_of_the_same_request_may_still_land():
    first = run(at(WEB), [ing()], rid="first").record  # sent, then the process was killed
    retry = run(at(WEB, 30), [ing()], first, rid="second", now=NOW + 60)
    assert retry.record is not None and retry.record.intent is not None
    left = refused(retry, first)
    assert first is not None and left is not None and left.intent == first.intent


def test_a_claimed_value_equal_to_the_default_is_no_restore_when_its_claim_goes():
    # The annotation asked 30 over someone's 60; the write was lost in a crash; then
    # the annotation went. Nothing of ours is there to restore.
    sent = run(at(WEB, 60), [ing(seconds=30)]).record
    assert sent is not None and sent.intent is not None and sent.intent.of("timeout") == (30, 60)
    gone = run(at(WEB, 60), [], sent, gone=["shop/app"], now=NOW + 5)
    assert write(gone) is None


def test_a_stand_off_asks_to_be_looked_at_again_when_it_ends():
    record = after(run(at(WEB), [ing()]))
    for i in range(1, 4):
        d = run(at(WEB, 120), [ing()], record, now=NOW + i)
        record = after(d) if write(d) else d.record
    assert write(d) is None and d.recheck == NOW + 3 + S.fight_window + 1
    standing = run(at(WEB, 120), [ing()], record, now=NOW + 100)
    assert standing.recheck == d.recheck
    assert write(run(at(WEB, 120), [ing()], record, now=d.recheck)) == 3600


def test_a_write_that_may_still_land_is_looked_at_again_when_it_no_longer_can():
    intent_only = run(at(WEB), [ing()]).record
    d = run(at(WEB, 30), [ing(seconds=None, refs=())], intent_only, now=NOW + 5)
    assert write(d) is None and d.recheck == NOW + S.intent_ttl + 1


def test_ours_under_a_write_that_never_landed_is_restored_once_it_no_longer_can():
    # 600 is ours; a write of 3600 over it was recorded, then a kill before its PATCH;
    # then the annotation went. Under the fingerprint that write was sent against nothing
    # was written since: once it can no longer land, the 600 is still ours to restore.
    held = after(run(at(WEB), [ing(seconds=600)]))
    lost = run(at(WEB, 600), [ing(seconds=3600)], held).record
    d = run(at(WEB, 600), [ing(seconds=None, refs=())], lost, now=NOW + 5)
    assert write(d) is None and d.recheck == NOW + S.intent_ttl + 1
    assert d.record is not None and d.record.state("timeout").applied == 600
    later = run(at(WEB, 600), [ing(seconds=None, refs=())], d.record, now=NOW + S.intent_ttl + 1)
    assert write(later) == 30 and restored(later)
    # Under another fingerprint, the same 600 may be someone's put back over ours: left.
    put_back = run(at(WEB, 600, "fp2"), [ing(seconds=None, refs=())], d.record, now=NOW + 6)
    assert write(put_back) is None and put_back.record is None


def test_a_retry_is_as_old_as_its_latest_send():
    first = run(at(WEB), [ing()], rid="first").record
    retry = run(at(WEB, 30), [ing()], first, rid="second", now=NOW + 1700)
    assert retry.record is not None and retry.record.intent == intent(3600, 30, "first", NOW + 1700)
    # Lost again: 1,799 s after the latest send it may still land, so it is sent again.
    later = run(at(WEB, 30), [ing()], retry.record, rid="third", now=NOW + 1700 + 1799)
    assert later.record is not None and later.record.intent is not None
    assert later.record.intent.request_id == "first"


NARROW = replace(S, namespaces=frozenset({"bank"}))


def test_a_namespace_out_of_scope_is_neither_written_nor_restored():
    # shop was watched and asked 3600; the controller now watches bank only.
    held = after(run(at(WEB), [ing()]))
    d = run(at(WEB, 3600), [], held, gone=["shop/app"], settings=NARROW)
    assert write(d) is None and not restored(d) and d.record == held and d.notes == ()
    changed = run(at(WEB, 120), [], held, gone=["shop/app"], settings=NARROW)
    assert write(changed) is None and changed.record == held


def test_a_backend_claimed_out_of_scope_is_left_whatever_a_watched_ingress_names():
    held = after(run(at(SHARED), [ing(refs=(SHARED,))]))
    forger = Ingress("bank", "b", "uid-b", frozenset({"web"}), (SHARED,), (("timeout", Ask(60)),))
    d = run(at(SHARED, 3600), [forger], held, gone=["shop/app"], settings=NARROW)
    assert write(d) is None and not restored(d) and d.record == held
    assert reasons(d) == ["ForeignBackend"]


def test_only_the_namespace_of_its_service_may_own_a_backend_of_this_cluster():
    assert owner(WEB, at(WEB), S) == "shop"
    assert owner(DEFAULT, at(DEFAULT), S) == "kube-system"
    assert owner(PROD_WEB, None, S) == ""  # another cluster's: known from the name alone
    assert owner(WEB, None, S) is None  # not looked at yet
    assert owner(WEB, Backend(WEB, 30, "fp", None), S) == ""  # no Service: nobody's


def test_a_refusal_is_said_for_another_namespace_or_cluster_never_for_the_default():
    asker = ing(refs=(WEB, OTHER_NS, PROD_WEB, DEFAULT))
    assert refusal(asker, WEB, at(WEB), S) is None
    assert refusal(asker, DEFAULT, at(DEFAULT), S) is None
    assert refusal(asker, OTHER_NS, None, S) is None  # the first look tells
    for ref in (OTHER_NS, PROD_WEB):
        note = refusal(asker, ref, at(ref) if ref == OTHER_NS else None, S)
        assert note is not None and note.reason == "ForeignBackend" and note.key == "shop/app"
        assert "bank" not in note.message.replace(str(OTHER_NS), "")
    assert refusal(ing(seconds=None, refs=(OTHER_NS,)), OTHER_NS, at(OTHER_NS), S) is None
