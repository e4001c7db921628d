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

import google.auth.credentials
import httplib2
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
from tests.wait import eventually

PROJECT = "demo-project"
REGION = "us-central1"
WEB = neg_backend_name("default", "web", 80, DEMO_CLUSTER_UID)
REQUEST_ID = "6f1c2b0e-1d2a-4c3b-9e8f-0a1b2c3d4e5f"
ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    """A clock the test moves by hand; read from the server's threads.

    With ``tick`` set, every read also moves it on by that much: time that passes only
    while the server is looking, which is how a test lets time pass during a wait.
    """

    def __init__(self) -> None:
        self._now = 0.0
        self._lock = threading.Lock()
        self.tick = 0.0

    def __call__(self) -> float:
        with self._lock:
            now = self._now
            self._now += self.tick
            return now

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


class BearerToken(google.auth.credentials.Credentials):
    """An access token; each refresh() takes the next of ``rotations``, if any is left."""

    def __init__(self, token: str, *rotations: str) -> None:
        super().__init__()
        self.token = token
        self._rotations = list(rotations)
        self.refreshes = 0

    def refresh(self, request: Any) -> None:
        self.refreshes += 1
        if self._rotations:
            self.token = self._rotations.pop(0)


def compute(
    fake: ComputeFake,
    credentials: google.auth.credentials.Credentials | None = None,
    http: httplib2.Http | None = None,
) -> Any:
    """The client as the controller builds it; ``http`` instead sends no credentials."""
    if http is not None:
        return build(
            "compute",
            "v1",
            static_discovery=True,
            http=http,
            client_options={"api_endpoint": fake.url},
        )
    return build(
        "compute",
        "v1",
        static_discovery=True,
        credentials=credentials or AnonymousCredentials(),
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


def test_wait_returns_when_the_operation_finishes_during_the_wait(make_fake: MakeFake) -> None:
    clock = FakeClock()
    fake = make_fake(op_delay=5.0, clock=clock, wait_max=30.0)
    fake.add_backend(WEB)
    client = compute(fake)
    body = {"timeoutSec": 120}
    op = client.backendServices().patch(project=PROJECT, backendService=WEB, body=body).execute()
    running = client.globalOperations().get(project=PROJECT, operation=op["name"]).execute()

    clock.tick = 0.5  # time passes now, while the server polls inside the wait
    waited = client.globalOperations().wait(project=PROJECT, operation=op["name"]).execute()

    assert running["status"] == "RUNNING"
    assert waited["status"] == "DONE"
    assert fake.backend(WEB)["timeoutSec"] == 120


def test_write_while_operation_pending_gets_resource_not_ready(make_fake: MakeFake) -> None:
    clock = FakeClock()
    fake = make_fake(op_delay=5.0, clock=clock)
    fake.add_backend(WEB)
    api = compute(fake).backendServices()
    api.patch(project=PROJECT, backendService=WEB, body={"timeoutSec": 60}).execute()

    with pytest.raises(HttpError) as caught:
        api.patch(project=PROJECT, backendService=WEB, body={"timeoutSec": 90}).execute()
    clock.advance(5.0)
    api.patch(project=PROJECT, backendService=WEB, body={"timeoutSec": 90}).execute()
    clock.advance(5.0)

    assert caught.value.status_code == 400
    assert reason_of(caught.value) == "resourceNotReady"
    assert fake.backend(WEB)["timeoutSec"] == 90


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


@pytest.mark.parametrize(
    "draining",
    [
        {"drainingTimeoutSec": -1},
        {"drainingTimeoutSec": 3601},
        {"drainingTimeoutSec": 1.5},
        {"drainingTimeoutSec": "300"},
        {"drainingTimeoutSec": True},
        {"drainingTimeout": 300},
        300,
    ],
)
def test_connection_draining_out_of_range_or_shape_gets_400(
    fake: ComputeFake, draining: object
) -> None:
    api = compute(fake).backendServices()
    body = {"timeoutSec": 60, "connectionDraining": draining}

    with pytest.raises(HttpError) as caught:
        api.patch(project=PROJECT, backendService=WEB, body=body).execute()

    assert caught.value.status_code == 400
    assert fake.backend(WEB)["connectionDraining"] == {"drainingTimeoutSec": 0}
    assert fake.backend(WEB)["timeoutSec"] == 30  # the whole write was refused


@pytest.mark.parametrize("seconds", [0, 1, 300, 3600])
def test_timeout_and_draining_in_one_patch_under_one_fingerprint(
    fake: ComputeFake, seconds: int
) -> None:
    api = compute(fake).backendServices()
    before = fake.backend(WEB)
    body = {
        "timeoutSec": 3600,
        "connectionDraining": {"drainingTimeoutSec": seconds},
        "fingerprint": before["fingerprint"],
    }

    api.patch(project=PROJECT, backendService=WEB, body=body).execute()

    after = fake.backend(WEB)
    assert after["timeoutSec"] == 3600
    assert after["connectionDraining"] == {"drainingTimeoutSec": seconds}
    assert after["fingerprint"] != before["fingerprint"]


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


# --- credentials ----------------------------------------------------------------------------


def test_token_accepts_its_bearer_and_logs_the_scheme(make_fake: MakeFake) -> None:
    fake = make_fake(token="token-1")
    fake.add_backend(WEB)
    api = compute(fake, credentials=BearerToken("token-1")).backendServices()

    got = api.get(project=PROJECT, backendService=WEB).execute()

    assert got["name"] == WEB
    [call] = fake.calls
    assert (call.status, call.auth) == (200, "Bearer")


def test_token_refuses_a_request_without_authorization_with_401_required(
    make_fake: MakeFake,
) -> None:
    fake = make_fake(token="token-1")
    fake.add_backend(WEB)
    api = compute(fake, http=httplib2.Http()).backendServices()

    with pytest.raises(HttpError) as caught:
        api.get(project=PROJECT, backendService=WEB).execute()

    assert caught.value.status_code == 401
    assert reason_of(caught.value) == "required"
    body = json.loads(caught.value.content)
    assert body["error"]["status"] == "UNAUTHENTICATED"
    assert body["error"]["errors"][0]["location"] == "Authorization"
    assert caught.value.resp["www-authenticate"].startswith("Bearer ")
    [call] = fake.calls
    assert (call.status, call.auth) == (401, None)


def test_token_refuses_a_wrong_bearer_with_401_auth_error(make_fake: MakeFake) -> None:
    fake = make_fake(token="token-1")
    fake.add_backend(WEB)
    credentials = BearerToken("token-0")
    api = compute(fake, credentials=credentials).backendServices()

    with pytest.raises(HttpError) as caught:
        api.patch(project=PROJECT, backendService=WEB, body={"timeoutSec": 60}).execute()

    assert caught.value.status_code == 401
    assert reason_of(caught.value) == "authError"
    assert caught.value.error_details[0]["message"] == "Invalid Credentials"
    # The client refreshes and retries on 401; the same wrong token fails every time.
    assert {(c.status, c.auth) for c in fake.calls} == {(401, "Bearer")}
    assert credentials.refreshes == len(fake.calls) - 1 >= 1
    assert fake.backend(WEB)["timeoutSec"] == 30


def test_client_refreshes_a_rotated_token_after_401(make_fake: MakeFake) -> None:
    fake = make_fake(token="token-2")
    fake.add_backend(WEB)
    api = compute(fake, credentials=BearerToken("token-1", "token-2")).backendServices()

    got = api.get(project=PROJECT, backendService=WEB).execute()

    assert got["name"] == WEB
    assert [c.status for c in fake.calls] == [401, 200]


# --- read rate ------------------------------------------------------------------------------


def test_reads_above_rate_get_403_rate_limit_exceeded(make_fake: MakeFake) -> None:
    clock = FakeClock()
    fake = make_fake(read_rate_per_minute=4, clock=clock)
    fake.add_backend(WEB)
    client = compute(fake)
    api, ops = client.backendServices(), client.globalOperations()

    api.get(project=PROJECT, backendService=WEB).execute()
    api.list(project=PROJECT).execute()
    op = api.patch(project=PROJECT, backendService=WEB, body={"timeoutSec": 60}).execute()
    ops.get(project=PROJECT, operation=op["name"]).execute()
    ops.wait(project=PROJECT, operation=op["name"]).execute()
    with pytest.raises(HttpError) as caught:
        api.get(project=PROJECT, backendService=WEB).execute()
    api.patch(project=PROJECT, backendService=WEB, body={"timeoutSec": 70}).execute()
    clock.advance(60.0)
    after_a_minute = api.get(project=PROJECT, backendService=WEB).execute()

    assert caught.value.status_code == 403
    assert reason_of(caught.value) == "rateLimitExceeded"
    assert "'Read requests per minute'" in caught.value.reason
    assert after_a_minute["timeoutSec"] == 70
    assert fake.stats()[("get", 403)] == 1
    assert fake.stats()[("patch", 200)] == 2


# --- list pages -----------------------------------------------------------------------------


def list_all(api: Any, **kwargs: Any) -> tuple[list[str], list[int]]:
    names: list[str] = []
    sizes: list[int] = []
    request = api.list(project=PROJECT, **kwargs)
    while request is not None:
        page = request.execute()
        sizes.append(len(page.get("items", [])))
        names.extend(item["name"] for item in page.get("items", []))
        request = api.list_next(request, page)
    return names, sizes


@pytest.mark.parametrize(("max_results", "sizes"), [(5, [3, 3, 1]), (2, [2, 2, 2, 1])])
def test_page_cap_shortens_pages_and_tokens_still_reach_every_item(
    make_fake: MakeFake, max_results: int, sizes: list[int]
) -> None:
    fake = make_fake(page_cap=3)
    expected = [instance_group_backend_name(30000 + i, DEMO_CLUSTER_UID) for i in range(7)]
    for name in expected:
        fake.add_backend(name)

    names, page_sizes = list_all(compute(fake).backendServices(), maxResults=max_results)

    assert page_sizes == sizes
    assert names == sorted(expected)


def test_forged_page_token_gets_400_invalid(fake: ComputeFake) -> None:
    api = compute(fake).backendServices()

    with pytest.raises(HttpError) as caught:
        api.list(project=PROJECT, pageToken="azhzLWJlLTMwMDAw").execute()

    assert caught.value.status_code == 400
    assert reason_of(caught.value) == "invalid"


def test_page_token_works_again_within_its_ttl_then_goes_stale(make_fake: MakeFake) -> None:
    clock = FakeClock()
    fake = make_fake(clock=clock, page_token_ttl=300.0)
    for port in (30001, 30002, 30003):
        fake.add_backend(instance_group_backend_name(port, DEMO_CLUSTER_UID))
    api = compute(fake).backendServices()
    first = api.list(project=PROJECT, maxResults=2).execute()
    token = first["nextPageToken"]

    clock.advance(299.0)
    second = api.list(project=PROJECT, maxResults=2, pageToken=token).execute()
    retried = api.list(project=PROJECT, maxResults=2, pageToken=token).execute()
    clock.advance(1.0)
    with pytest.raises(HttpError) as caught:
        api.list(project=PROJECT, maxResults=2, pageToken=token).execute()

    assert [i["name"] for i in second["items"]] == [
        instance_group_backend_name(30003, DEMO_CLUSTER_UID)
    ]
    assert retried["items"] == second["items"]
    assert "nextPageToken" not in second
    assert caught.value.status_code == 400
    assert reason_of(caught.value) == "invalid"


def test_page_token_of_another_list_gets_400_invalid(make_fake: MakeFake) -> None:
    fake = make_fake()
    for port in (30001, 30002):
        fake.add_backend(instance_group_backend_name(port, DEMO_CLUSTER_UID))
        fake.add_backend(instance_group_backend_name(port, DEMO_CLUSTER_UID), region=REGION)
    client = compute(fake)
    token = client.backendServices().list(project=PROJECT, maxResults=1).execute()["nextPageToken"]

    with pytest.raises(HttpError) as caught:
        client.regionBackendServices().list(
            project=PROJECT, region=REGION, maxResults=1, pageToken=token
        ).execute()

    assert caught.value.status_code == 400
    assert reason_of(caught.value) == "invalid"


# --- requestId, latency ---------------------------------------------------------------------


def test_request_id_is_remembered_for_its_ttl_then_is_a_new_request(make_fake: MakeFake) -> None:
    clock = FakeClock()
    fake = make_fake(clock=clock, request_id_ttl=3600.0)
    fake.add_backend(WEB)
    api = compute(fake).backendServices()

    def patch() -> Any:
        body = {"timeoutSec": 3600}
        return api.patch(project=PROJECT, backendService=WEB, body=body, requestId=REQUEST_ID)

    first = patch().execute()
    fake.set_timeout_out_of_band(WEB, 45)
    clock.advance(3599.0)
    remembered = patch().execute()
    seen_within_ttl = fake.backend(WEB)["timeoutSec"]
    clock.advance(1.0)
    new = patch().execute()

    assert remembered["name"] == first["name"]
    assert seen_within_ttl == 45
    assert new["name"] != first["name"]
    assert fake.backend(WEB)["timeoutSec"] == 3600


def test_latency_from_the_constructor_outlasts_a_client_timeout_after_the_write(
    make_fake: MakeFake,
) -> None:
    fake = make_fake(latency=2.0)
    fake.add_backend(WEB)
    api = compute(fake, http=httplib2.Http(timeout=0.2)).backendServices()

    with pytest.raises(TimeoutError):
        api.patch(project=PROJECT, backendService=WEB, body={"timeoutSec": 60}).execute()

    assert fake.latency == 2.0
    # The answer was late, not lost: the write was accepted before the latency.
    eventually(lambda: fake.backend(WEB)["timeoutSec"] == 60, what="the write is applied")


# --- outage ---------------------------------------------------------------------------------


def test_down_answers_503_backend_error_until_up(fake: ComputeFake) -> None:
    api = compute(fake).backendServices()

    fake.down()
    with pytest.raises(HttpError) as get:
        api.get(project=PROJECT, backendService=WEB).execute()
    with pytest.raises(HttpError) as patch:
        api.patch(project=PROJECT, backendService=WEB, body={"timeoutSec": 60}).execute()
    was_down = fake.is_down
    fake.up()
    after = api.get(project=PROJECT, backendService=WEB).execute()

    assert was_down and not fake.is_down
    assert (get.value.status_code, reason_of(get.value)) == (503, "backendError")
    assert (patch.value.status_code, reason_of(patch.value)) == (503, "backendError")
    assert after["timeoutSec"] == 30
    assert [(c.method, c.status) for c in fake.calls] == [
        ("GET", 503),
        ("PATCH", 503),
        ("GET", 200),
    ]


def test_down_with_reset_drops_connections_without_an_answer(fake: ComputeFake) -> None:
    api = compute(fake).backendServices()
    api.get(project=PROJECT, backendService=WEB).execute()  # a kept-alive connection

    fake.down(reset=True)
    with pytest.raises(ConnectionResetError):
        api.get(project=PROJECT, backendService=WEB).execute()
    resets = [c for c in fake.calls if c.status == 0]
    fake.up()
    after = api.get(project=PROJECT, backendService=WEB).execute()

    assert after["name"] == WEB
    assert resets and all(c.method == "GET" and WEB in c.path for c in resets)
    assert fake.stats()[("get", 0)] == len(resets)


# --- clusters -------------------------------------------------------------------------------

OTHER_CLUSTER_UID = "5b1d6e3a9c0f4e27"


def test_second_clusters_backends_for_the_same_service_coexist(make_fake: MakeFake) -> None:
    fake = make_fake()
    ours = neg_backend_name("default", "web", 80, DEMO_CLUSTER_UID)
    theirs = neg_backend_name("default", "web", 80, OTHER_CLUSTER_UID)
    ours_ig = instance_group_backend_name(30480, DEMO_CLUSTER_UID)
    theirs_ig = instance_group_backend_name(30480, OTHER_CLUSTER_UID)
    for name in (ours, theirs):
        fake.add_backend(name, service="default/web", port="80")
    for name in (ours_ig, theirs_ig):
        fake.add_backend(name, service="kube-system/default-http-backend", port="80")
    api = compute(fake).backendServices()
    items = {item["name"]: item for item in api.list(project=PROJECT).execute()["items"]}

    body = {"timeoutSec": 300, "fingerprint": items[theirs]["fingerprint"]}
    api.patch(project=PROJECT, backendService=theirs, body=body).execute()

    assert set(items) == {ours, theirs, ours_ig, theirs_ig}
    assert items[ours]["description"] == items[theirs]["description"]
    assert items[ours_ig]["description"] == items[theirs_ig]["description"]
    groups = {items[n]["backends"][0]["group"].rsplit("/", 1)[1] for n in (ours_ig, theirs_ig)}
    assert groups == {f"k8s-ig--{DEMO_CLUSTER_UID}", f"k8s-ig--{OTHER_CLUSTER_UID}"}
    assert fake.backend(theirs)["timeoutSec"] == 300
    assert fake.backend(ours)["timeoutSec"] == 30


@pytest.mark.parametrize("uid", ["5b1d6e3a", "0123456789abcdef0123456789abcdef"])
def test_add_backend_takes_any_uid_and_description_verbatim(make_fake: MakeFake, uid: str) -> None:
    fake = make_fake()
    description = '{"kubernetes.io/service-name":"default/web","kubernetes.io/service-port":"80"}'
    names = [neg_backend_name("default", "web", 80, uid), instance_group_backend_name(30480, uid)]
    for name in names:
        fake.add_backend(name, description=description)
    api = compute(fake).backendServices()

    got = [api.get(project=PROJECT, backendService=name).execute() for name in names]

    assert [g["name"] for g in got] == names
    assert all(len(name) <= 63 for name in names)
    assert {g["description"] for g in got} == {description}


# --- stats ----------------------------------------------------------------------------------


def exercise(fake: ComputeFake) -> None:
    """One of each: get, get of a missing name, list, patch, 412 patch, op get, wait."""
    client = compute(fake)
    api, ops = client.backendServices(), client.globalOperations()
    api.get(project=PROJECT, backendService=WEB).execute()
    with pytest.raises(HttpError):
        api.get(project=PROJECT, backendService="missing").execute()
    api.list(project=PROJECT).execute()
    op = api.patch(project=PROJECT, backendService=WEB, body={"timeoutSec": 60}).execute()
    with pytest.raises(HttpError):
        stale = {"timeoutSec": 70, "fingerprint": "c3RhbGU="}
        api.patch(project=PROJECT, backendService=WEB, body=stale).execute()
    ops.get(project=PROJECT, operation=op["name"]).execute()
    ops.wait(project=PROJECT, operation=op["name"]).execute()


EXERCISED = {
    ("get", 200): 1,
    ("get", 404): 1,
    ("list", 200): 1,
    ("patch", 200): 1,
    ("patch", 412): 1,
    ("operations.get", 200): 1,
    ("operations.wait", 200): 1,
}


def test_stats_count_calls_by_operation_and_status(fake: ComputeFake) -> None:
    exercise(fake)

    stats = fake.stats()
    fake.clear_calls()

    assert stats == EXERCISED
    assert fake.count("GET") == 0
    assert fake.stats() == {}


def test_keep_calls_false_keeps_counts_but_no_log(make_fake: MakeFake) -> None:
    fake = make_fake(keep_calls=False)
    fake.add_backend(WEB)

    exercise(fake)

    assert fake.stats() == EXERCISED
    assert (fake.count("GET"), fake.count("PATCH"), fake.count("POST")) == (4, 2, 1)
    with pytest.raises(RuntimeError):
        _ = fake.calls
    with pytest.raises(RuntimeError):
        fake.count("PATCH", WEB)


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
