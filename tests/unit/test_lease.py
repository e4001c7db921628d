"""The pure parts of leader election: MicroTime, expiry by local observation, Lease specs."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from controller.kube.lease import LeaseConfig, claim, expired, micro_time, released

T0 = datetime(2024, 5, 6, 7, 8, 9, 120034, tzinfo=timezone.utc)
T1 = T0 + timedelta(seconds=2)


def test_micro_time_is_utc_with_six_digits_and_z() -> None:
    assert micro_time(T0) == "2024-05-06T07:08:09.120034Z"
    assert micro_time(datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)).endswith("09.000000Z")


def test_micro_time_converts_other_zones_to_utc() -> None:
    cest = timezone(timedelta(hours=2))
    assert (
        micro_time(datetime(2024, 5, 6, 9, 8, 9, 5, tzinfo=cest)) == "2024-05-06T07:08:09.000005Z"
    )


def test_lease_is_valid_until_its_duration_after_we_saw_it_change() -> None:
    assert not expired(observed_at=100.0, lease_duration=15.0, now=100.0)
    assert not expired(observed_at=100.0, lease_duration=15.0, now=114.999)
    assert expired(observed_at=100.0, lease_duration=15.0, now=115.0)


def test_created_lease_has_us_as_holder_and_no_transitions() -> None:
    assert claim(None, "a", 15.0, T0) == {
        "holderIdentity": "a",
        "leaseDurationSeconds": 15,
        "acquireTime": "2024-05-06T07:08:09.120034Z",
        "renewTime": "2024-05-06T07:08:09.120034Z",
        "leaseTransitions": 0,
    }


def test_renewal_keeps_acquire_time_and_transitions() -> None:
    spec = claim(claim(None, "a", 15.0, T0), "a", 15.0, T1)
    assert spec["acquireTime"] == micro_time(T0)
    assert spec["renewTime"] == micro_time(T1)
    assert spec["leaseTransitions"] == 0


def test_takeover_counts_a_transition_and_restarts_acquire_time() -> None:
    theirs = {**claim(None, "b", 15.0, T0), "leaseTransitions": 4}
    spec = claim(theirs, "a", 15.0, T1)
    assert spec["holderIdentity"] == "a"
    assert spec["acquireTime"] == spec["renewTime"] == micro_time(T1)
    assert spec["leaseTransitions"] == 5


def test_taking_a_released_lease_counts_a_transition() -> None:
    spec = claim(released(claim(None, "b", 15.0, T0), T1), "a", 15.0, T1)
    assert spec["holderIdentity"] == "a"
    assert spec["leaseTransitions"] == 1


def test_fractional_lease_duration_rounds_up_to_whole_seconds() -> None:
    assert claim(None, "a", 2.5, T0)["leaseDurationSeconds"] == 3
    assert claim(None, "a", 0.2, T0)["leaseDurationSeconds"] == 1


def test_release_clears_the_holder_and_expires_in_one_second() -> None:
    old = {**claim(None, "a", 15.0, T0), "leaseTransitions": 2}
    assert released(old, T1) == {
        "holderIdentity": "",
        "leaseDurationSeconds": 1,
        "acquireTime": micro_time(T1),
        "renewTime": micro_time(T1),
        "leaseTransitions": 2,
    }


def test_lease_path_is_namespaced_coordination_v1() -> None:
    config = LeaseConfig(namespace="kube-system", name="gke-ingress-timeout", identity="pod-1")
    assert config.path == (
        "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/gke-ingress-timeout"
    )
