"""Whatever breaks, the controller keeps going, converges to what the annotations ask,
loses nothing, and says so in a few log lines.

Each scenario runs ``python -m controller`` (as the Deployment does) against a real
apiserver, with annotations churning on Ingresses that share backends, then ends with
the check in ``survival.py``. A scenario that restarts the apiserver or compacts its
etcd has one of its own; the others share the session's, each in its own namespace
behind its own proxies, Compute fake and Lease. Each prints one row: time to converge
once the faults end, PATCHes accepted (and sent) against changes of a wanted value, and
log lines at WARNING and above. Times are printed, never asserted: the machine is shared.
Every scenario runs for minutes, mostly waiting: under xdist they run side by side.
"""

from __future__ import annotations

import contextlib
import functools
import random
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from controller.kube.client import KubeError
from tests.conftest import create_namespace, table_row
from tests.fakes.compute import ComputeFake
from tests.ground.controlplane import ControlPlane
from tests.ground.proxy import Proxy
from tests.integration.survival import Controller, Fleet, Row, kubeconfig_via, running
from tests.integration.world import World, strict_fake
from tests.wait import eventually

pytestmark = pytest.mark.long
TABLE = "survival scenarios"
HEADER = (
    "scenario | faults | converged after | PATCHes accepted (sent) / needed | "
    "WARNING+ lines | notes"
)
LEASE = "gke-ingress-timeout"
INGRESSES = "/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses"
WATCH_READ_TIMEOUT = 100.0  # the informer's read timeout (controller/kube/watch.py)
RENEW_DEADLINE = 10.0  # the elector's default


def hold(seconds: float) -> None:
    """Let a scenario's timeline run on (faults last this long); not a wait for a result."""
    threading.Event().wait(seconds)


class Ground:
    def __init__(
        self, plane: ControlPlane, folder: Path, fake: ComputeFake, item: pytest.Item
    ) -> None:
        self.plane, self.folder, self.fake, self.item = plane, folder, fake, item
        self.world = World(plane, create_namespace(plane, "surv"), fake)
        self.controllers: list[Controller] = []
        self.proxies: list[Proxy] = []
        self._churn: tuple[threading.Event, threading.Thread] | None = None

    def fleet(self, ingresses: int = 32, services: int = 16) -> Fleet:
        return Fleet(self.world, ingresses, services)

    def churn(self, fleet: Fleet, *, seed: int, pause: float = 0.05) -> None:
        """Start changing annotations at random, until ``calm()``."""
        self._churn = running(lambda stop: fleet.churn(stop, random.Random(seed), pause))

    def calm(self) -> None:
        if self._churn is not None:
            stop, thread = self._churn
            stop.set()
            thread.join()
            self._churn = None

    def controller(self, **options: Any) -> Controller:
        ctl = Controller(self.world, **options)
        self.controllers.append(ctl)
        return ctl

    def proxy(self, port: int) -> Proxy:
        proxy = Proxy(port).start()
        self.proxies.append(proxy)
        return proxy

    def kube_proxy(self) -> tuple[Proxy, str]:
        """A proxy in front of the apiserver, and a kubeconfig that goes through it."""
        port = urlsplit(self.plane.url).port
        assert port is not None
        proxy = self.proxy(port)
        return proxy, kubeconfig_via(self.world, proxy.port, self.folder)

    def finish(self, row: Row, fleet: Fleet, *alive: Controller) -> None:
        """The check every scenario ends with; the row goes to the table."""
        fleet.reread()
        took = fleet.converge(timeout=180)
        row.converge_s = row.converge_s or took  # a scenario may have timed its own
        for ctl in alive:
            assert ctl.alive(), f"{ctl.name} died: {ctl.loud()[-5:]}"
        fleet.clear_all(timeout=180)
        for ctl in alive:
            assert ctl.alive(), f"{ctl.name} died: {ctl.loud()[-5:]}"
        row.patches, row.attempts = fleet.patches()
        row.needed = fleet.needed
        loud = [line for ctl in self.controllers for line in ctl.loud()]
        row.warnings = len(loud)
        table_row(self.item, TABLE, HEADER, row.line())
        print(row.line(), *loud, sep="\n")
        assert not [line for line in loud if "[traceback]" in line or line.startswith("RAW")]
        assert not [line for line in loud if line.startswith(("ERROR", "CRITICAL"))]

    def close(self) -> None:
        self.calm()
        for ctl in self.controllers:
            ctl.stop()
        for proxy in self.proxies:
            proxy.close()
        # The controllers of later tests on this apiserver watch every namespace's Ingresses.
        self.world.kube.delete(INGRESSES.format(ns=self.world.ns))


@contextlib.contextmanager
def grounded(plane: ControlPlane, folder: Path, item: pytest.Item) -> Iterator[Ground]:
    # The fake as strict as GCP, as every controller-level test has it, with no token
    # (a process sends none to a loopback endpoint), and operations long enough for a
    # kill or an outage to land in the middle of one (a wait still returns before DONE).
    fake = strict_fake(token=None)
    fake.op_delay, fake.wait_max = 0.2, 0.1
    with fake:
        g = Ground(plane, folder, fake, item)
        try:
            yield g
        finally:
            g.close()


@pytest.fixture
def ground(apiserver: ControlPlane, tmp_path: Path, request: pytest.FixtureRequest):
    """On the session's apiserver, shared with the tests that run before and after."""
    with grounded(apiserver, tmp_path, request.node) as g:
        yield g


@pytest.fixture
def own_ground(apiserver_factory, tmp_path: Path, request: pytest.FixtureRequest):
    """On an apiserver of its own: the scenario restarts it and compacts its etcd."""
    with grounded(apiserver_factory(), tmp_path, request.node) as g:
        yield g


def holder(world: World) -> str:
    """Who holds the Lease; "" before anyone created it."""
    try:
        lease = world.kube.get(f"/apis/coordination.k8s.io/v1/namespaces/{world.ns}/leases/{LEASE}")
    except KubeError as exc:
        if exc.status == 404:
            return ""
        raise
    return str(lease["spec"].get("holderIdentity") or "")


@pytest.mark.long(minutes=3)
def test_apiserver_restarted_five_times_during_churn(own_ground: Ground):
    ground = own_ground
    fleet = ground.fleet()
    ctl = ground.controller()
    eventually(ctl.ready, timeout=60, what="ready")
    ground.churn(fleet, seed=1)
    for _ in range(5):
        hold(4)
        ground.plane.stop_apiserver()
        hold(3)
        ground.plane.start_apiserver()
    hold(4)
    ground.calm()
    row = Row("1. apiserver restarted 5 times", f"5 restarts during churn, {fleet.writes} writes")
    ground.finish(row, fleet, ctl)


@pytest.mark.long(minutes=3)
def test_watch_connections_reset_every_few_seconds_for_two_minutes(ground: Ground):
    fleet = ground.fleet()
    proxy, kubeconfig = ground.kube_proxy()
    ctl = ground.controller(kubeconfig=kubeconfig)
    eventually(ctl.ready, timeout=60, what="ready")
    ground.churn(fleet, seed=2)
    end = time.monotonic() + 120
    resets = 0
    while time.monotonic() < end:
        hold(3)
        proxy.reset()
        resets += 1
    ground.calm()
    row = Row("2. connections reset for 2 min", f"{resets} resets, {fleet.writes} writes")
    ground.finish(row, fleet, ctl)


def test_a_silent_apiserver_connection_is_detected_and_ridden_out(ground: Ground):
    fleet = ground.fleet()
    proxy, kubeconfig = ground.kube_proxy()
    ctl = ground.controller(kubeconfig=kubeconfig)
    eventually(ctl.ready, timeout=60, what="ready")
    ground.churn(fleet, seed=3)
    hold(5)
    cut = time.monotonic()
    proxy.cut("silent")
    noticed = eventually(
        lambda: ctl.said("no renewal for") or ctl.said("the apiserver is failing"),
        timeout=WATCH_READ_TIMEOUT + 30,
        what="the silence noticed",
    )
    detected = noticed - cut
    hold(20)  # past the lease's duration: the term ends, and campaigning goes on
    proxy.heal()
    hold(5)
    ground.calm()
    row = Row("3. apiserver connection silent", f"silent 20 s+, {fleet.writes} writes")
    row.notes.append(
        f"detected after {detected:.1f} s (renew deadline {RENEW_DEADLINE:.0f} s, "
        f"watch read timeout {WATCH_READ_TIMEOUT:.0f} s)"
    )
    ground.finish(row, fleet, ctl)
    assert ctl.said("lost the Lease") is not None  # the term ended, the process did not


def test_a_compacted_etcd_behind_a_cut_off_watch_means_one_list(own_ground: Ground):
    ground = own_ground
    fleet = ground.fleet()
    proxy, kubeconfig = ground.kube_proxy()
    # Without leader election: a cut longer than the renew deadline would end the
    # term, and a new term lists anyway; this is about the watch's own recovery.
    ctl = ground.controller(kubeconfig=kubeconfig, leader_elect=False)
    eventually(ctl.ready, timeout=60, what="ready")
    lists = ctl_lists(ctl)
    ground.churn(fleet, seed=4)
    hold(3)
    proxy.cut("refuse")
    hold(2)
    # While it is cut off: the apiserver restarts (its watch cache starts afresh)
    # and etcd forgets every revision up to now.
    ground.plane.stop_apiserver()
    ground.plane.start_apiserver()
    hold(2)
    revision = ground.plane.compact()
    proxy.heal()
    eventually(lambda: ctl_lists(ctl) > lists, timeout=60, what="listed again")
    hold(5)
    ground.calm()
    row = Row("4. etcd compacted while cut off", f"compacted at {revision}, {fleet.writes} writes")
    relists = ctl_lists(ctl) - lists
    row.notes.append(f"{relists} LIST after the 410")
    ground.finish(row, fleet, ctl)
    assert relists == 1
    assert ctl_lists(ctl) - lists == 1  # and none since
    assert ctl.said("listing again") is not None  # the watch was told 410 Gone


def ctl_lists(ctl: Controller) -> int:
    return int(ctl_metric(ctl, "gke_ingress_timeout_ingress_lists_total"))


def ctl_metric(ctl: Controller, name: str) -> float:
    text = requests.get(f"http://127.0.0.1:{ctl.port}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


@pytest.mark.long(minutes=3)
def test_compute_down_then_flaky_loses_nothing(ground: Ground):
    fleet = ground.fleet()
    ctl = ground.controller()
    eventually(ctl.ready, timeout=60, what="ready")
    ground.churn(fleet, seed=5, pause=0.2)
    hold(5)
    rss_before = ctl.rss_kib()
    down = time.monotonic()
    ground.fake.down()
    hold(60)
    up = time.monotonic()
    ground.fake.up()
    ground.fake.flaky(0.3, seed=5)
    hold(60)
    ground.fake.flaky(0)
    ground.calm()
    rss_after = ctl.rss_kib()
    failed = sum(1 for c in ground.fake.calls if c.status >= 400 and c.status != 412)
    row = Row(
        "5. Compute down 60 s, 30 % errors 60 s", f"{failed} refused calls, {fleet.writes} writes"
    )
    row.notes.append(f"RSS {rss_before // 1024} -> {rss_after // 1024} MiB")
    while_down = [c for c in ground.fake.calls if down <= c.at < up]
    row.notes.append(
        f"{len(while_down)} calls to Compute in the 60 s it was down, "
        f"{len({c.path for c in while_down})} resources"
    )
    ground.finish(row, fleet, ctl)
    assert rss_after - rss_before < 32 * 1024, (rss_before, rss_after)
    assert ctl.said("Compute is failing") is not None
    assert ctl.said("Compute answers again") is not None


def test_the_leader_killed_mid_operation_hands_over_to_one_writer(ground: Ground):
    fleet = ground.fleet()
    port = urlsplit(ground.fake.url).port
    assert port is not None
    via_a, via_b = ground.proxy(port), ground.proxy(port)
    a = ground.controller(
        name="ctl-a", compute=ground.fake.url.replace(f":{port}/", f":{via_a.port}/")
    )
    eventually(ctl_ready_and_leading(a, ground.world), timeout=60, what="a leads")
    b = ground.controller(
        name="ctl-b", compute=ground.fake.url.replace(f":{port}/", f":{via_b.port}/")
    )
    eventually(b.ready, timeout=60, what="b stands by")
    ground.churn(fleet, seed=6)
    ground.fake.op_delay = 2.0
    hold(3)
    eventually(lambda: ground.fake.pending_operations() > 0, timeout=30, what="an op in flight")
    killed = time.monotonic()
    a.signal(signal.SIGKILL)
    a.proc.wait()
    eventually(lambda: holder(ground.world).startswith("ctl-b-"), timeout=60, what="b leads")
    took_over = time.monotonic() - killed
    ground.fake.op_delay = 0.2
    hold(5)
    ground.calm()
    row = Row("6. leader SIGKILLed mid-operation", f"2 replicas, {fleet.writes} writes")
    row.notes.append(f"takeover {took_over:.1f} s after the kill")
    ground.controllers.remove(a)  # it was killed on purpose
    ground.finish(row, fleet, b)
    writers = writer_sequence(ground.fake, {"a": via_a, "b": via_b})
    assert writers == ["a", "b"], writers  # one writer at a time: a, then b, never again a
    first_b = next(c.at for c in ground.fake.calls if c.peer in via_b.upstream_ports)
    assert first_b > killed


def ctl_ready_and_leading(ctl: Controller, world: World) -> Any:
    return lambda: ctl.ready() and holder(world).startswith(ctl.name + "-")


def writer_sequence(fake: ComputeFake, proxies: dict[str, Proxy]) -> list[str]:
    """Who sent the PATCHes, in order, with repeats folded: ["a", "b"] is a, then b."""
    seq: list[str] = []
    for call in fake.calls:
        if call.method != "PATCH":
            continue
        who = next((n for n, p in proxies.items() if call.peer in p.upstream_ports), "?")
        if not seq or seq[-1] != who:
            seq.append(who)
    return seq


def test_sigterm_mid_operation_finishes_the_work_and_hands_over(ground: Ground):
    fleet = ground.fleet()
    a = ground.controller(name="ctl-a")
    eventually(ctl_ready_and_leading(a, ground.world), timeout=60, what="a leads")
    b = ground.controller(name="ctl-b")
    eventually(b.ready, timeout=60, what="b stands by")
    ground.churn(fleet, seed=7)
    ground.fake.op_delay = 4.0
    hold(3)
    eventually(lambda: ground.fake.pending_operations() > 0, timeout=30, what="an op in flight")
    asked = time.monotonic()
    a.signal(signal.SIGTERM)
    code = a.proc.wait(timeout=490)  # the Deployment's terminationGracePeriodSeconds
    stopped = time.monotonic() - asked
    assert code == 0
    assert a.said("released the lease") is not None
    eventually(lambda: holder(ground.world).startswith("ctl-b-"), timeout=30, what="b leads")
    # Now the same past the grace period: b is killed while it waits on an operation.
    hold(3)
    eventually(lambda: ground.fake.pending_operations() > 0, timeout=30, what="an op in flight")
    b.signal(signal.SIGTERM)
    hold(1)  # a grace period far too short
    b.signal(signal.SIGKILL)
    b.proc.wait()
    c = ground.controller(name="ctl-c")
    ground.fake.op_delay = 0.2
    hold(5)
    ground.calm()
    row = Row("7. SIGTERM mid-operation", f"then SIGKILL 1 s after SIGTERM, {fleet.writes} writes")
    row.notes.append(f"stopped {stopped:.1f} s after SIGTERM, exit 0, Lease released")
    ground.controllers.remove(b)  # killed on purpose
    ground.finish(row, fleet, c)


# The default write rate. At 5 a second the controller writes more often, so each
# Ingress is told more (TimeoutApplied, SharedBackendConflict) and can spend the
# per-object Event budget (a burst of 25, then one every 5 min) before its last
# InvalidTimeout, which then waits past this test's patience: a run seen failing so.
WRITE_RATE_8 = 1
INVALID = [
    "-5", "0", "abc", "1.5h", "", " 60", "86401", "99999999999999", "1h 30m", "١٢٣",
    "0x10", "1e3", "60S", "∞", "x" * 4096, "3600\n", "null", "[60]",
]  # fmt: skip


@pytest.mark.long(minutes=6)  # the longest: started before every other test
def test_ten_thousand_random_values_across_two_hundred_ingresses(ground: Ground):
    fleet = ground.fleet(ingresses=200, services=100)
    ctl = ground.controller(extra=[f"--write-rate={WRITE_RATE_8}"])
    eventually(ctl.ready, timeout=60, what="ready")
    rng = random.Random(8)
    names = sorted(fleet.routes)
    plan = []
    for _ in range(10_000):
        name = rng.choice(names)
        if rng.random() < 0.3:
            plan.append((name, rng.choice(INVALID)))
        else:
            plan.append(
                (name, rng.choice([f"{rng.randrange(1, 86401)}", f"{rng.randrange(1, 24)}h"]))
            )
    invalid = sum(1 for _, v in plan if v in INVALID)
    lock = threading.Lock()

    def write(stop: threading.Event) -> None:
        while not stop.is_set():
            with lock:
                if not plan:
                    return
                name, value = plan.pop()
            fleet.set(name, value)

    writers = [running(write) for _ in range(4)]
    for _, thread in writers:
        thread.join()
    written = time.monotonic()
    # The flood leaves a backlog; an Ingress's report waits in line behind it.
    depth = "gke_ingress_timeout_queue_depth"
    eventually(lambda: ctl_metric(ctl, depth) == 0, timeout=600, what="the backlog worked off")
    drained = time.monotonic() - written
    # Every Ingress left with a value the controller must refuse says so in an Event.
    refused = sorted(n for n in names if fleet.raw(n) in INVALID)
    for name in refused:  # generous: the Events go out through a queue of their own
        eventually(
            lambda: ground.world.events(name, "InvalidTimeout"),  # noqa: B023
            timeout=180,
            what=f"an InvalidTimeout Event on {name}, left with {fleet.raw(name)!r}",
        )
    events = [e for n in names for e in ground.world.events(n, "InvalidTimeout")]
    occurrences = sum(
        int(e.get("count") or (e.get("series") or {}).get("count") or 1) for e in events
    )
    # Each Ingress then ends with a value the test knows; then 20 of them get a wrong
    # one, which must leave what was applied, and say why.
    final = {name: rng.randrange(31, 7200) for name in names}
    for name, seconds in final.items():
        fleet.set(name, seconds)
    settled = fleet.converge(timeout=300)
    wrong = names[:20]
    for name in wrong:
        fleet.set(name, "ten minutes")
    for name in wrong:
        eventually(lambda: ground.world.events(name, "InvalidTimeout"), timeout=60)  # noqa: B023
    assert fleet.differences() == []  # what was applied stays
    row = Row("8. 10,000 random values, 200 Ingresses", f"{invalid} invalid among them")
    row.notes.append(f"--write-rate {WRITE_RATE_8}")
    row.converge_s = settled  # from the last of the 200 final values
    row.notes.append(f"the flood's backlog worked off {drained:.1f} s after its last write")
    row.notes.append(
        f"{len(refused)} Ingresses left with a refused value, each with its Event; "
        f"{len(events)} InvalidTimeout Events ({occurrences} occurrences) in all"
    )
    ground.finish(row, fleet, ctl)


def test_events_waiting_when_the_apiserver_goes_outlive_the_lost_lease(own_ground: Ground):
    # TimeoutApplied Events wait behind a backlog of Warnings in their namespace's lane
    # when the apiserver goes away for longer than the renew deadline: the term ends
    # (the Lease is lost), and when the apiserver is back every one of them is posted,
    # once. A new term would not tell them again: the timeouts are right by then.
    ground = own_ground  # it stops the apiserver: one of its own
    world = ground.world
    backends = {f"app{i}": world.backend(f"svc{i}") for i in range(40)}

    # Five other namespaces and this one flood the queue with Warnings (one per invalid
    # Ingress), all there before the controller starts: its first term reports them at
    # once (an Ingress's report goes first) while each write takes a while, so the
    # TimeoutApplied Events queue behind this namespace's Warnings, and this namespace
    # gets one turn in six.
    others = [
        World(world.plane, create_namespace(world.plane, "flood"), ground.fake) for _ in range(5)
    ]
    work = [(world, name) for name in backends]
    work += [(w, f"bad{i}") for w in (world, *others) for i in range(400)]

    def create(part: list[tuple[World, str]]) -> None:
        for where, name in part:
            if name in backends:
                where.ingress(
                    name, timeout="1h", services=[f"svc{name[3:]}"], backends=[backends[name]]
                )
            else:
                where.ingress(name, timeout=f"{name}x")

    creators = [threading.Thread(target=create, args=(work[w::16],)) for w in range(16)]
    for thread in creators:
        thread.start()
    for thread in creators:
        thread.join()
    watched = ",".join(w.ns for w in (world, *others))
    ctl = ground.controller(extra=[f"--namespaces={watched}"])

    def recorded() -> set[str]:
        """The Ingresses whose write is done and recorded."""
        try:  # 429 while the apiserver (re)initializes a resource's storage
            records = world.records()
        except KubeError:
            return set()

        def applied(backend: str) -> object:
            fields = (records.get(backend) or {}).get("fields") or {}
            return (fields.get("timeout") or {}).get("applied")

        return {n for n, b in backends.items() if applied(b) == 3600}

    # The apiserver goes as soon as a few writes are recorded: their Events are queued
    # then (after the record), behind the Warnings.
    done: set[str] = eventually(lambda: len(r := recorded()) >= 5 and r, timeout=120)
    told = world.kube.get(
        f"/api/v1/namespaces/{world.ns}/events", {"fieldSelector": "reason=TimeoutApplied"}
    )["items"]
    told_then = len(done & {e["involvedObject"]["name"] for e in told})
    ground.plane.stop_apiserver()
    hold(RENEW_DEADLINE + 10)
    ground.plane.start_apiserver()
    lost = eventually(lambda: ctl.said("lost the Lease"), timeout=60, what="the term ended")

    def applied_to(name: str) -> list[dict[str, Any]]:
        try:  # the apiserver may still be starting
            return world.events(name, "TimeoutApplied")
        except (KubeError, requests.RequestException):
            return []

    applied = {name: eventually(functools.partial(applied_to, name), timeout=120) for name in done}
    counts = [sum(int(e.get("count") or 1) for e in events) for events in applied.values()]
    said = eventually(lambda: ctl.said("the apiserver takes Events again"), timeout=60)
    line = next(m["message"] for m in ctl.lines if m.get("_at") == said)
    back = re.search(r"([0-9]+) waiting", line)
    dropped = ctl_metric_sum(ctl, "gke_ingress_timeout_events_dropped_total")
    row = Row("9. Events wait out an outage", f"apiserver away {RENEW_DEADLINE + 10:.0f} s")
    row.notes.append(
        f"{back.group(1) if back else '?'} Events waited through it and the lost Lease; "
        f"{len(done) - told_then} of {len(done)} TimeoutApplied of recorded writes among "
        f"them; each posted once after ({sum(counts) - len(counts)} duplicated); "
        f"{dropped:.0f} Events dropped (queue full)"
    )
    table_row(ground.item, TABLE, HEADER, row.line())
    print(row.line())
    assert lost is not None
    # The Events that waited through the outage and the lost Lease went out after.
    assert back is not None and int(back.group(1)) > 0, "no Event waited through the outage"
    assert ctl_metric_sum(ctl, 'gke_ingress_timeout_events_dropped_total{reason="stopped"}') == 0
    assert counts == [1] * len(done)
    assert ctl.alive()


def ctl_metric_sum(ctl: Controller, name: str) -> float:
    """The sum of a metric's samples over its labels."""
    text = requests.get(f"http://127.0.0.1:{ctl.port}/metrics", timeout=5).text
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith((name + " ", name + "{"))
    )
