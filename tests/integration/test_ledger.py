"""What was applied survives in a ConfigMap: round trips, conflicts, and failed writes."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from controller.kube.client import KubeClient, StaticTokenAuth
from controller.ledger import Ledger, decode
from controller.model import BackendRef
from controller.plan import Record
from tests.ground.controlplane import ControlPlane

WEB = BackendRef("global", "k8s1-aaaa-shop-web-80-1111")
ILB = BackendRef("europe-west1", "k8s1-aaaa-shop-api-80-2222")


class FlakySession(requests.Session):
    """Drops the connection for the next ``failures`` writes: the network, not Kubernetes."""

    failures = 0

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any):
        if method in ("POST", "PUT") and self.failures:
            self.failures -= 1
            raise requests.ConnectionError("connection reset (injected)")
        return super().request(method, url, *args, **kwargs)


def _client(plane: ControlPlane, session: requests.Session | None = None) -> KubeClient:
    return KubeClient(
        plane.url, auth=StaticTokenAuth(plane.admin_token), verify=plane.ca_file, session=session
    )


def test_records_round_trip_through_the_configmap(apiserver, namespace):
    first = Ledger(_client(apiserver), namespace, "state")
    first.load()
    assert first.snapshot() == {}
    records = {
        WEB: Record(3600, (("shop/a", 60), ("shop/b", 3600)), overridden=1),
        ILB: Record(None, (("shop/c", 90),)),
    }
    first.update(records)
    first.update({ILB: None})

    again = Ledger(_client(apiserver), namespace, "state")
    again.load()
    assert again.snapshot() == {WEB: records[WEB]}


def test_a_write_by_someone_else_does_not_lose_ours(apiserver, namespace):
    ours = Ledger(_client(apiserver), namespace, "state")
    ours.load()
    ours.update({WEB: Record(600, (("shop/a", 600),))})
    path = f"/api/v1/namespaces/{namespace}/configmaps/state"
    _client(apiserver).patch(path, {"metadata": {"labels": {"touched": "yes"}}})  # 409 next

    ours.update({ILB: Record(90, (("shop/c", 90),))})
    again = Ledger(_client(apiserver), namespace, "state")
    again.load()
    assert set(again.snapshot()) == {WEB, ILB}


def test_a_failed_write_is_kept_in_memory_and_written_by_the_next_update(apiserver, namespace):
    session = FlakySession()
    ledger = Ledger(_client(apiserver, session), namespace, "state")
    ledger.load()
    session.failures = 1
    with pytest.raises(requests.ConnectionError):
        ledger.update({WEB: Record(3600, (("shop/a", 3600),))})
    assert WEB in ledger.snapshot()  # GCP was changed: the record must not be forgotten

    ledger.update({})  # the retried reconcile
    stored = Ledger(_client(apiserver), namespace, "state")
    stored.load()
    assert stored.snapshot() == {WEB: Record(3600, (("shop/a", 3600),))}


@pytest.mark.parametrize(
    "value", ["", "{", "[]", '{"applied": "x", "claims": {}}', '{"claims": 5}']
)
def test_unreadable_entries_are_skipped_not_fatal(value):
    assert decode("global.k8s1-x", value) is None
    assert decode("nodot", '{"applied": 1, "claims": {}}') is None
