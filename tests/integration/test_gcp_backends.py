"""The Compute client against the Compute fake, through google-api-python-client.

Covers reads, PATCH (fingerprint, requestId, 412 as conflict) and waiting on its
Operation (bounded by time on an injected clock), retries and error kinds, the
write and read budgets, the leader fence (NotLeader), one Compute shared by
many threads, and where credentials may be sent. Backoff sleeps are recorded,
never slept; the fake and the client share a fake clock where time matters.
Needs only the fake, no apiserver.
"""

from __future__ import annotations

import collections
import json
import logging
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import google.auth
import google.auth.credentials
import google.auth.exceptions
import google.oauth2.credentials
import google_auth_httplib2
import pytest

from controller.gcp import backends
from controller.gcp.backends import (
    DEADLINE,
    OPERATION_TIMEOUT,
    READ_TIMEOUT,
    WAIT_TIMEOUT,
    WRITE_TIMEOUT,
    CallKind,
    Compute,
    GcpError,
    NotLeader,
    WriteLimiter,
)
from controller.model import Backend, BackendRef
from tests.fakes.compute import Call, ComputeFake, instance_group_backend_name
from tests.wait import eventually

PROJECT = "demo-project"
REGION = "europe-west1"
NAME = "k8s-be-30480--0e20ca25204f6195"
REF = BackendRef("global", NAME)
UNSAFE_FLAG = "--unsafe-send-credentials-to-endpoint"


class FakeClock:
    """A clock that only moves when told; shared by the fake and the client."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def fake() -> Iterator[ComputeFake]:
    with ComputeFake(PROJECT) as server:
        yield server


@pytest.fixture
def slow_fake() -> Iterator[ComputeFake]:
    """Operations finish only after several short server-side waits (real time)."""
    with ComputeFake(PROJECT, op_delay=0.3, wait_max=0.05) as server:
        yield server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def timed_fake(clock: FakeClock) -> Iterator[ComputeFake]:
    """Operations take 100 s on `clock`; one operations.wait returns RUNNING at once."""
    with ComputeFake(PROJECT, op_delay=100.0, wait_max=0.001, clock=clock) as server:
        yield server


def request_id(n: int = 1) -> str:
    """A deterministic, valid (non-zero) UUID."""
    return str(uuid.UUID(int=n))


class Calls(collections.Counter[tuple[str, int]]):
    """What a Compute reported to on_call: (method, status) -> count."""

    def __call__(self, method: str, status: int) -> None:
        self[(method, status)] += 1


class Lease:
    """may_write: holds until `lose()`."""

    def __init__(self) -> None:
        self.held = True

    def __call__(self) -> bool:
        return self.held

    def lose(self) -> None:
        self.held = False


class CountingLimiter(WriteLimiter):
    """A limiter that never waits and counts acquire() calls (from any thread)."""

    def __init__(self) -> None:
        super().__init__(rate=1.0)
        self.taken = 0
        self._count_lock = threading.Lock()

    def acquire(self) -> None:
        with self._count_lock:
            self.taken += 1


def on_wait(action: Callable[[], None]) -> Callable[[str, int], None]:
    """An on_call hook running `action` after every operations.wait answered."""

    def hook(method: str, status: int) -> None:
        if method.endswith("Operations.wait"):
            action()

    return hook


def compute_for(server: ComputeFake, sleeps: list[float] | None = None, **kwargs: Any) -> Compute:
    recorder = sleeps if sleeps is not None else []
    return Compute(
        PROJECT, endpoint=server.url, sleep=recorder.append, rng=random.Random(7), **kwargs
    )


def seeded(server: ComputeFake, sleeps: list[float], **kwargs: Any) -> tuple[Compute, Backend]:
    """NAME at 30 s in the fake, a Compute recording its sleeps, and NAME as read."""
    server.add_backend(NAME, timeout=30)
    compute = compute_for(server, sleeps, **kwargs)
    backend = compute.get(REF)
    assert backend is not None
    server.clear_calls()
    return compute, backend


def query(call: Call, key: str) -> str | None:
    return call.query.get(key)


def calls_to(server: ComputeFake, method: str, path_contains: str = "") -> list[Call]:
    return [c for c in server.calls if c.method == method and path_contains in c.path]


def waits(server: ComputeFake) -> list[Call]:
    return [c for c in server.calls if c.method == "POST" and c.path.endswith("/wait")]


def assert_backoff(sleeps: list[float], base: float = 1.0) -> None:
    """Full jitter: the n-th delay (0-based) lies in [0, base * 2**n]."""
    for attempt, delay in enumerate(sleeps):
        assert 0 <= delay <= base * 2**attempt


# --- reads -------------------------------------------------------------------


def test_backend_ref_prints_as_its_resource_path() -> None:
    assert str(BackendRef("global", NAME)) == f"global/{NAME}"
    assert str(BackendRef(REGION, NAME)) == f"regions/{REGION}/{NAME}"
    assert not BackendRef("global", NAME).regional
    assert BackendRef(REGION, NAME).regional


def test_get_returns_timeout_fingerprint_and_service(fake: ComputeFake) -> None:
    fake.add_backend(NAME, service="shop/web", timeout=30)

    backend = compute_for(fake).get(REF)

    assert backend == Backend(
        ref=REF,
        timeout_sec=30,
        fingerprint=fake.backend(NAME)["fingerprint"],
        service="shop/web",
        draining_sec=0,
        port="80",
    )


@pytest.mark.parametrize(
    "port",
    [
        "8080",
        "http",
        "&ServiceBackendPort{Name:,Number:8080,}",
        "&ServiceBackendPort{Name:http,Number:0,}",
    ],
)
def test_get_reads_draining_and_the_service_port_in_either_form(
    fake: ComputeFake, port: str
) -> None:
    description = json.dumps(
        {"kubernetes.io/service-name": "shop/ws", "kubernetes.io/service-port": port}
    )
    fake.add_backend(NAME, description=description)
    fake.set_draining_out_of_band(NAME, 300)

    backend = compute_for(fake).get(REF)

    assert backend is not None and backend.draining_sec == 300 and backend.service == "shop/ws"
    assert backend.port == ("http" if "http" in port else "8080")


def test_one_patch_sets_timeout_and_draining_under_one_fingerprint(fake: ComputeFake) -> None:
    fake.add_backend(NAME)
    compute = compute_for(fake)
    backend = compute.get(REF)
    assert backend is not None

    compute.wait(
        REF, compute.patch(backend, {"timeout": 3600, "draining": 300}, request_id=request_id())
    )

    (call,) = [c for c in fake.calls if c.method == "PATCH"]
    assert call.body == {
        "timeoutSec": 3600,
        "connectionDraining": {"drainingTimeoutSec": 300},
        "fingerprint": backend.fingerprint,
    }
    after = compute.get(REF)
    assert after is not None and (after.timeout_sec, after.draining_sec) == (3600, 300)


def test_get_of_missing_backend_returns_none(fake: ComputeFake) -> None:
    sleeps: list[float] = []
    assert compute_for(fake, sleeps).get(BackendRef("global", "nope")) is None
    assert sleeps == []


@pytest.mark.parametrize(
    "description",
    [
        "",
        "not json",
        "[1, 2]",
        '{"kubernetes.io/service-name": 5}',
        '{"kubernetes.io/service-name": "no-slash"}',
        '{"kubernetes.io/service-name": "a/b/c"}',
        '{"other": "x"}',
        "[" * 100_000,
    ],
)
def test_unparseable_description_gives_no_service(fake: ComputeFake, description: str) -> None:
    fake.add_backend(NAME, description=description)

    backend = compute_for(fake).get(REF)

    assert backend is not None
    assert backend.service is None


def test_list_returns_every_backend_across_pages(fake: ComputeFake) -> None:
    names = {f"k8s-be-{30000 + i}--0e20ca25204f6195" for i in range(1203)}
    for name in names:
        fake.add_backend(name)
    fake.add_backend("regional-one", region=REGION)

    found = {b.ref.name: b for b in compute_for(fake).backends("global")}

    assert set(found) == names
    assert all(b.ref == BackendRef("global", n) for n, b in found.items())
    pages = calls_to(fake, "GET", "/global/backendServices")
    assert len(pages) == 3
    assert {query(c, "maxResults") for c in pages} == {"500"}


def test_list_follows_the_page_token_of_pages_shorter_than_asked() -> None:
    with ComputeFake(PROJECT, page_cap=7) as fake:
        names = {instance_group_backend_name(30000 + i, "0e20ca25204f6195") for i in range(20)}
        for name in names:
            fake.add_backend(name)

        found = {b.ref.name: b for b in compute_for(fake).backends("global")}

        assert set(found) == names
        pages = calls_to(fake, "GET", "/global/backendServices")
        assert [c.status for c in pages] == [200, 200, 200]
        tokens = [query(c, "pageToken") for c in pages]
        assert tokens[0] is None
        assert None not in tokens[1:]
        assert len(set(tokens)) == 3


def test_list_of_a_region_returns_only_its_backends(fake: ComputeFake) -> None:
    fake.add_backend("global-one")
    fake.add_backend("regional-one", region=REGION)

    found = {b.ref.name: b for b in compute_for(fake).backends(REGION)}

    assert list(found) == ["regional-one"]
    assert found["regional-one"].ref == BackendRef(REGION, "regional-one")


def test_read_rate_limit_403_backs_off_then_succeeds(clock: FakeClock) -> None:
    with ComputeFake(PROJECT, read_rate_per_minute=2, clock=clock) as fake:
        fake.add_backend(NAME)
        sleeps: list[float] = []

        def backoff(delay: float) -> None:
            sleeps.append(delay)
            clock.advance(60)  # the next minute has room again

        compute = Compute(PROJECT, endpoint=fake.url, sleep=backoff, rng=random.Random(7))
        compute.get(REF)
        compute.get(REF)

        assert compute.get(REF) is not None

        assert [c.status for c in calls_to(fake, "GET", NAME)] == [200, 200, 403, 200]
        assert len(sleeps) == 1


# --- patch ---------------------------------------------------------------------


def test_patch_sends_fingerprint_and_request_id_and_wait_returns_once_done(
    slow_fake: ComputeFake,
) -> None:
    compute, before = seeded(slow_fake, [])

    operation = compute.patch(before, {"timeout": 3600}, request_id=request_id())
    assert operation["status"] != "DONE"
    compute.wait(REF, operation)

    (patch,) = calls_to(slow_fake, "PATCH")
    assert patch.path.endswith(f"/projects/{PROJECT}/global/backendServices/{NAME}")
    assert patch.body == {"timeoutSec": 3600, "fingerprint": before.fingerprint}
    assert query(patch, "requestId") == request_id()
    assert len(waits(slow_fake)) >= 1
    assert all(f"/global/operations/{operation['name']}/wait" in c.path for c in waits(slow_fake))
    after = compute.get(REF)
    assert after is not None
    assert after.timeout_sec == 3600 == slow_fake.backend(NAME)["timeoutSec"]
    assert after.fingerprint == slow_fake.backend(NAME)["fingerprint"] != before.fingerprint


def test_wait_on_an_operation_already_done_makes_no_call(fake: ComputeFake) -> None:
    compute, backend = seeded(fake, [])

    operation = compute.patch(backend, {"timeout": 600}, request_id=request_id())
    assert operation["status"] == "DONE"
    compute.wait(REF, operation)

    assert waits(fake) == []
    assert fake.backend(NAME)["timeoutSec"] == 600


@pytest.mark.parametrize("how", ["written in between", "injected"])
def test_412_surfaces_as_conflict_without_a_second_patch(fake: ComputeFake, how: str) -> None:
    sleeps: list[float] = []
    compute, backend = seeded(fake, sleeps)
    if how == "injected":
        fake.inject("PATCH", NAME, 412, reason="conditionNotMet")
    else:
        fake.set_timeout_out_of_band(NAME, 600)

    with pytest.raises(GcpError) as raised:
        compute.patch(backend, {"timeout": 900}, request_id=request_id())

    assert raised.value.kind == "conflict"
    assert raised.value.status == 412
    assert raised.value.reason == "conditionNotMet"
    assert [c.status for c in calls_to(fake, "PATCH")] == [412]
    assert sleeps == []
    assert fake.backend(NAME)["timeoutSec"] == (30 if how == "injected" else 600)


def test_after_a_412_the_caller_rereads_and_patches_with_the_new_fingerprint(
    fake: ComputeFake,
) -> None:
    compute, stale = seeded(fake, [])
    fake.set_timeout_out_of_band(NAME, 600)
    with pytest.raises(GcpError):
        compute.patch(stale, {"timeout": 900}, request_id=request_id(1))

    fresh = compute.get(REF)
    assert fresh is not None
    assert fresh.timeout_sec == 600
    compute.wait(REF, compute.patch(fresh, {"timeout": 900}, request_id=request_id(2)))

    patches = calls_to(fake, "PATCH")
    assert [c.status for c in patches] == [412, 200]
    assert patches[1].body == {"timeoutSec": 900, "fingerprint": fresh.fingerprint}
    assert fake.backend(NAME)["timeoutSec"] == 900


def test_server_errors_are_retried_with_the_same_request_id(fake: ComputeFake) -> None:
    sleeps: list[float] = []
    calls = Calls()
    compute, backend = seeded(fake, sleeps, on_call=calls)
    fake.inject("PATCH", NAME, 503, times=2)

    compute.wait(REF, compute.patch(backend, {"timeout": 120}, request_id=request_id()))

    patches = calls_to(fake, "PATCH")
    assert [c.status for c in patches] == [503, 503, 200]
    assert {query(c, "requestId") for c in patches} == {request_id()}
    assert len(sleeps) == 2
    assert_backoff(sleeps)
    assert fake.backend(NAME)["timeoutSec"] == 120
    assert calls[("backendServices.patch", 503)] == 2
    assert calls[("backendServices.patch", 200)] == 1


def test_rate_limit_403_backs_off_then_succeeds_with_the_same_request_id(
    fake: ComputeFake,
) -> None:
    sleeps: list[float] = []
    compute, backend = seeded(fake, sleeps)
    fake.inject("PATCH", NAME, 403, reason="rateLimitExceeded")

    compute.wait(REF, compute.patch(backend, {"timeout": 90}, request_id=request_id()))

    patches = calls_to(fake, "PATCH")
    assert [c.status for c in patches] == [403, 200]
    assert {query(c, "requestId") for c in patches} == {request_id()}
    assert len(sleeps) == 1
    assert_backoff(sleeps)
    assert fake.backend(NAME)["timeoutSec"] == 90


def test_write_rate_limit_of_the_fake_is_retried_with_the_same_request_id(
    clock: FakeClock,
) -> None:
    with ComputeFake(PROJECT, write_rate_per_minute=1, clock=clock) as fake:
        fake.add_backend(NAME, timeout=30)
        fake.add_backend("other", timeout=30)
        sleeps: list[float] = []

        def backoff(delay: float) -> None:
            sleeps.append(delay)
            clock.advance(60)

        compute = Compute(PROJECT, endpoint=fake.url, sleep=backoff, rng=random.Random(7))
        other = compute.get(BackendRef("global", "other"))
        backend = compute.get(REF)
        assert other is not None
        assert backend is not None
        compute.patch(other, {"timeout": 60}, request_id=request_id(1))

        compute.patch(backend, {"timeout": 90}, request_id=request_id(2))

        patches = calls_to(fake, "PATCH", NAME)
        assert [(c.status, query(c, "requestId")) for c in patches] == [
            (403, request_id(2)),
            (200, request_id(2)),
        ]
        assert len(sleeps) == 1
        assert fake.backend(NAME)["timeoutSec"] == 90


def test_timed_out_patch_is_retried_with_the_same_request_id_and_applied_once(
    fake: ComputeFake,
) -> None:
    fake.add_backend(NAME, timeout=30)
    sleeps: list[float] = []

    def backoff(delay: float) -> None:
        sleeps.append(delay)
        fake.latency = 0.0  # the network recovers while we back off

    calls = Calls()
    compute = Compute(
        PROJECT,
        endpoint=fake.url,
        sleep=backoff,
        rng=random.Random(7),
        write_timeout=0.2,
        on_call=calls,
    )
    backend = compute.get(REF)
    assert backend is not None
    fake.latency = 1.0

    operation = compute.patch(backend, {"timeout": 300}, request_id=request_id())
    compute.wait(REF, operation)

    eventually(lambda: len(calls_to(fake, "PATCH")) == 2, what="both PATCHes logged")
    patches = calls_to(fake, "PATCH")
    # Both accepted: the retry got the first write's Operation back, not a 412
    # for the fingerprint the first one changed.
    assert [c.status for c in patches] == [200, 200]
    assert {query(c, "requestId") for c in patches} == {request_id()}
    assert calls[("backendServices.patch", 0)] == 1
    assert len(sleeps) == 1
    assert fake.backend(NAME)["timeoutSec"] == 300


def test_write_in_flight_gets_resource_not_ready_then_412_then_a_reread_wins(
    clock: FakeClock,
) -> None:
    with ComputeFake(PROJECT, op_delay=10.0, wait_max=0.001, clock=clock) as fake:
        fake.add_backend(NAME, timeout=30)
        other = compute_for(fake)
        sleeps: list[float] = []

        def backoff(delay: float) -> None:
            sleeps.append(delay)
            clock.advance(10)  # someone else's write finishes while we back off

        ours = Compute(PROJECT, endpoint=fake.url, sleep=backoff, rng=random.Random(7))
        backend = ours.get(REF)
        other_backend = other.get(REF)
        assert backend is not None
        assert other_backend is not None
        # Someone else's write is accepted and stays RUNNING for op_delay.
        other.patch(other_backend, {"timeout": 600}, request_id=request_id(1))

        with pytest.raises(GcpError) as raised:
            ours.patch(backend, {"timeout": 900}, request_id=request_id(2))

        assert raised.value.kind == "conflict"
        assert raised.value.status == 412
        assert [c.status for c in calls_to(fake, "PATCH")] == [200, 400, 412]
        assert len(sleeps) == 1
        fresh = ours.get(REF)
        assert fresh is not None
        assert fresh.timeout_sec == 600
        operation = ours.patch(fresh, {"timeout": 900}, request_id=request_id(3))
        clock.advance(10)
        ours.wait(REF, operation)
        assert [c.status for c in calls_to(fake, "PATCH")] == [200, 400, 412, 200]
        assert fake.backend(NAME)["timeoutSec"] == 900


def test_permission_403_raises_at_once_without_retry(fake: ComputeFake) -> None:
    sleeps: list[float] = []
    compute, backend = seeded(fake, sleeps)
    fake.deny(NAME)

    with pytest.raises(GcpError) as raised:
        compute.patch(backend, {"timeout": 90}, request_id=request_id())

    assert raised.value.kind == "permission"
    assert raised.value.status == 403
    assert fake.count("PATCH") == 1
    assert sleeps == []
    assert fake.backend(NAME)["timeoutSec"] == 30


def test_bad_request_400_raises_invalid_at_once(fake: ComputeFake) -> None:
    sleeps: list[float] = []
    compute, backend = seeded(fake, sleeps)

    with pytest.raises(GcpError) as raised:
        compute.patch(backend, {"timeout": 0}, request_id=request_id())

    assert raised.value.kind == "invalid"
    assert raised.value.status == 400
    assert fake.count("PATCH") == 1
    assert sleeps == []


def test_patch_of_deleted_backend_raises_not_found(fake: ComputeFake) -> None:
    sleeps: list[float] = []
    compute, backend = seeded(fake, sleeps)
    fake.delete_backend(NAME)

    with pytest.raises(GcpError) as raised:
        compute.patch(backend, {"timeout": 90}, request_id=request_id())

    assert raised.value.kind == "not_found"
    assert raised.value.status == 404
    assert fake.count("PATCH") == 1
    assert sleeps == []


def test_backend_deleted_while_its_operation_runs_fails_the_wait(
    clock: FakeClock, timed_fake: ComputeFake
) -> None:
    compute, backend = seeded(timed_fake, [])
    operation = compute.patch(backend, {"timeout": 90}, request_id=request_id())
    timed_fake.delete_backend(NAME)
    clock.advance(100)

    with pytest.raises(GcpError) as raised:
        compute.wait(REF, operation)

    assert raised.value.kind == "operation"
    assert raised.value.reason == "RESOURCE_NOT_FOUND"
    assert raised.value.status == 404


def test_failed_operation_raises_operation_error(fake: ComputeFake) -> None:
    compute, backend = seeded(fake, [])
    fake.fail_next_operation(code="RESOURCE_OPERATION_RATE_EXCEEDED", message="try later")

    operation = compute.patch(backend, {"timeout": 90}, request_id=request_id())
    with pytest.raises(GcpError) as raised:
        compute.wait(REF, operation)

    assert raised.value.kind == "operation"
    assert raised.value.reason == "RESOURCE_OPERATION_RATE_EXCEEDED"
    assert raised.value.status == 500
    assert raised.value.method == "globalOperations.wait"
    assert "try later" in str(raised.value)
    assert fake.backend(NAME)["timeoutSec"] == 30


def test_regional_backend_uses_only_regional_paths(slow_fake: ComputeFake) -> None:
    slow_fake.add_backend(NAME, region=REGION, timeout=30)
    calls = Calls()
    compute = compute_for(slow_fake, on_call=calls)
    ref = BackendRef(REGION, NAME)

    backend = compute.get(ref)
    assert backend is not None
    operation = compute.patch(backend, {"timeout": 1800}, request_id=request_id())
    compute.wait(ref, operation)
    after = compute.get(ref)

    assert after is not None
    assert after.ref == ref
    assert after.timeout_sec == 1800
    assert slow_fake.backend(NAME, region=REGION)["timeoutSec"] == 1800
    paths = [c.path for c in slow_fake.calls]
    assert paths
    assert all(f"/regions/{REGION}/" in p and "/global/" not in p for p in paths)
    assert any(f"/regions/{REGION}/operations/" in p for p in paths)
    assert set(calls) == {
        ("regionBackendServices.get", 200),
        ("regionBackendServices.patch", 200),
        ("regionOperations.wait", 200),
    }


def test_retries_exhausted_raise_transient(fake: ComputeFake) -> None:
    fake.add_backend(NAME)
    sleeps: list[float] = []
    compute = compute_for(fake, sleeps, max_attempts=3)
    fake.inject("GET", NAME, 503, times=10)

    with pytest.raises(GcpError) as raised:
        compute.get(REF)

    assert raised.value.kind == "transient"
    assert raised.value.status == 503
    assert fake.count("GET", NAME) == 3
    assert len(sleeps) == 2
    assert_backoff(sleeps)


def test_connection_refused_is_retried_then_raises_transient() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sleeps: list[float] = []
    calls = Calls()
    compute = Compute(
        PROJECT,
        endpoint=f"http://127.0.0.1:{port}/compute/v1/",
        sleep=sleeps.append,
        rng=random.Random(7),
        max_attempts=4,
        on_call=calls,
    )

    with pytest.raises(GcpError) as raised:
        compute.get(REF)

    assert raised.value.kind == "transient"
    assert raised.value.status is None
    assert calls[("backendServices.get", 0)] == 4
    assert len(sleeps) == 3
    assert_backoff(sleeps)


def test_backoff_delay_is_capped_by_max_delay(fake: ComputeFake) -> None:
    fake.add_backend(NAME)
    sleeps: list[float] = []
    compute = compute_for(fake, sleeps, max_attempts=8, base_delay=1.0, max_delay=4.0)
    fake.inject("GET", NAME, 500, times=7)

    assert compute.get(REF) is not None
    assert len(sleeps) == 7
    assert max(sleeps) <= 4.0


def test_every_call_is_counted_and_logged_at_debug(
    fake: ComputeFake, caplog: pytest.LogCaptureFixture
) -> None:
    fake.add_backend(NAME)
    calls = Calls()
    compute = compute_for(fake, on_call=calls)
    caplog.set_level(logging.DEBUG, logger="controller.gcp.backends")

    backend = compute.get(REF)
    compute.get(BackendRef("global", "missing"))
    assert backend is not None
    compute.patch(backend, {"timeout": 60}, request_id=request_id())

    assert calls == {
        ("backendServices.get", 200): 1,
        ("backendServices.get", 404): 1,
        ("backendServices.patch", 200): 1,
    }
    lines = [r.getMessage() for r in caplog.records]
    assert any(f"backendServices.get global/{NAME}" in m and "-> 200" in m for m in lines)
    assert any("backendServices.get global/missing" in m and "-> 404" in m for m in lines)
    assert any(
        f"backendServices.patch global/{NAME} requestId={request_id()}" in m and "-> 200" in m
        for m in lines
    )


def test_gcp_error_text_names_method_backend_status_and_reason(fake: ComputeFake) -> None:
    compute, backend = seeded(fake, [])
    fake.deny(NAME)

    with pytest.raises(GcpError) as raised:
        compute.patch(backend, {"timeout": 90}, request_id=request_id())

    text = str(raised.value)
    assert f"backendServices.patch global/{NAME}" in text
    assert "403" in text
    assert "forbidden" in text
    assert raised.value.message in text


def test_401_to_anonymous_credentials_is_permission_and_not_retried() -> None:
    with ComputeFake(PROJECT, token="s3cret") as fake:
        fake.add_backend(NAME)
        sleeps: list[float] = []

        with pytest.raises(GcpError) as raised:
            compute_for(fake, sleeps).get(REF)

        assert raised.value.kind == "permission"
        assert [(c.status, c.auth) for c in calls_to(fake, "GET")] == [(401, None)]
        assert sleeps == []


def test_explicit_credentials_are_sent_as_a_bearer_token() -> None:
    with ComputeFake(PROJECT, token="s3cret") as fake:
        fake.add_backend(NAME, timeout=45)
        credentials = google.oauth2.credentials.Credentials(token="s3cret")

        backend = compute_for(fake, credentials=credentials).get(REF)

        assert backend is not None
        assert backend.timeout_sec == 45
        assert [(c.status, c.auth) for c in calls_to(fake, "GET")] == [(200, "Bearer")]


# --- wait: bounded by time -----------------------------------------------------


def test_wait_keeps_waiting_as_long_as_time_remains(
    clock: FakeClock, timed_fake: ComputeFake
) -> None:
    # Each wait returns RUNNING and 2 s pass: 50 of them until DONE at 100 s, well
    # inside the 180 s bound, and far more waits than any fixed count would allow.
    compute, backend = seeded(
        timed_fake, [], clock=clock, on_call=on_wait(lambda: clock.advance(2))
    )

    compute.wait(REF, compute.patch(backend, {"timeout": 3600}, request_id=request_id()))

    assert len(waits(timed_fake)) == 51
    assert timed_fake.backend(NAME)["timeoutSec"] == 3600


def test_wait_gives_up_as_transient_past_the_operation_timeout_then_the_same_request_id_resumes(
    clock: FakeClock,
) -> None:
    fake_clock = FakeClock()  # the operation takes an hour on the fake's own clock
    with ComputeFake(PROJECT, op_delay=3600.0, wait_max=0.001, clock=fake_clock) as fake:
        sleeps: list[float] = []
        compute, backend = seeded(
            fake, sleeps, clock=clock, on_call=on_wait(lambda: clock.advance(60))
        )
        operation = compute.patch(backend, {"timeout": 3600}, request_id=request_id())

        with pytest.raises(GcpError) as raised:
            compute.wait(REF, operation)

        assert raised.value.kind == "transient"
        assert raised.value.method == "globalOperations.wait"
        assert "RUNNING" in raised.value.message
        assert f"{OPERATION_TIMEOUT:.0f}s" in raised.value.message
        assert len(waits(fake)) == 3  # 3 x 60 s reach the 180 s bound
        assert fake.count("PATCH") == 1  # wait never writes
        assert sleeps == []

        # The caller retries the same write: GCP hands back the same Operation.
        again = compute.patch(backend, {"timeout": 3600}, request_id=request_id())
        assert again["name"] == operation["name"]
        fake_clock.advance(3600)
        compute.wait(REF, again)
        assert [c.status for c in calls_to(fake, "PATCH")] == [200, 200]
        assert fake.backend(NAME)["timeoutSec"] == 3600


def test_operation_timeout_is_the_callers_choice(clock: FakeClock, timed_fake: ComputeFake) -> None:
    compute, backend = seeded(
        timed_fake,
        [],
        clock=clock,
        operation_timeout=10.0,
        on_call=on_wait(lambda: clock.advance(1)),
    )
    operation = compute.patch(backend, {"timeout": 3600}, request_id=request_id())

    with pytest.raises(GcpError) as raised:
        compute.wait(REF, operation)

    assert raised.value.kind == "transient"
    assert len(waits(timed_fake)) == 10


def test_failed_operation_wait_calls_are_retried(clock: FakeClock, timed_fake: ComputeFake) -> None:
    sleeps: list[float] = []
    compute, backend = seeded(timed_fake, sleeps, clock=clock)
    operation = compute.patch(backend, {"timeout": 3600}, request_id=request_id())
    clock.advance(100)
    timed_fake.inject("POST", "/wait", 503)

    compute.wait(REF, operation)

    assert [c.status for c in waits(timed_fake)] == [503, 200]
    assert len(sleeps) == 1
    assert timed_fake.backend(NAME)["timeoutSec"] == 3600


# --- the leader fence ----------------------------------------------------------


def test_patch_without_the_lease_sends_nothing(fake: ComputeFake) -> None:
    compute, backend = seeded(fake, [])
    lease = Lease()
    lease.lose()

    with pytest.raises(NotLeader):
        compute.patch(backend, {"timeout": 90}, request_id=request_id(), may_write=lease)

    assert fake.calls == []
    assert fake.backend(NAME)["timeoutSec"] == 30


def test_lease_lost_between_attempts_stops_the_retry(fake: ComputeFake) -> None:
    lease = Lease()
    sleeps: list[float] = []

    def backoff(delay: float) -> None:
        sleeps.append(delay)
        lease.lose()

    fake.add_backend(NAME, timeout=30)
    compute = Compute(PROJECT, endpoint=fake.url, sleep=backoff, rng=random.Random(7))
    backend = compute.get(REF)
    assert backend is not None
    fake.inject("PATCH", NAME, 503, times=5)

    with pytest.raises(NotLeader):
        compute.patch(backend, {"timeout": 90}, request_id=request_id(), may_write=lease)

    assert [c.status for c in calls_to(fake, "PATCH")] == [503]
    assert len(sleeps) == 1
    assert fake.backend(NAME)["timeoutSec"] == 30


def test_lease_lost_during_wait_raises_not_leader_at_once_and_nothing_more_is_sent(
    clock: FakeClock, timed_fake: ComputeFake
) -> None:
    lease = Lease()
    sleeps: list[float] = []

    def after_wait() -> None:
        lease.lose()
        clock.advance(10)  # time goes on: a client that ignored the lease would finish

    compute, backend = seeded(timed_fake, sleeps, clock=clock, on_call=on_wait(after_wait))
    operation = compute.patch(backend, {"timeout": 3600}, request_id=request_id(), may_write=lease)

    with pytest.raises(NotLeader):
        compute.wait(REF, operation, may_write=lease)

    assert len(waits(timed_fake)) == 1  # no further wait once the lease is gone
    assert sleeps == []
    with pytest.raises(NotLeader):
        compute.patch(backend, {"timeout": 3600}, request_id=request_id(), may_write=lease)
    assert [c.status for c in calls_to(timed_fake, "PATCH")] == [200]


# --- budgets -------------------------------------------------------------------


def test_write_limiter_sleeps_for_the_missing_token_beyond_burst() -> None:
    clock = FakeClock()
    sleeps: list[float] = []
    limiter = WriteLimiter(rate=2.0, burst=3, clock=clock, sleep=sleeps.append)

    for _ in range(3):
        limiter.acquire()
    assert sleeps == []

    limiter.acquire()
    limiter.acquire()
    assert sleeps == pytest.approx([0.5, 1.0])


def test_write_limiter_refills_over_time_up_to_burst() -> None:
    clock = FakeClock()
    sleeps: list[float] = []
    limiter = WriteLimiter(rate=1.0, burst=2, clock=clock, sleep=sleeps.append)
    limiter.acquire()
    limiter.acquire()

    clock.advance(60.0)
    limiter.acquire()
    limiter.acquire()
    assert sleeps == []
    limiter.acquire()
    assert sleeps == pytest.approx([1.0])


def test_every_patch_attempt_takes_a_write_token(fake: ComputeFake) -> None:
    fake.add_backend(NAME, timeout=30)
    limiter_sleeps: list[float] = []
    limiter = WriteLimiter(rate=1.0, burst=1, clock=FakeClock(), sleep=limiter_sleeps.append)
    compute = compute_for(fake, limiter=limiter)
    backend = compute.get(REF)
    assert backend is not None
    fake.inject("PATCH", NAME, 503, times=2)

    compute.patch(backend, {"timeout": 120}, request_id=request_id())

    assert limiter_sleeps == pytest.approx([1.0, 2.0])


def test_a_patch_after_a_token_taken_takes_none_for_its_first_attempt(fake: ComputeFake) -> None:
    fake.add_backend(NAME, timeout=30)
    writes = CountingLimiter()
    compute = compute_for(fake, limiter=writes)
    backend = compute.get(REF)
    assert backend is not None
    compute.take_write_token()
    assert writes.taken == 1
    fake.inject("PATCH", NAME, 503)
    compute.patch(backend, {"timeout": 120}, request_id=request_id(), token_taken=True)
    assert writes.taken == 2  # the retry takes its own
    assert [c.status for c in fake.calls if c.method == "PATCH"] == [503, 200]


def test_reads_take_read_tokens_and_writes_take_write_tokens(clock: FakeClock) -> None:
    with ComputeFake(PROJECT, op_delay=10.0, wait_max=0.001, clock=clock, page_cap=2) as fake:
        fake.add_backend(NAME, timeout=30)
        fake.add_backend("k8s-be-30481--0e20ca25204f6195")
        fake.add_backend("k8s-be-30482--0e20ca25204f6195")
        reads, writes = CountingLimiter(), CountingLimiter()
        compute = compute_for(
            fake,
            limiter=writes,
            read_limiter=reads,
            clock=clock,
            on_call=on_wait(lambda: clock.advance(10)),
        )

        backend = compute.get(REF)  # 1 read
        assert (reads.taken, writes.taken) == (1, 0)
        fake.inject("GET", NAME, 503)
        compute.get(REF)  # 2 attempts: 2 reads
        assert (reads.taken, writes.taken) == (3, 0)
        assert len(list(compute.backends("global"))) == 3  # 2 pages: 2 reads
        assert (reads.taken, writes.taken) == (5, 0)
        assert backend is not None
        fake.inject("PATCH", NAME, 503)
        operation = compute.patch(backend, {"timeout": 60}, request_id=request_id())  # 2 writes
        assert (reads.taken, writes.taken) == (5, 2)
        compute.wait(REF, operation)  # RUNNING once, then DONE: 2 reads

        assert len(waits(fake)) == 2
        assert (reads.taken, writes.taken) == (7, 2)


# --- one Compute, many threads ---------------------------------------------------


def test_one_compute_serves_eight_threads_at_once(slow_fake: ComputeFake) -> None:
    threads = 8
    names = [instance_group_backend_name(31000 + i, "0e20ca25204f6195") for i in range(threads)]
    for name in names:
        slow_fake.add_backend(name, timeout=30)
    reads, writes = CountingLimiter(), CountingLimiter()
    compute = compute_for(slow_fake, limiter=writes, read_limiter=reads)
    # Which threads sent requests through which transport.
    senders: dict[int, list[int]] = collections.defaultdict(list)

    def track(transport: google_auth_httplib2.AuthorizedHttp) -> None:
        send = transport.request

        def request(*args: Any, **kwargs: Any) -> Any:
            senders[id(transport)].append(threading.get_ident())
            return send(*args, **kwargs)

        setattr(transport, "request", request)  # noqa: B010 - mypy refuses assigning a method

    builder = compute._http()  # the transport of the thread that built the Compute
    track(builder)
    together = threading.Barrier(threads)
    kinds: tuple[CallKind, ...] = ("read", "write", "wait")
    transports: dict[int, dict[CallKind, google_auth_httplib2.AuthorizedHttp]] = {}
    idents: dict[int, int] = {}
    results: dict[int, Backend | None] = {}
    failures: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            ref = BackendRef("global", names[index])
            idents[index] = threading.get_ident()
            transports[index] = {kind: compute._http(kind) for kind in kinds}
            for transport in transports[index].values():
                track(transport)
            together.wait(timeout=30)
            backend = compute.get(ref)
            assert backend is not None
            operation = compute.patch(
                backend, {"timeout": 100 + index}, request_id=request_id(index + 1)
            )
            compute.wait(ref, operation)
            assert compute._http("read") is transports[index]["read"]
            results[index] = compute.get(ref)
        except BaseException as exc:
            failures.append(exc)
            together.abort()

    workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    deadline = time.monotonic() + 30
    for w in workers:
        w.join(timeout=max(0.0, deadline - time.monotonic()))

    assert failures == []
    assert not any(w.is_alive() for w in workers)
    every = [t for own in transports.values() for t in own.values()]
    assert len({id(t) for t in every} | {id(builder)}) == 3 * threads + 1
    assert senders[id(builder)] == []
    for index, own in transports.items():
        # get and get, patch, at least one wait: all on this thread's own transports
        sent = [len(senders[id(own[kind])]) for kind in kinds]
        assert sent[0] == 2 and sent[1] == 1 and sent[2] >= 1
        assert {i for t in own.values() for i in senders[id(t)]} == {idents[index]}
    assert sum(map(len, senders.values())) == len(slow_fake.calls)
    for index, name in enumerate(names):
        after = results[index]
        assert after is not None
        assert after.timeout_sec == 100 + index == slow_fake.backend(name)["timeoutSec"]
    patches = calls_to(slow_fake, "PATCH")
    assert [c.status for c in patches] == [200] * threads
    assert {query(c, "requestId") for c in patches} == {request_id(i + 1) for i in range(threads)}
    assert len(waits(slow_fake)) >= threads
    assert writes.taken == threads
    assert reads.taken == 2 * threads + len(waits(slow_fake))


def test_socket_timeout_outlasts_an_operation_wait_on_every_thread(fake: ComputeFake) -> None:
    # operations.wait may block ~2 minutes; a shorter socket timeout turns a slow
    # but healthy operation into a retried failure. Reads and writes are answered
    # within seconds: a much shorter timeout lets a hung call go sooner.
    assert WAIT_TIMEOUT > 120
    assert OPERATION_TIMEOUT > 120
    assert max(READ_TIMEOUT, WRITE_TIMEOUT) <= 30
    compute = Compute(PROJECT, endpoint=fake.url)
    timeouts: list[float | None] = []
    other = threading.Thread(target=lambda: timeouts.append(compute._http("wait").http.timeout))
    other.start()
    other.join(timeout=30)

    assert compute._http("wait").http.timeout == WAIT_TIMEOUT
    assert timeouts == [WAIT_TIMEOUT]
    assert compute._http("read").http.timeout == READ_TIMEOUT
    assert compute._http("write").http.timeout == WRITE_TIMEOUT


def test_hung_reads_and_writes_give_up_long_before_an_operation_wait_would(
    fake: ComputeFake,
) -> None:
    fake.add_backend(NAME, timeout=30)
    usual = Compute(PROJECT, endpoint=fake.url)
    hung = Compute(
        PROJECT,
        endpoint=fake.url,
        read_timeout=0.2,
        write_timeout=0.2,
        wait_timeout=30.0,
        max_attempts=1,
    )
    backend = usual.get(REF)
    assert backend is not None
    fake.op_delay = 1.0  # the write's Operation runs for a while
    fake.latency = 1.5  # every answer comes 1.5 s late

    with pytest.raises(GcpError) as read:
        hung.get(REF)
    with pytest.raises(GcpError) as write:
        hung.patch(backend, {"timeout": 300}, request_id=request_id())
    # Sent again, the write gets its Operation back (or is accepted now); waiting
    # on that, under the long timeout, lasts however late the answer comes.
    fake.latency = 0.0
    operation = usual.patch(backend, {"timeout": 300}, request_id=request_id())
    fake.latency = 1.5
    hung.wait(REF, operation)

    assert (read.value.kind, read.value.status) == ("transient", None)
    assert (write.value.kind, write.value.status) == ("transient", None)
    assert waits(fake) and all(c.status == 200 for c in waits(fake))
    assert fake.backend(NAME)["timeoutSec"] == 300


def test_no_attempt_starts_at_or_past_the_deadline(clock: FakeClock, fake: ComputeFake) -> None:
    # Compute fails every call; each attempt takes 100 s. Six attempts would be
    # allowed, but only those that start before the deadline (220 s) are made.
    fake.add_backend(NAME, timeout=30)
    started: list[float] = []

    def attempt(method: str, status: int) -> None:
        started.append(clock())
        clock.advance(100)

    compute = Compute(
        PROJECT,
        endpoint=fake.url,
        clock=clock,
        sleep=clock.advance,  # backing off takes time too
        rng=random.Random(7),
        on_call=attempt,
    )
    fake.down()
    begun = clock()

    with pytest.raises(GcpError) as raised:
        compute.get(REF)

    assert raised.value.kind == "transient"
    assert "deadline" in raised.value.message
    assert len(started) == 3
    assert all(t < begun + DEADLINE for t in started)


def test_a_call_after_the_deadline_is_not_sent(clock: FakeClock, fake: ComputeFake) -> None:
    compute, backend = seeded(fake, [], clock=clock)
    deadline = compute.deadline()
    clock.advance(DEADLINE)

    with pytest.raises(GcpError) as raised:
        compute.patch(backend, {"timeout": 300}, request_id=request_id(), deadline=deadline)

    assert raised.value.kind == "transient" and "not sent" in raised.value.message
    assert fake.calls == []


def test_wait_stops_at_the_callers_deadline_before_the_operation_timeout(
    clock: FakeClock, timed_fake: ComputeFake
) -> None:
    compute, backend = seeded(
        timed_fake, [], clock=clock, on_call=on_wait(lambda: clock.advance(10))
    )
    deadline = clock() + 30
    operation = compute.patch(
        backend, {"timeout": 3600}, request_id=request_id(), deadline=deadline
    )

    with pytest.raises(GcpError) as raised:
        compute.wait(REF, operation, deadline=deadline)

    assert raised.value.kind == "transient" and "deadline" in raised.value.message
    assert len(waits(timed_fake)) == 3


# --- where credentials may go ----------------------------------------------------


class DefaultCredentials:
    """Stands in for google.auth.default: records calls, returns one credential."""

    def __init__(self) -> None:
        self.credentials = google.auth.credentials.AnonymousCredentials()
        self.scopes: list[Any] = []

    def __call__(self, scopes: Any = None, **kwargs: Any) -> tuple[Any, str]:
        self.scopes.append(scopes)
        return self.credentials, PROJECT


@pytest.fixture
def default_credentials(monkeypatch: pytest.MonkeyPatch) -> DefaultCredentials:
    stand_in = DefaultCredentials()
    monkeypatch.setattr(google.auth, "default", stand_in)
    return stand_in


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://example.invalid/compute/v1/",
        "https://evil.example/compute/v1/",
        "http://compute.googleapis.com/compute/v1/",
        "https://compute.googleapis.com.evil.example/compute/v1/",
        "https://googleapis.com@evil.example/compute/v1/",
    ],
)
def test_credentials_are_refused_to_an_endpoint_not_googles_without_the_flag(
    endpoint: str, default_credentials: DefaultCredentials
) -> None:
    assert not backends.is_google(endpoint)

    with pytest.raises(GcpError) as raised:
        Compute(PROJECT, endpoint=endpoint)

    assert raised.value.kind == "permission"
    assert endpoint in raised.value.message
    assert UNSAFE_FLAG in raised.value.message
    assert default_credentials.scopes == []  # not even looked up


def test_the_flag_allows_credentials_to_an_endpoint_not_googles(
    default_credentials: DefaultCredentials,
) -> None:
    compute = Compute(PROJECT, endpoint="https://evil.example/compute/v1/", unsafe_endpoint=True)

    assert compute._http().credentials is default_credentials.credentials
    assert default_credentials.scopes == [[backends.COMPUTE_SCOPE]]


@pytest.mark.parametrize("endpoint", [None, "https://compute.googleapis.com/compute/v1/"])
def test_googles_endpoint_gets_the_default_credentials(
    endpoint: str | None, default_credentials: DefaultCredentials
) -> None:
    assert backends.is_google(endpoint)

    compute = Compute(PROJECT, endpoint=endpoint)

    assert compute._http().credentials is default_credentials.credentials
    assert default_credentials.scopes == [[backends.COMPUTE_SCOPE]]


def test_missing_default_credentials_are_a_permission_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_credentials(**kwargs: Any) -> Any:
        raise google.auth.exceptions.DefaultCredentialsError("nothing here")

    monkeypatch.setattr(google.auth, "default", no_credentials)

    with pytest.raises(GcpError) as raised:
        Compute(PROJECT, endpoint="https://compute.googleapis.com/compute/v1/")

    assert raised.value.kind == "permission"
    assert "nothing here" in raised.value.message


@pytest.mark.parametrize(
    "endpoint",
    ["http://localhost:8089/compute/v1/", "http://127.0.0.1:8089/", "http://[::1]:8089/"],
)
def test_loopback_gets_anonymous_credentials(
    endpoint: str, default_credentials: DefaultCredentials
) -> None:
    compute = Compute(PROJECT, endpoint=endpoint)

    assert isinstance(compute._http().credentials, google.auth.credentials.AnonymousCredentials)
    assert compute._http().credentials is not default_credentials.credentials
    assert default_credentials.scopes == []


def test_requests_to_the_loopback_fake_carry_no_authorization(
    fake: ComputeFake, default_credentials: DefaultCredentials
) -> None:
    fake.add_backend(NAME)

    assert compute_for(fake).get(REF) is not None

    assert [c.auth for c in fake.calls] == [None]
    assert default_credentials.scopes == []
