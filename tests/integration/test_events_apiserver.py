"""EventRecorder against the real kube-apiserver: repeats aggregate into one Event."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from controller.kube.client import KubeClient, StaticTokenAuth
from controller.kube.events import EventRecorder, ObjectRef, told_before
from tests.ground.controlplane import ControlPlane

pytestmark = pytest.mark.apiserver


def events_about(apiserver: ControlPlane, namespace: str, name: str) -> list[dict[str, Any]]:
    r = requests.get(
        f"{apiserver.url}/api/v1/namespaces/{namespace}/events",
        params={"fieldSelector": f"involvedObject.name={name}"},
        headers=apiserver.admin_headers,
        verify=apiserver.ca_file,
        timeout=10,
    )
    r.raise_for_status()
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def admin_client(apiserver: ControlPlane) -> KubeClient:
    return KubeClient(
        apiserver.url, auth=StaticTokenAuth(apiserver.admin_token), verify=apiserver.ca_file
    )


def create_ingress(kube: KubeClient, namespace: str, name: str) -> dict[str, Any]:
    return kube.post(
        f"/apis/networking.k8s.io/v1/namespaces/{namespace}/ingresses",
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"defaultBackend": {"service": {"name": name, "port": {"number": 80}}}},
        },
    )


def test_repeated_warning_is_one_event_with_count_3(
    apiserver: ControlPlane, namespace: str
) -> None:
    kube = admin_client(apiserver)
    ingress = create_ingress(kube, namespace, "chat")
    recorder = EventRecorder(kube, component="gke-ingress-timeout", instance="test-pod")

    for _ in range(3):
        recorder.record(
            ObjectRef.of(ingress), "Warning", "InvalidTimeout", "timeout 'abc' is not a duration"
        )

    [event] = events_about(apiserver, namespace, "chat")
    assert event["count"] == 3
    assert event["type"] == "Warning"
    assert event["reason"] == "InvalidTimeout"
    assert event["message"] == "timeout 'abc' is not a duration"
    assert event["involvedObject"]["uid"] == ingress["metadata"]["uid"]
    assert event["involvedObject"]["kind"] == "Ingress"
    assert event["source"] == {"component": "gke-ingress-timeout"}
    assert event["reportingComponent"] == "gke-ingress-timeout"
    assert event["reportingInstance"] == "test-pod"


def test_repeat_of_a_deleted_event_posts_a_new_one(apiserver: ControlPlane, namespace: str) -> None:
    kube = admin_client(apiserver)
    ref = ObjectRef.of(create_ingress(kube, namespace, "chat"))
    recorder = EventRecorder(kube, component="gke-ingress-timeout", instance="test-pod")
    recorder.record(ref, "Normal", "TimeoutApplied", "timeoutSec 3600")
    [first] = events_about(apiserver, namespace, "chat")
    # What the apiserver does itself once --event-ttl has passed.
    kube.delete(f"/api/v1/namespaces/{namespace}/events/{first['metadata']['name']}")

    recorder.record(ref, "Normal", "TimeoutApplied", "timeoutSec 3600")
    recorder.record(ref, "Normal", "TimeoutApplied", "timeoutSec 3600")

    [second] = events_about(apiserver, namespace, "chat")
    assert second["metadata"]["name"] != first["metadata"]["name"]
    assert second["count"] == 2


def test_a_new_term_does_not_tell_a_standing_warning_again(
    apiserver: ControlPlane, namespace: str
) -> None:
    kube = admin_client(apiserver)
    ref = ObjectRef.of(create_ingress(kube, namespace, "chat"))
    before = EventRecorder(kube, component="gke-ingress-timeout", instance="pod-a")
    before.record(ref, "Warning", "SharedBackendConflict", "shared with web (600s)")
    before.record(ref, "Normal", "TimeoutApplied", "set timeoutSec to 600s (was 30s)")
    # Someone else's Event about the same Ingress is not ours to count.
    EventRecorder(kube, component="ingress-gce", instance="x").record(
        ref, "Warning", "SharedBackendConflict", "shared with web (600s)"
    )

    after = EventRecorder(kube, component="gke-ingress-timeout", instance="pod-b")
    told = told_before(kube, "gke-ingress-timeout", {namespace})
    assert after.recall(told) == 2
    after.record(ref, "Warning", "SharedBackendConflict", "shared with web (600s)")
    after.record(ref, "Normal", "TimeoutApplied", "set timeoutSec to 600s (was 30s)")

    ours = [
        e
        for e in events_about(apiserver, namespace, "chat")
        if e["source"]["component"] == "gke-ingress-timeout"
    ]
    counts = {e["reason"]: e["count"] for e in ours}
    assert len(ours) == 2
    assert counts == {"SharedBackendConflict": 1, "TimeoutApplied": 2}
