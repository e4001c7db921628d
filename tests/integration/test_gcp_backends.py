"""The Compute client against the Compute fake, through google-api-python-client.

Covers reads, the PATCH/wait/412 cycle, retries and error kinds, the write
limiter and the per-thread pool. Backoff sleeps are recorded, never slept.
"""

from __future__ import annotations

import collections
import logging
import random
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from controller.gcp.backends import HTTP_TIMEOUT, Compute, ComputePool, GcpError, WriteLimiter
from controller.model import Backend, BackendRef
from tests.fakes.compute import Call, ComputeFake
from tests.wait import eventually

PROJECT = "demo-project"
REGION = "europe-west1"
NAME = "k8s-be-30480--0e20ca25204f6195"


@pytest.fixture
def fake() -> Iterator[ComputeFake]:
    server = ComputeFake(PROJECT).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def slow_fake() -> Iterator[ComputeFake]:
    """Operations finish only after several short server-side waits."""
    server = ComputeFake(PROJECT, op_delay=0.3, wait_max=0.05).start()
    try:
        yield server
    finally:
        server.stop()


class RequestIds:
    """Deterministic, valid (non-zero) UUIDs, remembering what was handed out."""

    def __init__(self) -> None:
        self.issued: list[str] = []

    def __call__(self) -> str:
        value = str(uuid.UUID(int=len(self.issued) + 1))
        self.issued.append(value)
        return value


class Calls(collections.Counter[tuple[str, int]]):
    """What a Compute reported to on_call: (method, status) -> count."""

    def __call__(self, method: str, status: int) -> None:
        self[(method, status)] += 1


def compute_for(server: ComputeFake, sleeps: list[float] | None = None, **kwargs: Any) -> Compute:
    recorder = sleeps if sleeps is not None else []
    return Compute(
        PROJECT, endpoint=server.url, sleep=recorder.append, rng=random.Random(7), **kwargs
    )


def seeded(server: ComputeFake, sleeps: list[float]) -> tuple[Compute, Backend]:
    """NAME at 30 s in the fake, a Compute recording its sleeps, and NAME as read."""
    server.add_backend(NAME, timeout=30)
    compute = compute_for(server, sleeps)
    backend = compute.get(BackendRef("global", NAME))
    assert backend is not None
    return compute, backend


def query(call: Call, key: str) -> str | None:
    return call.query.get(key)


def calls_to(server: ComputeFake, method: str, path_contains: str = "") -> list[Call]:
    return [c for c in server.calls if c.method == method and path_contains in c.path]


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

    backend = compute_for(fake).get(BackendRef("global", NAME))

    assert backend == Backend(
        ref=BackendRef("global", NAME),
        timeout_sec=30,
        fingerprint=fake.backend(NAME)["fingerprint"],
        service="shop/web",
    )


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

    backend = compute_for(fake).get(BackendRef("global", NAME))

    assert backend is not None
    assert backend.service is None


def test_list_returns_every_backend_across_pages(fake: ComputeFake) -> None:
    names = {f"k8s-be-{30000 + i}--0e20ca25204f6195" for i in range(1203)}
    for name in names:
        fake.add_backend(name)
    fake.add_backend("regional-one", region=REGION)

    found = compute_for(fake).list("global")

    assert set(found) == names
    assert all(b.ref == BackendRef("global", n) for n, b in found.items())
    pages = calls_to(fake, "GET", "/global/backendServices")
    assert len(pages) == 3
    assert {query(c, "maxResults") for c in pages} == {"500"}


def test_list_of_a_region_returns_only_its_backends(fake: ComputeFake) -> None:
    fake.add_backend("global-one")
    fake.add_backend("regional-one", region=REGION)

    found = compute_for(fake).list(REGION)

    assert list(found) == ["regional-one"]
    assert found["regional-one"].ref == BackendRef(REGION, "regional-one")


# --- writes ------------------------------------------------------------------


def test_set_timeout_patches_with_fingerprint_and_request_id_and_waits_until_done(
    slow_fake: ComputeFake,
) -> None:
    slow_fake.add_backend(NAME, timeout=30)
    ids = RequestIds()
    compute = compute_for(slow_fake, request_id=ids)
    before = compute.get(BackendRef("global", NAME))
    assert before is not None

    after = compute.set_timeout(before, 3600)

    (patch,) = calls_to(slow_fake, "PATCH")
    assert patch.body == {"timeoutSec": 3600, "fingerprint": before.fingerprint}
    assert query(patch, "requestId") == ids.issued[0]
    assert len(calls_to(slow_fake, "POST", "/global/operations/")) >= 2
    assert slow_fake.backend(NAME)["timeoutSec"] == 3600
    assert after.timeout_sec == 3600
    assert after.fingerprint == slow_fake.backend(NAME)["fingerprint"] != before.fingerprint


def test_set_timeout_makes_no_call_when_value_already_matches(fake: ComputeFake) -> None:
    fake.add_backend(NAME, timeout=3600)
    compute = compute_for(fake)
    backend = compute.get(BackendRef("global", NAME))
    assert backend is not None
    fake.clear_calls()

    assert compute.set_timeout(backend, 3600) is backend

    assert fake.count("PATCH") == 0
    assert fake.calls == []


def test_stale_fingerprint_gets_412_then_rereads_and_patches_with_new_request_id(
    fake: ComputeFake,
) -> None:
    fake.add_backend(NAME, timeout=30)
    ids = RequestIds()
    sleeps: list[float] = []
    compute = compute_for(fake, sleeps, request_id=ids)
    backend = compute.get(BackendRef("global", NAME))
    assert backend is not None
    fake.inject("PATCH", NAME, 412, reason="conditionNotMet")
    fake.clear_calls()

    after = compute.set_timeout(backend, 600)

    patches = calls_to(fake, "PATCH")
    assert [c.status for c in patches] == [412, 200]
    assert [query(c, "requestId") for c in patches] == ids.issued
    assert len(set(ids.issued)) == 2
    assert fake.count("GET", f"/backendServices/{NAME}") >= 1
    assert after.timeout_sec == 600 == fake.backend(NAME)["timeoutSec"]
    assert sleeps == []


def test_stale_fingerprint_with_value_already_set_needs_no_second_patch(
    fake: ComputeFake,
) -> None:
    fake.add_backend(NAME, timeout=30)
    compute = compute_for(fake)
    backend = compute.get(BackendRef("global", NAME))
    assert backend is not None
    fake.set_timeout_out_of_band(NAME, 600)
    fake.clear_calls()

    after = compute.set_timeout(backend, 600)

    assert [c.status for c in calls_to(fake, "PATCH")] == [412]
    assert after.timeout_sec == 600
    assert after.fingerprint == fake.backend(NAME)["fingerprint"]


def test_server_errors_are_retried_with_the_same_request_id(fake: ComputeFake) -> None:
    fake.add_backend(NAME, timeout=30)
    ids = RequestIds()
    sleeps: list[float] = []
    calls = Calls()
    compute = compute_for(fake, sleeps, request_id=ids, on_call=calls)
    backend = compute.get(BackendRef("global", NAME))
    assert backend is not None
    fake.inject("PATCH", NAME, 503, times=2)
    fake.clear_calls()

    after = compute.set_timeout(backend, 120)

    patches = calls_to(fake, "PATCH")
    assert [c.status for c in patches] == [503, 503, 200]
    assert len(ids.issued) == 1
    assert {query(c, "requestId") for c in patches} == {ids.issued[0]}
    assert len(sleeps) == 2
    assert_backoff(sleeps)
    assert after.timeout_sec == 120
    assert calls[("backendServices.patch", 503)] == 2
    assert calls[("backendServices.patch", 200)] == 1


def test_timed_out_patch_is_retried_with_the_same_request_id_and_applied_once(
    fake: ComputeFake,
) -> None:
    fake.add_backend(NAME, timeout=30)
    ids = RequestIds()
    sleeps: list[float] = []

    def backoff(delay: float) -> None:
        sleeps.append(delay)
        fake.latency = 0.0  # the network recovers while we back off

    compute = Compute(
        PROJECT,
        endpoint=fake.url,
        sleep=backoff,
        rng=random.Random(7),
        request_id=ids,
        http_timeout=0.2,
        on_call=(calls := Calls()),
    )
    backend = compute.get(BackendRef("global", NAME))
    assert backend is not None
    fake.latency = 1.0

    after = compute.set_timeout(backend, 300)

    patches = calls_to(fake, "PATCH")
    assert len(patches) == 2
    assert {query(c, "requestId") for c in patches} == {ids.issued[0]}
    assert len(ids.issued) == 1
    assert calls[("backendServices.patch", 0)] == 1
    assert len(sleeps) == 1
    assert after.timeout_sec == 300


def test_write_in_flight_gets_resource_not_ready_then_backs_off_and_wins(
    slow_fake: ComputeFake,
) -> None:
    slow_fake.add_backend(NAME, timeout=30)
    ref = BackendRef("global", NAME)
    other = compute_for(slow_fake)
    sleeps: list[float] = []

    def backoff(delay: float) -> None:
        sleeps.append(delay)
        eventually(lambda: slow_fake.backend(NAME)["timeoutSec"] == 600)

    ours = Compute(PROJECT, endpoint=slow_fake.url, sleep=backoff, rng=random.Random(7))
    backend = ours.get(ref)
    assert backend is not None
    other_backend = other.get(ref)
    assert other_backend is not None
    # Someone else's write is accepted and stays RUNNING for op_delay.
    other_write = threading.Thread(target=other.set_timeout, args=(other_backend, 600))
    other_write.start()
    eventually(lambda: slow_fake.count("PATCH") == 1)

    after = ours.set_timeout(backend, 900)
    other_write.join(timeout=10)

    statuses = [c.status for c in calls_to(slow_fake, "PATCH")]
    assert statuses == [200, 400, 412, 200]
    assert len(sleeps) == 1
    assert after.timeout_sec == 900 == slow_fake.backend(NAME)["timeoutSec"]


def test_rate_limit_403_backs_off_then_succeeds(fake: ComputeFake) -> None:
    sleeps: list[float] = []
    compute, backend = seeded(fake, sleeps)
    fake.inject("PATCH", NAME, 403, reason="rateLimitExceeded")

    after = compute.set_timeout(backend, 90)

    assert [c.status for c in calls_to(fake, "PATCH")] == [403, 200]
    assert len(sleeps) == 1
    assert_backoff(sleeps)
    assert after.timeout_sec == 90


def test_permission_403_raises_at_once_without_retry(fake: ComputeFake) -> None:
    sleeps: list[float] = []
    compute, backend = seeded(fake, sleeps)
    fake.deny(NAME)
    fake.clear_calls()

    with pytest.raises(GcpError) as raised:
        compute.set_timeout(backend, 90)

    assert raised.value.kind == "permission"
    assert raised.value.status == 403
    assert fake.count("PATCH") == 1
    assert sleeps == []
    assert fake.backend(NAME)["timeoutSec"] == 30


def test_bad_request_400_raises_invalid_at_once(fake: ComputeFake) -> None:
    sleeps: list[float] = []
    compute, backend = seeded(fake, sleeps)
    fake.clear_calls()

    with pytest.raises(GcpError) as raised:
        compute.set_timeout(backend, 0)

    assert raised.value.kind == "invalid"
    assert raised.value.status == 400
    assert fake.count("PATCH") == 1
    assert sleeps == []


def test_set_timeout_of_deleted_backend_raises_not_found(fake: ComputeFake) -> None:
    sleeps: list[float] = []
    compute, backend = seeded(fake, sleeps)
    fake.delete_backend(NAME)
    fake.clear_calls()

    with pytest.raises(GcpError) as raised:
        compute.set_timeout(backend, 90)

    assert raised.value.kind == "not_found"
    assert fake.count("PATCH") == 1
    assert sleeps == []


def test_failed_operation_raises_operation_error(fake: ComputeFake) -> None:
    fake.add_backend(NAME, timeout=30)
    compute = compute_for(fake)
    backend = compute.get(BackendRef("global", NAME))
    assert backend is not None
    fake.fail_next_operation(code="RESOURCE_OPERATION_RATE_EXCEEDED", message="try later")

    with pytest.raises(GcpError) as raised:
        compute.set_timeout(backend, 90)

    assert raised.value.kind == "operation"
    assert raised.value.reason == "RESOURCE_OPERATION_RATE_EXCEEDED"
    assert "try later" in str(raised.value)


def test_regional_backend_uses_only_regional_paths(slow_fake: ComputeFake) -> None:
    slow_fake.add_backend(NAME, region=REGION, timeout=30)
    calls = Calls()
    compute = compute_for(slow_fake, on_call=calls)
    ref = BackendRef(REGION, NAME)

    backend = compute.get(ref)
    assert backend is not None
    after = compute.set_timeout(backend, 1800)

    assert after.ref == ref
    assert after.timeout_sec == 1800
    assert slow_fake.backend(NAME, region=REGION)["timeoutSec"] == 1800
    paths = [c.path for c in slow_fake.calls]
    assert paths
    assert all(f"/regions/{REGION}/" in p and "/global/" not in p for p in paths)
    assert any(f"/regions/{REGION}/operations/" in p for p in paths)
    assert set(calls) <= {
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
        compute.get(BackendRef("global", NAME))

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
    compute = Compute(
        PROJECT,
        endpoint=f"http://127.0.0.1:{port}/compute/v1/",
        sleep=sleeps.append,
        rng=random.Random(7),
        max_attempts=4,
        on_call=(calls := Calls()),
    )

    with pytest.raises(GcpError) as raised:
        compute.get(BackendRef("global", NAME))

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

    assert compute.get(BackendRef("global", NAME)) is not None
    assert len(sleeps) == 7
    assert max(sleeps) <= 4.0


def test_every_call_is_counted_and_logged_at_debug(
    fake: ComputeFake, caplog: pytest.LogCaptureFixture
) -> None:
    fake.add_backend(NAME)
    calls = Calls()
    compute = compute_for(fake, on_call=calls)
    caplog.set_level(logging.DEBUG, logger="controller.gcp.backends")

    compute.get(BackendRef("global", NAME))
    compute.get(BackendRef("global", "missing"))

    assert calls == {
        ("backendServices.get", 200): 1,
        ("backendServices.get", 404): 1,
    }
    lines = [r.getMessage() for r in caplog.records]
    assert any(f"backendServices.get global/{NAME}" in m and "-> 200" in m for m in lines)
    assert any("backendServices.get global/missing" in m and "-> 404" in m for m in lines)


def test_gcp_error_text_names_method_backend_status_and_reason(fake: ComputeFake) -> None:
    fake.add_backend(NAME)
    compute = compute_for(fake)
    backend = compute.get(BackendRef("global", NAME))
    assert backend is not None
    fake.deny(NAME)

    with pytest.raises(GcpError) as raised:
        compute.set_timeout(backend, 90)

    text = str(raised.value)
    assert f"backendServices.patch global/{NAME}" in text
    assert "403" in text
    assert raised.value.message in text


# --- write limiter -----------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


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

    clock.now += 60.0
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
    backend = compute.get(BackendRef("global", NAME))
    assert backend is not None
    fake.inject("PATCH", NAME, 503, times=2)

    compute.set_timeout(backend, 120)

    assert limiter_sleeps == pytest.approx([1.0, 2.0])


# --- pool --------------------------------------------------------------------


def test_pool_gives_each_thread_its_own_compute(fake: ComputeFake) -> None:
    pool = ComputePool(lambda: compute_for(fake))
    threads = 3
    together = threading.Barrier(threads)
    seen: dict[int, tuple[Compute, Compute]] = {}

    def worker(index: int) -> None:
        first = pool.get()
        together.wait(timeout=30)
        seen[index] = (first, pool.get())

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=30)

    assert len(seen) == threads
    assert all(first is again for first, again in seen.values())
    assert len({id(first) for first, _ in seen.values()}) == threads


def test_socket_timeout_outlasts_an_operation_wait(fake: ComputeFake) -> None:
    # operations.wait may block ~2 minutes; a shorter socket timeout turns a slow
    # but healthy operation into a retried failure.
    assert HTTP_TIMEOUT > 120
    compute = Compute(PROJECT, endpoint=fake.url)
    assert compute._api._http.http.timeout == HTTP_TIMEOUT
