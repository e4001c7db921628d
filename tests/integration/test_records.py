"""BackendTimeout records against the real apiserver: round trip, conflicts, the fence,
and the move from the one-ConfigMap records of earlier versions."""

from __future__ import annotations

import json

import pytest

from controller.gcp.backends import NotLeader
from controller.kube.client import KubeClient, StaticTokenAuth
from controller.model import BackendRef
from controller.plan import Intent, Record, State
from controller.records import GROUP, PLURAL, VERSION, RecordConflict, Records, object_name
from tests.ground.controlplane import ControlPlane

WEB = BackendRef("global", "k8s1-0e20ca25-shop-web-80-1111")
REGIONAL = BackendRef("europe-west1", "k8s1-0e20ca25-e-shop-api-80-2222")
FULL = Record(
    (
        ("timeout", State(3600, 3600, (("shop/a", 600), ("shop/b", 3600)), 2, 1_800_000_100.0)),
        ("draining", State(300, None, (("shop/a", 300),))),
    ),
    intent=Intent(
        (("timeout", 7200, 3600), ("draining", 300, 0)),
        "0b9c0c3e-8f1e-4f47-9a5e-2a2b8e0c6a11",
        1_800_000_000.0,
    ),
    result="Pending",
)


def timeout(
    desired: int | None,
    applied: int | None,
    claims: tuple[tuple[str, int], ...] = (),
    result: str = "",
) -> Record:
    """A record of the timeout alone."""
    return Record((("timeout", State(desired, applied, claims)),), result=result)


def client(plane: ControlPlane) -> KubeClient:
    return KubeClient(plane.url, auth=StaticTokenAuth(plane.admin_token), verify=plane.ca_file)


def path(namespace: str, ref: BackendRef | None = None) -> str:
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    return base if ref is None else f"{base}/{object_name(ref)}"


def test_records_round_trip_through_the_apiserver(apiserver: ControlPlane, namespace: str):
    records = Records(client(apiserver), namespace)
    records.load()
    records.put(WEB, FULL)
    records.put(REGIONAL, timeout(90, None))
    again = Records(client(apiserver), namespace)
    again.load()
    assert again.get(WEB) == FULL and again.get(REGIONAL) == timeout(90, None)
    again.put(WEB, None)
    third = Records(client(apiserver), namespace)
    third.load()
    assert third.refs() == [REGIONAL]


def test_records_are_kept_without_field_ownership(apiserver: ControlPlane, namespace: str):
    # Only the controller writes them, whole: the apiserver need not track who owns
    # which field (a fifth of each write's time), and the replies stay short.
    records = Records(client(apiserver), namespace)
    records.load()
    records.put(WEB, timeout(600, None))  # created
    records.put(WEB, FULL)  # replaced
    stored = client(apiserver).get(path(namespace, WEB))
    assert not stored["metadata"].get("managedFields")
    assert stored["spec"]["intent"]["requestId"] == FULL.intent.request_id  # type: ignore[union-attr]


def test_an_unchanged_record_is_not_written_again(apiserver: ControlPlane, namespace: str):
    records = Records(client(apiserver), namespace)
    records.load()
    records.put(WEB, FULL)
    records.put(WEB, FULL)
    records.put(REGIONAL, None)  # nothing to delete
    assert records.writes == 1


def test_a_record_changed_by_someone_else_is_read_again_not_overwritten(
    apiserver: ControlPlane, namespace: str
):
    ours = Records(client(apiserver), namespace)
    ours.load()
    ours.put(WEB, timeout(600, 600, (("shop/a", 600),)))
    theirs = Records(client(apiserver), namespace)  # a successor that took over
    theirs.load()
    theirs.put(WEB, timeout(900, 900, (("shop/a", 900),)))
    with pytest.raises(RecordConflict):
        ours.put(WEB, timeout(700, 700, (("shop/a", 700),)))
    assert ours.get(WEB) == timeout(900, 900, (("shop/a", 900),))  # read again
    stored = client(apiserver).get(path(namespace, WEB))
    assert stored["spec"]["fields"]["timeout"]["applied"] == 900
    theirs.put(WEB, timeout(901, 901))
    with pytest.raises(RecordConflict):  # deleting over a newer write is refused too
        ours.put(WEB, None)
    assert (
        client(apiserver).get(path(namespace, WEB))["spec"]["fields"]["timeout"]["applied"] == 901
    )


def test_no_record_is_written_without_the_lease(apiserver: ControlPlane, namespace: str):
    holding = [True]
    records = Records(client(apiserver), namespace, may_write=lambda: holding[0])
    records.load()
    records.put(WEB, FULL)
    holding[0] = False
    with pytest.raises(NotLeader):
        records.put(WEB, None)
    with pytest.raises(NotLeader):
        records.put(REGIONAL, timeout(1, 1))
    assert (
        client(apiserver).get(path(namespace, WEB))["spec"]["fields"]["timeout"]["applied"] == 3600
    )


def test_an_unreadable_record_is_ignored_and_can_be_overwritten(
    apiserver: ControlPlane, namespace: str
):
    kube = client(apiserver)
    odd = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "BackendTimeout",
        "metadata": {"name": object_name(WEB)},
        "spec": {"backend": {"scope": "global", "name": "someone-else"}},  # name disagrees
    }
    kube.post(path(namespace), odd)
    records = Records(kube, namespace)
    records.load()
    assert records.get(WEB) is None
    records.put(WEB, timeout(60, 60))
    assert kube.get(path(namespace, WEB))["spec"]["backend"]["name"] == WEB.name


def test_the_crd_refuses_a_record_no_controller_would_write(
    apiserver: ControlPlane, namespace: str
):
    bad = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "BackendTimeout",
        "metadata": {"name": "global.x"},
        "spec": {"backend": {"scope": "global", "name": "x"}, "applied": "soon"},
    }
    with pytest.raises(Exception, match=r"422|Invalid"):
        client(apiserver).post(path(namespace), bad)


def test_records_of_an_earlier_version_are_moved_once_then_the_configmap_goes(
    apiserver: ControlPlane, namespace: str
):
    kube = client(apiserver)
    legacy = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "state"},
        "data": {
            f"global.{WEB.name}": json.dumps({"applied": 3600, "claims": {"shop/a": 3600}}),
            f"europe-west1.{REGIONAL.name}": json.dumps(
                {"applied": None, "claims": {"shop/b": 90}, "overridden": 1}
            ),
            "global.broken": "{not json",
        },
    }
    kube.post(f"/api/v1/namespaces/{namespace}/configmaps", legacy)
    records = Records(kube, namespace)
    records.load()
    records.put(REGIONAL, timeout(120, 120, (("shop/b", 120),)))  # newer than the ConfigMap
    assert records.migrate("state") == 1
    # 0.1 wrote "applied" for values it found there too: the claims move, the ownership not
    assert records.get(WEB) == timeout(3600, None, (("shop/a", 3600),), result="Migrated")
    assert records.get(REGIONAL) == timeout(120, 120, (("shop/b", 120),))
    with pytest.raises(Exception, match="404"):
        kube.get(f"/api/v1/namespaces/{namespace}/configmaps/state")
    assert records.migrate("state") == 0  # again, after a crash say: nothing to do


def test_a_record_deleted_by_hand_is_created_again_by_the_next_write(
    apiserver: ControlPlane, namespace: str
):
    records = Records(client(apiserver), namespace)
    records.load()
    records.put(WEB, timeout(600, 600, (("shop/a", 600),)))
    client(apiserver).request("DELETE", path(namespace, WEB))  # kubectl delete backendtimeout
    records.put(WEB, timeout(900, 900, (("shop/a", 900),)))  # a replace would answer 404
    assert (
        client(apiserver).get(path(namespace, WEB))["spec"]["fields"]["timeout"]["applied"] == 900
    )
    assert records.get(WEB) == timeout(900, 900, (("shop/a", 900),))


def test_a_record_of_the_timeout_only_version_reads_as_the_timeouts_state(
    apiserver: ControlPlane, namespace: str
):
    # What the version before per-field state wrote: the timeout at the top of the spec.
    # The CRD still declares those fields, so the apiserver keeps them (no pruning).
    kube = client(apiserver)
    old = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "BackendTimeout",
        "metadata": {"name": object_name(WEB)},
        "spec": {
            "backend": {"scope": "global", "name": WEB.name},
            "desired": 3600,
            "applied": 3600,
            "claims": {"shop/a": 3600},
            "intent": {
                "value": 7200,
                "was": 3600,
                "requestId": "0b9c0c3e-8f1e-4f47-9a5e-2a2b8e0c6a11",
                "at": "2027-01-15T08:00:00Z",
            },
            "overridden": 1,
            "overriddenAt": "2027-01-15T07:00:00Z",
            "result": "Pending",
        },
    }
    kube.post(path(namespace), old)
    assert kube.get(path(namespace, WEB))["spec"]["applied"] == 3600  # kept as written
    records = Records(kube, namespace)
    records.load()
    assert records.get(WEB) == Record(
        (("timeout", State(3600, 3600, (("shop/a", 3600),), 1, 1_800_000_000.0 - 3600)),),
        intent=Intent(
            (("timeout", 7200, 3600),), "0b9c0c3e-8f1e-4f47-9a5e-2a2b8e0c6a11", 1_800_000_000.0
        ),
        result="Pending",
    )


def test_the_crd_refuses_a_field_state_no_controller_would_write(
    apiserver: ControlPlane, namespace: str
):
    bad = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "BackendTimeout",
        "metadata": {"name": "global.x"},
        "spec": {
            "backend": {"scope": "global", "name": "x"},
            "fields": {"draining": {"applied": -1}},
        },
    }
    with pytest.raises(Exception, match=r"422|Invalid"):
        client(apiserver).post(path(namespace), bad)
