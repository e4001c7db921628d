"""Tests of the Compute fake, through google-api-python-client as the controller uses it.

Every test talks to the fake on loopback with static discovery and anonymous credentials,
so what passes here is what the controller will see.
"""

from __future__ import annotations

import json
import selectors
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from google.auth.credentials import AnonymousCredentials
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

from tests.fakes.compute import (
    DEMO_CLUSTER_UID,
    ComputeFake,
    instance_group_backend_name,
    neg_backend_name,
)

PROJECT = "demo-project"
REGION = "us-central1"
WEB = neg_backend_name("default", "web", 80, DEMO_CLUSTER_UID)
REQUEST_ID = "6f1c2b0e-1d2a-4c3b-9e8f-0a1b2c3d4e5f"
ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    """A clock the test moves by hand; read from the server's threads."""

    def __init__(self) -> None:
        self._now = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


MakeFake = Callable[..., ComputeFake]


@pytest.fixture
def make_fake() -> Iterator[MakeFake]:
    started: list[ComputeFake] = []

    def make(**kwargs: Any) -> ComputeFake:
        kwargs.setdefault("wait_max", 0.05)
        fake = ComputeFake(PROJECT, **kwargs).start()
        started.append(fake)
        return fake

    yield make
    for fake in started:
        fake.stop()


@pytest.fixture
def fake(make_fake: MakeFake) -> ComputeFake:
    fake = make_fake()
    fake.add_backend(WEB)
    return fake


def compute(fake: ComputeFake) -> Any:
    return build(
        "compute",
        "v1",
        static_discovery=True,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": fake.url},
    )


def reason_of(err: HttpError) -> str:
    details = err.error_details
    assert isinstance(details, list)
    return str(details[0]["reason"])


def test_stale_fingerprint_gets_412_condition_not_met(fake: ComputeFake) -> None:
    api = compute(fake).backendServices()
    stale = api.get(project=PROJECT, backendService=WEB).execute()["fingerprint"]
    fake.set_timeout_out_of_band(WEB, 60)

    with pytest.raises(HttpError) as caught:
        body = {"timeoutSec": 3600, "fingerprint": stale}
        api.patch(project=PROJECT, backendService=WEB, body=body).execute()

    assert caught.value.status_code == 412
    assert reason_of(caught.value) == "conditionNotMet"
    assert fake.backend(WEB)["timeoutSec"] == 60


def test_patch_with_fresh_fingerprint_applies_and_changes_fingerprint(fake: ComputeFake) -> None:
    api = compute(fake).backendServices()
    before = api.get(project=PROJECT, backendService=WEB).execute()

    body = {"timeoutSec": 3600, "fingerprint": before["fingerprint"]}
    op = api.patch(project=PROJECT, backendService=WEB, body=body).execute()

    after = api.get(project=PROJECT, backendService=WEB).execute()
    assert op["kind"] == "compute#operation"
    assert op["operationType"] == "patch"
    assert op["targetLink"] == before["selfLink"]
    assert after["timeoutSec"] == 3600
    assert after["fingerprint"] != before["fingerprint"]
    assert after["description"] == before["description"]


def test_wait_returns_running_until_op_delay_passes_then_done(make_fake: MakeFake) -> None:
    clock = FakeClock()
    fake = make_fake(op_delay=5.0, clock=clock)
    fake.add_backend(WEB)
    client = compute(fake)
    fingerprint = fake.backend(WEB)["fingerprint"]
    body = {"timeoutSec": 120, "fingerprint": fingerprint}

    op = client.backendServices().patch(project=PROJECT, backendService=WEB, body=body).execute()
    first = client.globalOperations().wait(project=PROJECT, operation=op["name"]).execute()
    seen_before_done = fake.backend(WEB)["timeoutSec"]
    clock.advance(5.0)
    statuses = [first["status"]]
    while statuses[-1] != "DONE" and len(statuses) < 10:
        waited = client.globalOperations().wait(project=PROJECT, operation=op["name"]).execute()
        statuses.append(waited["status"])

    assert op["status"] in ("PENDING", "RUNNING")
    assert statuses == ["RUNNING", "DONE"]
    assert seen_before_done == 30
    assert fake.backend(WEB)["timeoutSec"] == 120
    assert "error" not in waited


def test_write_while_operation_pending_gets_resource_not_ready(make_fake: MakeFake) -> None:
    fake = make_fake(op_delay=5.0, clock=FakeClock())
    fake.add_backend(WEB)
    api = compute(fake).backendServices()
    api.patch(project=PROJECT, backendService=WEB, body={"timeoutSec": 60}).execute()

    with pytest.raises(HttpError) as caught:
        api.patch(project=PROJECT, backendService=WEB, body={"timeoutSec": 90}).execute()

    assert caught.value.status_code == 400
    assert reason_of(caught.value) == "resourceNotReady"


def test_repeated_request_id_is_not_applied_twice(fake: ComputeFake) -> None:
    api = compute(fake).backendServices()
    body = {"timeoutSec": 3600, "fingerprint": fake.backend(WEB)["fingerprint"]}
    first = api.patch(project=PROJECT, backendService=WEB, body=body, requestId=REQUEST_ID)
    first_op = first.execute()
    fake.set_timeout_out_of_band(WEB, 45)

    again = api.patch(project=PROJECT, backendService=WEB, body=body, requestId=REQUEST_ID)
    again_op = again.execute()

    assert again_op["name"] == first_op["name"]
    assert fake.backend(WEB)["timeoutSec"] == 45


def test_zero_request_id_gets_400(fake: ComputeFake) -> None:
    api = compute(fake).backendServices()
    zero = "00000000-0000-0000-0000-000000000000"

    request = api.patch(
        project=PROJECT, backendService=WEB, body={"timeoutSec": 60}, requestId=zero
    )

    with pytest.raises(HttpError) as caught:
        request.execute()

    assert caught.value.status_code == 400
    assert fake.backend(WEB)["timeoutSec"] == 30


def test_list_pages_1203_backends_in_three_pages_of_500(make_fake: MakeFake) -> None:
    fake = make_fake()
    expected = {f"k8s-be-{30000 + i}--{DEMO_CLUSTER_UID}" for i in range(1203)}
    for name in expected:
        fake.add_backend(name)
    api = compute(fake).backendServices()

    names: list[str] = []
    page_sizes: list[int] = []
    request = api.list(project=PROJECT, maxResults=500)
    while request is not None:
        page = request.execute()
        page_sizes.append(len(page["items"]))
        names.extend(item["name"] for item in page["items"])
        request = api.list_next(request, page)

    assert page_sizes == [500, 500, 203]
    assert len(names) == len(set(names)) == 1203
    assert set(names) == expected


def test_list_refuses_more_than_500_per_page(fake: ComputeFake) -> None:
    with pytest.raises(HttpError) as caught:
        compute(fake).backendServices().list(project=PROJECT, maxResults=501).execute()

    assert caught.value.status_code == 400


def test_writes_above_rate_get_403_rate_limit_exceeded(make_fake: MakeFake) -> None:
    clock = FakeClock()
    fake = make_fake(write_rate_per_minute=2, clock=clock)
    fake.add_backend(WEB)
    api = compute(fake).backendServices()

    def patch(seconds: int) -> None:
        api.patch(project=PROJECT, backendService=WEB, body={"timeoutSec": seconds}).execute()

    patch(40)
    patch(50)
    with pytest.raises(HttpError) as caught:
        patch(60)
    clock.advance(61.0)
    patch(70)

    assert caught.value.status_code == 403
    assert reason_of(caught.value) == "rateLimitExceeded"
    assert fake.backend(WEB)["timeoutSec"] == 70


def test_regional_backend_get_patch_and_wait(make_fake: MakeFake) -> None:
    clock = FakeClock()
    fake = make_fake(op_delay=1.0, clock=clock)
    name = neg_backend_name("default", "web", 80, DEMO_CLUSTER_UID, regional=True)
    fake.add_backend(name, region=REGION)
    client = compute(fake)
    api = client.regionBackendServices()

    current = api.get(project=PROJECT, region=REGION, backendService=name).execute()
    body = {"timeoutSec": 600, "fingerprint": current["fingerprint"]}
    op = api.patch(project=PROJECT, region=REGION, backendService=name, body=body).execute()
    clock.advance(1.0)
    done = client.regionOperations().wait(project=PROJECT, region=REGION, operation=op["name"])

    assert done.execute()["status"] == "DONE"
    assert op["region"].endswith(f"/regions/{REGION}")
    assert current["region"].endswith(f"/regions/{REGION}")
    assert (
        api.get(project=PROJECT, region=REGION, backendService=name).execute()["timeoutSec"] == 600
    )
    assert fake.count("POST", f"/regions/{REGION}/operations/") == 1


def test_global_get_of_regional_name_is_404(make_fake: MakeFake) -> None:
    fake = make_fake()
    fake.add_backend(WEB, region=REGION)

    with pytest.raises(HttpError) as caught:
        compute(fake).backendServices().get(project=PROJECT, backendService=WEB).execute()

    assert caught.value.status_code == 404
    assert reason_of(caught.value) == "notFound"


def test_global_operation_wait_of_regional_operation_is_404(make_fake: MakeFake) -> None:
    fake = make_fake()
    fake.add_backend(WEB, region=REGION)
    client = compute(fake)
    op = (
        client.regionBackendServices()
        .patch(project=PROJECT, region=REGION, backendService=WEB, body={"timeoutSec": 60})
        .execute()
    )

    with pytest.raises(HttpError) as caught:
        client.globalOperations().wait(project=PROJECT, operation=op["name"]).execute()

    assert caught.value.status_code == 404


@pytest.mark.parametrize("timeout", [0, -1, 2147483648])
def test_timeout_out_of_range_gets_400_invalid(fake: ComputeFake, timeout: int) -> None:
    api = compute(fake).backendServices()

    with pytest.raises(HttpError) as caught:
        api.patch(project=PROJECT, backendService=WEB, body={"timeoutSec": timeout}).execute()

    assert caught.value.status_code == 400
    assert reason_of(caught.value) == "invalid"
    assert fake.backend(WEB)["timeoutSec"] == 30


def test_largest_allowed_timeout_is_accepted(fake: ComputeFake) -> None:
    api = compute(fake).backendServices()

    api.patch(project=PROJECT, backendService=WEB, body={"timeoutSec": 2147483647}).execute()

    assert fake.backend(WEB)["timeoutSec"] == 2147483647


def test_fractional_timeout_gets_400(fake: ComputeFake) -> None:
    api = compute(fake).backendServices()

    with pytest.raises(HttpError) as caught:
        api.patch(project=PROJECT, backendService=WEB, body={"timeoutSec": 1.5}).execute()

    assert caught.value.status_code == 400


def test_unknown_field_gets_400(fake: ComputeFake) -> None:
    api = compute(fake).backendServices()

    with pytest.raises(HttpError) as caught:
        api.patch(project=PROJECT, backendService=WEB, body={"timeoutSecs": 60}).execute()

    assert caught.value.status_code == 400


def test_injected_503_fails_once_then_succeeds(fake: ComputeFake) -> None:
    fake.inject("GET", "/backendServices/", 503)
    api = compute(fake).backendServices()

    with pytest.raises(HttpError) as caught:
        api.get(project=PROJECT, backendService=WEB).execute()
    second = api.get(project=PROJECT, backendService=WEB).execute()

    assert caught.value.status_code == 503
    assert reason_of(caught.value) == "backendError"
    assert second["name"] == WEB
    assert [c.status for c in fake.calls] == [503, 200]


def test_client_retries_through_injected_503(fake: ComputeFake) -> None:
    fake.inject("GET", "/backendServices/", 503, times=2)
    request = compute(fake).backendServices().get(project=PROJECT, backendService=WEB)
    request._sleep = lambda seconds: None  # the client's backoff, not under test here

    assert request.execute(num_retries=2)["name"] == WEB
    assert fake.count("GET", WEB) == 3


def test_failed_operation_carries_error_errors(fake: ComputeFake) -> None:
    fake.fail_next_operation(code="INTERNAL_ERROR", message="Internal error.", http_status=500)
    client = compute(fake)
    body = {"timeoutSec": 300, "fingerprint": fake.backend(WEB)["fingerprint"]}

    op = client.backendServices().patch(project=PROJECT, backendService=WEB, body=body).execute()
    done = client.globalOperations().get(project=PROJECT, operation=op["name"]).execute()

    assert done["status"] == "DONE"
    assert done["error"]["errors"] == [{"code": "INTERNAL_ERROR", "message": "Internal error."}]
    assert done["httpErrorStatusCode"] == 500
    assert fake.backend(WEB)["timeoutSec"] == 30


def test_unknown_backend_and_operation_get_404(fake: ComputeFake) -> None:
    client = compute(fake)

    with pytest.raises(HttpError) as backend:
        client.backendServices().get(project=PROJECT, backendService="nope").execute()
    with pytest.raises(HttpError) as operation:
        client.globalOperations().wait(project=PROJECT, operation="operation-nope").execute()

    assert backend.value.status_code == 404
    assert reason_of(backend.value) == "notFound"
    assert operation.value.status_code == 404


def test_denied_backend_gets_403_forbidden_on_write(fake: ComputeFake) -> None:
    fake.deny(WEB)
    api = compute(fake).backendServices()

    api.get(project=PROJECT, backendService=WEB).execute()
    with pytest.raises(HttpError) as caught:
        api.patch(project=PROJECT, backendService=WEB, body={"timeoutSec": 60}).execute()

    assert caught.value.status_code == 403
    assert reason_of(caught.value) == "forbidden"
    assert "compute.backendServices.update" in caught.value.reason


def test_update_replaces_the_whole_resource(fake: ComputeFake) -> None:
    api = compute(fake).backendServices()
    fake.set_timeout_out_of_band(WEB, 600)
    current = api.get(project=PROJECT, backendService=WEB).execute()
    body = {k: v for k, v in current.items() if k != "timeoutSec"}

    op = api.update(project=PROJECT, backendService=WEB, body=body).execute()

    assert op["operationType"] == "update"
    assert fake.backend(WEB)["timeoutSec"] == 30
    assert fake.backend(WEB)["description"] == current["description"]


def test_patch_without_fingerprint_is_accepted_and_logged(fake: ComputeFake) -> None:
    api = compute(fake).backendServices()

    api.patch(project=PROJECT, backendService=WEB, body={"timeoutSec": 90}).execute()

    assert fake.backend(WEB)["timeoutSec"] == 90
    [call] = fake.writes_without_fingerprint()
    assert call.method == "PATCH"
    assert call.body == {"timeoutSec": 90}
    assert fake.count("PATCH", WEB) == 1


def test_stopped_fake_refuses_requests_on_a_kept_alive_connection(make_fake: MakeFake) -> None:
    fake = make_fake()
    fake.add_backend(WEB)
    api = compute(fake).backendServices()
    api.get(project=PROJECT, backendService=WEB).execute()

    fake.stop()

    with pytest.raises(OSError):
        api.get(project=PROJECT, backendService=WEB).execute()


def test_add_backend_writes_ingress_gce_description(make_fake: MakeFake) -> None:
    fake = make_fake()

    created = fake.add_backend("k8s-be-30480--0e20ca25204f6195", service="ns/svc", port="8080")

    assert json.loads(created["description"]) == {
        "kubernetes.io/service-name": "ns/svc",
        "kubernetes.io/service-port": "8080",
        "x-features": [],
    }
    assert created["timeoutSec"] == 30


def test_neg_backend_name_matches_ingress_gce() -> None:
    name = neg_backend_name("istio-system", "istio-ingressgateway", 443, "8076ec74e1234567")

    assert name == "k8s1-8076ec74-istio-system-istio-ingressgateway-443-fcd32a34"


def test_long_neg_backend_names_are_trimmed_to_63_characters() -> None:
    namespace, service = "a-very-long-namespace-for-testing", "an-even-longer-service-name-here"

    name = neg_backend_name(namespace, service, 8080, DEMO_CLUSTER_UID)
    regional = neg_backend_name(namespace, service, 8080, DEMO_CLUSTER_UID, regional=True)

    assert len(name) == 63
    assert len(regional) == 63
    assert name.startswith("k8s1-0e20ca25-a-very-long")
    assert regional.startswith("k8s1-0e20ca25-e-a-very-long")


def test_instance_group_backend_name() -> None:
    assert instance_group_backend_name(30480, DEMO_CLUSTER_UID) == "k8s-be-30480--0e20ca25204f6195"


@pytest.fixture
def cli() -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.compute", "--port", "0", "--seed", "demo"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()


def first_line(proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        assert selector.select(timeout), "the CLI printed nothing"
    return proc.stdout.readline().strip()


def test_cli_prints_url_and_serves_the_demo_seed(cli: subprocess.Popen[str]) -> None:
    url = first_line(cli)

    response = requests.get(f"{url}projects/{PROJECT}/global/backendServices/{WEB}", timeout=10)
    cli.terminate()

    assert url.startswith("http://127.0.0.1:")
    assert url.endswith("/compute/v1/")
    assert response.status_code == 200
    assert json.loads(response.json()["description"])["kubernetes.io/service-name"] == (
        "default/web"
    )
    assert cli.wait(timeout=10) == 0
