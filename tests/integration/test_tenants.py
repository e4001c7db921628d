"""Issue 7: whatever a tenant who may edit its own Ingresses writes, `python -m controller`
changes nothing outside that tenant's own load balancers, stays up, and an innocent
namespace annotated at the same moment still converges; one figures line per attack."""

from __future__ import annotations

import functools
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from controller.annotations import BACKENDS_ANNOTATION, CLASS_ANNOTATION
from tests.conftest import create_namespace, table_row
from tests.fakes.compute import ComputeFake, instance_group_backend_name, neg_backend_name
from tests.ground.controlplane import ControlPlane, free_port
from tests.integration.world import KEY, UID, World, applied
from tests.wait import eventually

ROOT = Path(__file__).resolve().parents[2]
OTHER_UID = "5b1d7c3e9a2f4086"  # another cluster sharing the GCP project
DEFAULT_BACKEND = instance_group_backend_name(30480, UID)  # kube-system/default-http-backend
INGRESSES = "/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses"
ANNOTATIONS_LIMIT = 256 * 1024  # the apiserver's total for one object's annotations
_UNITS = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "K": 1000, "M": 1000**2, "G": 1000**3}


def memory_limit() -> int:
    """resources.limits.memory of the controller container in deploy/deployment.yaml, bytes."""
    deployment = yaml.safe_load((ROOT / "deploy" / "deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    raw = str(container["resources"]["limits"]["memory"])
    match = re.fullmatch(r"([0-9]+)([KMG]i?)?", raw)
    assert match, f"cannot read the memory limit {raw!r}"
    return int(match.group(1)) * _UNITS.get(match.group(2) or "", 1)


# --- the controller as a pod runs it -------------------------------------------------------


class Controller:
    """``python -m controller`` with health on a loopback port and its log in a file."""

    def __init__(
        self,
        plane: ControlPlane,
        fake: ComputeFake,
        namespaces: Sequence[str],
        state: str,
        log: Path,
        *,
        resync: float = 600.0,
    ) -> None:
        self.port = free_port()
        self.log = log
        argv = [
            sys.executable, "-m", "controller",
            f"--kubeconfig={plane.kubeconfig}", f"--compute-endpoint={fake.url}",
            "--project=demo-project", "--no-leader-elect", f"--listen=127.0.0.1:{self.port}",
            f"--state-namespace={state}", f"--namespaces={','.join(namespaces)}",
            "--workers=4", "--write-rate=5", f"--resync-period={resync}",
        ]  # fmt: skip
        with log.open("wb") as out:
            self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        self.started = self._start_time()

    def _start_time(self) -> str:
        """Field 22 of /proc/PID/stat: the same PID with another start is another process."""
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]

    def get(self, path: str) -> requests.Response | None:
        try:
            return requests.get(f"http://127.0.0.1:{self.port}{path}", timeout=5)
        except requests.RequestException:
            return None

    def status(self, path: str) -> int:
        response = self.get(path)
        return 0 if response is None else response.status_code

    def ready(self) -> bool:
        assert self.proc.poll() is None, f"the controller exited:\n{self.tail()}"
        return self.status("/readyz") == 200

    def metric(self, name: str) -> float:
        """The sum over labels of a metric's samples (0 when absent)."""
        response = self.get("/metrics")
        total = 0.0
        for line in (response.text if response is not None else "").splitlines():
            if re.match(rf"gke_ingress_timeout_{name}(\{{| )", line):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def settled(self, reconciles: int) -> bool:
        """At least ``reconciles`` finished and nothing waits in the queue."""
        return self.metric("queue_depth") == 0 and self.metric("reconciles_total") >= reconciles

    def peak_rss(self) -> int:
        """VmHWM of the process, bytes."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        match = re.search(r"^VmHWM:\s+([0-9]+) kB$", status, re.MULTILINE)
        assert match, status
        return int(match.group(1)) * 1024

    def assert_alive_and_same(self) -> None:
        assert self.proc.poll() is None, f"the controller exited:\n{self.tail()}"
        assert self._start_time() == self.started, "the controller was restarted"
        assert self.status("/healthz") == 200, f"unhealthy:\n{self.tail()}"

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


# --- the figures ----------------------------------------------------------------------------


@dataclass
class Row:
    attack: str
    calls: dict[str, int]
    peak_rss: int
    innocent: float
    extra: str = ""

    def line(self) -> str:
        calls = " ".join(f"{op}={n}" for op, n in sorted(self.calls.items())) or "-"
        mib = self.peak_rss / 1024**2
        text = f"{self.attack:<40} {mib:6.1f} MiB  innocent {self.innocent:6.2f}s  {calls}"
        return f"{text}  {self.extra}" if self.extra else text


TABLE = "tenant attacks (controller: --workers 4 --write-rate 5)"
HEADER = f"{'attack':<40} {'peak RSS':>10}  {'innocent converged':<18}  Compute calls"


class Figures:
    """A case's figures line, into the one table printed at the end of the run."""

    def __init__(self, item: pytest.Item) -> None:
        self.item = item

    def append(self, row: Row) -> None:
        table_row(self.item, TABLE, HEADER, row.line())


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Figures:
    return Figures(request.node)


def calls_by_operation(fake: ComputeFake) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for (operation, _status), n in fake.stats().items():
        counts[operation] += n
    return dict(counts)


def reads(calls: dict[str, int]) -> int:
    return sum(n for op, n in calls.items() if op in {"get", "list"} or op.startswith("operations"))


# --- one tenant, one innocent namespace, one controller ------------------------------------


class Convergence:
    """Time from ``start`` until ``check`` holds, polled in a thread while the attack runs."""

    def __init__(self, check: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
        self.started = time.monotonic()
        self.elapsed: float | None = None
        self.error = ""
        self._thread = threading.Thread(
            target=self._run, args=(check, what, timeout), name=what, daemon=True
        )
        self._thread.start()

    def _run(self, check: Callable[[], bool], what: str, timeout: float) -> None:
        try:
            eventually(check, timeout=timeout, what=what)
        except AssertionError as e:
            self.error = str(e)
            return
        self.elapsed = time.monotonic() - self.started

    def result(self) -> float:
        self._thread.join()
        assert self.elapsed is not None, self.error
        return self.elapsed


@dataclass
class Tenancy:
    plane: ControlPlane
    fake: ComputeFake
    tenant: World
    innocent: World
    state: World
    log: Path
    own: str  # the tenant's own backend service (tenant/web)
    innocent_backend: str
    controller: Controller | None = None

    def start(self, *, resync: float = 600.0) -> Controller:
        self.controller = Controller(
            self.plane,
            self.fake,
            [self.tenant.ns, self.innocent.ns],
            self.state.ns,
            self.log,
            resync=resync,
        )
        eventually(self.controller.ready, timeout=60, what="controller ready")
        return self.controller

    @property
    def ctl(self) -> Controller:
        assert self.controller is not None
        return self.controller

    def innocent_asks(self) -> Convergence:
        """Annotate the innocent Ingress now; the clock runs until its backend has 3600."""
        clock = Convergence(
            lambda: self.innocent.timeout_of(self.innocent_backend) == 3600, "innocent converged"
        )
        self.innocent.annotate("site", "1h")
        return clock

    def written(self) -> set[str]:
        """Backend services that got any write request (PATCH or PUT, whatever its answer)."""
        return {
            c.path.rsplit("/", 1)[1]
            for c in self.fake.calls
            if c.method in ("PATCH", "PUT") and "/backendServices/" in c.path
        }

    def finish(
        self,
        figures: Figures,
        attack: str,
        innocent: Convergence,
        *,
        forbidden: Iterable[str] = (),
        allowed: Iterable[str] = (),
        reconciles: int = 1,
        extra: str = "",
    ) -> Row:
        """The checks every case ends with, then its figures line."""
        elapsed = innocent.result()
        eventually(lambda: self.ctl.settled(reconciles), what="work queue drained")
        self.ctl.assert_alive_and_same()
        written = self.written()
        assert written.isdisjoint(forbidden), f"wrote to {sorted(written & set(forbidden))}"
        mine = {self.own, self.innocent_backend, *allowed}
        assert written <= mine, f"wrote outside the tenant's own: {sorted(written - mine)}"
        assert DEFAULT_BACKEND not in written
        onto_innocent = [
            c.body
            for c in self.fake.calls
            if c.method in ("PATCH", "PUT") and c.path.endswith(f"/{self.innocent_backend}")
        ]
        assert all((b or {}).get("timeoutSec") == 3600 for b in onto_innocent), onto_innocent
        row = Row(attack, calls_by_operation(self.fake), self.ctl.peak_rss(), elapsed, extra)
        figures.append(row)
        print(row.line())
        return row


@pytest.fixture
def tenancy(apiserver: ControlPlane, tmp_path: Path) -> Iterator[Tenancy]:
    with ComputeFake() as fake:
        tenant = World(apiserver, create_namespace(apiserver, "tenant"), fake)
        innocent = World(apiserver, create_namespace(apiserver, "innocent"), fake)
        state = World(apiserver, create_namespace(apiserver, "state"), fake)
        fake.add_backend(
            DEFAULT_BACKEND, service="kube-system/default-http-backend", port="80", timeout=30
        )
        own = tenant.backend("web")
        innocent_backend = innocent.backend("web")
        innocent.ingress("site", backends=[innocent_backend, DEFAULT_BACKEND])
        t = Tenancy(
            apiserver, fake, tenant, innocent, state, tmp_path / "controller.log", own,
            innocent_backend,
        )  # fmt: skip
        try:
            yield t
        finally:
            if t.controller is not None:
                t.controller.stop()
            for world in (tenant, innocent):  # the informer is cluster-wide: leave nothing
                world.kube.delete(INGRESSES.format(ns=world.ns))


def post_ingress(
    world: World, name: str, annotations: dict[str, str], services: Sequence[str] = ("web",)
) -> dict[str, Any]:
    """An Ingress of class gce with these annotations verbatim, routing to ``services``."""
    return world.ingress(
        name, services=services, annotations={CLASS_ANNOTATION: "gce", **annotations}
    )


def warnings(world: World, name: str, reason: str) -> list[str]:
    return [e["message"] for e in world.events(name, reason) if e["type"] == "Warning"]


def without(message: str, names: Iterable[str]) -> str:
    for name in sorted(names, key=len, reverse=True):
        message = message.replace(name, "<name the tenant wrote>")
    return message


# --- the cases ------------------------------------------------------------------------------


def test_baseline_without_an_attack(tenancy: Tenancy, figures: Figures) -> None:
    tenancy.start()
    innocent = tenancy.innocent_asks()
    # The innocent's backend: the default one it names too is no change's concern.
    tenancy.finish(figures, "baseline (no attack)", innocent, reconciles=1)
    assert tenancy.written() == {tenancy.innocent_backend}


def test_names_of_another_cluster_are_never_written(tenancy: Tenancy, figures: Figures) -> None:
    t = tenancy
    forged = [
        neg_backend_name(t.tenant.ns, "web", 80, OTHER_UID),
        instance_group_backend_name(30123, OTHER_UID),
    ]
    for name in forged:  # the other cluster's, made for a tenant/web of its own
        t.fake.add_backend(name, service=f"{t.tenant.ns}/web", timeout=30)
    t.start()
    innocent = t.innocent_asks()
    t.tenant.ingress("forge", timeout="1h", backends=[t.own, *forged])

    eventually(lambda: t.tenant.timeout_of(t.own) == 3600, what="the tenant's own backend")
    # The innocent's and the tenant's own backends and the tenant's report: another
    # cluster's names are known from the name alone, so no change queues them.
    t.finish(figures, "1 names of another cluster", innocent, forbidden=forged, reconciles=3)
    assert [t.tenant.timeout_of(n) for n in forged] == [30, 30]

    def refused() -> list[str]:
        messages = warnings(t.tenant, "forge", "ForeignBackend")
        return messages if all(any(n in m for m in messages) for n in forged) else []

    messages = eventually(refused, what="a ForeignBackend warning for each forged name")
    for message in messages:
        rest = without(message, forged)
        assert OTHER_UID not in rest and OTHER_UID[:8] not in rest, message


def test_another_namespace_and_the_cluster_default_are_never_written(
    tenancy: Tenancy, figures: Figures
) -> None:
    t = tenancy
    bank = neg_backend_name("bank", "api", 80, UID)
    t.fake.add_backend(bank, service="bank/api", timeout=30)
    t.start()
    innocent = t.innocent_asks()
    # It routes to a Service "api" of its own, as the bank's is called.
    t.tenant.ingress(
        "steal", timeout="1h", backends=[t.own, bank, DEFAULT_BACKEND], services=["web", "api"]
    )

    eventually(lambda: t.tenant.timeout_of(t.own) == 3600, what="the tenant's own backend")
    t.finish(
        figures,
        "2 another namespace, cluster default",
        innocent,
        forbidden=[bank, DEFAULT_BACKEND],
        reconciles=3,  # the two own backends and the report: bank's was listed at start
    )
    messages = eventually(lambda: warnings(t.tenant, "steal", "ForeignBackend"))
    assert all(bank in m for m in messages), messages
    for message in messages:
        assert "bank" not in without(message, [bank]), message
        assert DEFAULT_BACKEND not in message, "the cluster default is skipped silently"
    assert t.tenant.timeout_of(bank) == 30 and t.tenant.timeout_of(DEFAULT_BACKEND) == 30


def test_a_kept_claim_on_a_reused_backend_is_not_written_again(
    tenancy: Tenancy, figures: Figures
) -> None:
    t = tenancy
    shared = instance_group_backend_name(30555, UID)
    t.fake.add_backend(shared, service=f"{t.tenant.ns}/web", port="80", timeout=30)
    t.tenant.ingress("app", timeout="600", backends=[shared])
    t.start(resync=2.0)
    eventually(lambda: t.tenant.timeout_of(shared) == 600, what="600 applied")
    eventually(lambda: applied(t.state.records().get(shared)) == 600)

    innocent = t.innocent_asks()
    t.tenant.annotate("app", "ten minutes")  # invalid: the 600 it asked before is kept
    eventually(lambda: warnings(t.tenant, "app", "InvalidTimeout"), what="InvalidTimeout")
    # ingress-gce deleted the NodePort's backend service; the NodePort went to bank/api.
    t.fake.delete_backend(shared)
    t.fake.add_backend(shared, service="bank/api", port="80", timeout=30)
    swapped = len(t.fake.calls)
    lists = t.fake.stats().get(("list", 200), 0)

    eventually(lambda: t.fake.stats().get(("list", 200), 0) >= lists + 3, what="three more resyncs")
    t.finish(figures, "3 kept claim on a reused backend", innocent, allowed=[shared], reconciles=3)
    late = [c for c in t.fake.calls[swapped:] if c.method in ("PATCH", "PUT") and shared in c.path]
    assert late == [], f"wrote onto the reused backend: {late}"
    assert t.tenant.timeout_of(shared) == 30
    refused = eventually(
        lambda: warnings(t.tenant, "app", "ForeignBackend"), what="the kept claim refused"
    )
    assert all("bank" not in without(m, [shared]) for m in refused), refused
    eventually(lambda: shared not in t.state.records(), what="the record let go")


def test_three_thousand_forged_names_are_refused_by_the_bound(
    tenancy: Tenancy, figures: Figures
) -> None:
    t = tenancy
    forged = [neg_backend_name(t.tenant.ns, f"svc{i}", 80, UID) for i in range(3000)]
    t.start()
    innocent = t.innocent_asks()
    t.tenant.ingress("wide", timeout="1h", backends=forged)

    eventually(lambda: warnings(t.tenant, "wide", "InvalidBackends"), what="InvalidBackends")
    row = t.finish(figures, "4 3000 forged names", innocent, reconciles=2)
    names = set(forged)
    touched = [c.path for c in t.fake.calls if c.path.rsplit("/", 1)[1] in names]
    assert touched == [], touched[:5]
    assert reads(row.calls) < 50, row.calls


def test_a_nesting_bomb_costs_a_warning(tenancy: Tenancy, figures: Figures) -> None:
    t = tenancy
    t.start()
    innocent = t.innocent_asks()
    bombs = {
        "bomb": "[" * 100_000,  # over the size bound
        "deep": '{"a":' * 2500 + "1" + "}" * 2500,  # under it, deeper than JSON allows
    }
    for name, raw in bombs.items():
        post_ingress(t.tenant, name, {KEY: "1h", BACKENDS_ANNOTATION: raw})

    for name in bombs:
        eventually(functools.partial(warnings, t.tenant, name, "InvalidBackends"), what=name)
    assert t.ctl.proc.poll() is None, t.ctl.tail()
    t.finish(figures, "5 nesting bomb", innocent, reconciles=3)


def big_backends(tenant: str, seed: int, size: int) -> str:
    """A valid-looking backends annotation of about ``size`` characters."""
    entries: list[str] = []
    length, i = 2, 0
    while length < size:
        entry = json.dumps(neg_backend_name(tenant, f"s{seed}x{i}", 80, UID)) + ':"HEALTHY"'
        entries.append(entry)
        length += len(entry) + 1
        i += 1
    return "{" + ",".join(entries) + "}"


def test_big_annotations_do_not_grow_the_controller(tenancy: Tenancy, figures: Figures) -> None:
    t = tenancy
    limit = memory_limit()
    size = 250 * 1024
    t.start()
    innocent = t.innocent_asks()
    for i in range(40):
        raw = big_backends(t.tenant.ns, i, size)
        assert len(raw) + len(BACKENDS_ANNOTATION) + 100 < ANNOTATIONS_LIMIT
        post_ingress(t.tenant, f"big{i}", {KEY: "1h", BACKENDS_ANNOTATION: raw})
    base = big_backends(t.tenant.ns, 0, size)
    for n in range(150):
        # Each edit a new health word and a new (valid) timeout on the same 250 KiB.
        health = "UNKNOWN" if n % 2 else "HEALTHY"
        raw = base.replace('"HEALTHY"}', f'"{health}"}}')
        t.tenant.kube.patch(
            f"{INGRESSES.format(ns=t.tenant.ns)}/big0",
            {"metadata": {"annotations": {KEY: f"{n + 1}m", BACKENDS_ANNOTATION: raw}}},
        )
    eventually(lambda: all(warnings(t.tenant, f"big{i}", "InvalidBackends") for i in range(40)))
    row = t.finish(
        figures,
        "6 40x250KiB annotations, 150 edits",
        innocent,
        reconciles=41,
        extra=f"(limit {limit / 1024**2:.0f} MiB)",
    )
    assert row.peak_rss < 0.75 * limit, f"peak RSS {row.peak_rss} of a {limit} limit"


def test_a_restart_among_big_annotations_stays_under_the_limit(
    tenancy: Tenancy, figures: Figures
) -> None:
    t = tenancy
    limit = memory_limit()
    for i in range(80):  # there before the controller (re)starts, as after a reschedule
        raw = big_backends(t.tenant.ns, i, 250 * 1024)
        post_ingress(t.tenant, f"big{i}", {KEY: "1h", BACKENDS_ANNOTATION: raw})
    t.start()
    innocent = t.innocent_asks()
    row = t.finish(
        figures,
        "6b restart among 80x250KiB",
        innocent,
        # 80 refusals and the innocent's backend; the default one is queued by no change.
        reconciles=81,
        extra=f"(limit {limit / 1024**2:.0f} MiB)",
    )
    assert row.peak_rss < 0.75 * limit, f"peak RSS {row.peak_rss} of a {limit} limit"


def noisy_ingresses(t: Tenancy, *, also_on_last: Sequence[str] = ()) -> dict[str, int]:
    """10 unannotated Ingresses, each on ten backend services of its own (the last one
    also on ``also_on_last``); returns the final value each of those backends must get."""
    services = {i: [f"svc{i}-{j}" for j in range(10)] for i in range(10)}
    backends = {i: [t.tenant.backend(s) for s in names] for i, names in services.items()}
    for i in range(10):
        also = also_on_last if i == 9 else ()
        t.tenant.ingress(f"noisy{i}", backends=[*backends[i], *also], services=services[i])
    return {name: 1000 + i for i, names in backends.items() for name in names}


def test_a_noisy_namespace_does_not_hold_up_another(tenancy: Tenancy, figures: Figures) -> None:
    # 10 Ingresses flipped 100 times each, as fast as the apiserver takes them. The
    # queue de-duplicates, so the noisy backlog is its 100 backend services (20 s of
    # writes at 5/s) whatever the flips: in FIFO order the innocent would wait for it.
    t = tenancy
    final = noisy_ingresses(t)
    t.start()

    def flip(i: int) -> None:
        kube = World(t.plane, t.tenant.ns, t.fake).kube  # a client of its own per thread
        path = f"{INGRESSES.format(ns=t.tenant.ns)}/noisy{i}"
        for n in range(99):
            value = 100 + i if n % 2 == 0 else 200 + i
            kube.patch(path, {"metadata": {"annotations": {KEY: str(value)}}})
        kube.patch(path, {"metadata": {"annotations": {KEY: str(1000 + i)}}})

    threads = [threading.Thread(target=flip, args=(i,)) for i in range(10)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    # The innocent asks once the noisy backlog is there and being worked on.
    eventually(lambda: t.fake.count("PATCH", f"-{t.tenant.ns}-svc"), what="noisy writes began")
    innocent = t.innocent_asks()
    for thread in threads:
        thread.join()
    flipped = time.monotonic() - began
    noisy_time = noisy_converged(t, final, began)
    row = t.finish(
        figures,
        "7 1000 flips in one namespace",
        innocent,
        allowed=final,
        reconciles=101,
        extra=f"(noisy converged {noisy_time:.2f}s, flips sent in {flipped:.2f}s)",
    )
    assert row.innocent < noisy_time / 3, (row.innocent, noisy_time)


def noisy_converged(t: Tenancy, final: dict[str, int], began: float) -> float:
    """Seconds from ``began`` until every noisy backend has its final value."""
    eventually(
        lambda: all(t.tenant.timeout_of(n) == v for n, v in final.items()),
        timeout=180,
        what="the noisy namespace converged",
    )
    return time.monotonic() - began


def test_naming_the_innocents_backend_does_not_queue_it_behind_the_tenant(
    tenancy: Tenancy, figures: Figures
) -> None:
    # The last of the tenant's 10 Ingresses also names the innocent's backend service:
    # refused (ForeignBackend), nothing written to it, and its key joins the tenant's lane
    # behind the 90 queued before it; when the innocent asks, its own lane's turn must
    # still serve it.
    t = tenancy
    final = noisy_ingresses(t, also_on_last=[t.innocent_backend])
    t.start()
    began = time.monotonic()
    for i in range(10):
        t.tenant.annotate(f"noisy{i}", str(1000 + i))
    innocent = t.innocent_asks()
    noisy_time = noisy_converged(t, final, began)
    row = t.finish(
        figures,
        "7b naming the innocent's backend",
        innocent,
        allowed=final,
        reconciles=101,
        extra=f"(noisy converged {noisy_time:.2f}s)",
    )
    assert warnings(t.tenant, "noisy9", "ForeignBackend")
    assert row.innocent < noisy_time / 3, (row.innocent, noisy_time)


# --- Events: one namespace floods, another's Event still comes at once (issue 14) --------


@dataclass
class Seen:
    """One Event as a watch saw it arrive."""

    at: float  # time.monotonic() when it arrived here
    kind: str  # ADDED or MODIFIED
    namespace: str
    name: str  # the object it is about
    reason: str


class EventWatch:
    """Every Event the controller posts or updates, in the apiserver's order."""

    def __init__(self, world: World) -> None:
        self.seen: list[Seen] = []
        self.error = ""
        path = "/api/v1/events"
        params = {"fieldSelector": "source=gke-ingress-timeout"}
        version = world.kube.get(path, {**params, "limit": "1"})["metadata"]["resourceVersion"]
        self._stream = world.kube.watch(
            path, resource_version=version, timeout_seconds=3600, read_timeout=600, params=params
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in self._stream:
                obj = event.get("object") or {}
                if event.get("type") not in ("ADDED", "MODIFIED"):
                    continue
                involved = obj["involvedObject"]
                self.seen.append(
                    Seen(
                        time.monotonic(),
                        event["type"],
                        involved["namespace"],
                        involved["name"],
                        obj["reason"],
                    )
                )
        except Exception as e:  # the stream aborted at the end of the test
            self.error = repr(e)

    def close(self) -> None:
        self._stream.abort()
        self._thread.join(timeout=10)


def test_a_flood_of_invalid_ingresses_does_not_hold_up_anothers_event(
    tenancy: Tenancy, figures: Figures
) -> None:
    # 3,000 invalid Ingresses created at once in one namespace: 3,000 Warnings, far more
    # than the apiserver takes in the time; the innocent annotated right after must get
    # its TimeoutApplied at its namespace's turn, not behind the flood's backlog.
    t = tenancy
    flood = 3000
    ctl = t.start()
    watch = EventWatch(t.tenant)

    def create(worker: int) -> None:
        kube = World(t.plane, t.tenant.ns, t.fake)  # a client of its own per thread
        for i in range(worker, flood, 16):
            kube.ingress(f"bad{i}", timeout=f"{i}x")

    creators = [threading.Thread(target=create, args=(w,)) for w in range(16)]
    began = time.monotonic()
    for thread in creators:
        thread.start()
    for thread in creators:
        thread.join()
    created = time.monotonic() - began
    waiting = ctl.metric("events_waiting")
    innocent = t.innocent_asks()
    applied = eventually(
        lambda: next(
            (
                s
                for s in watch.seen
                if s.namespace == t.innocent.ns and s.reason == "TimeoutApplied"
            ),
            None,
        ),
        timeout=60,
        what=f"the innocent's TimeoutApplied Event ({len(watch.seen)} seen, {watch.error}, "
        f"{ctl.metric('events_waiting')} waiting, {t.innocent.events('site')})",
    )
    patched = next(
        c.at
        for c in t.fake.calls
        if c.method == "PATCH" and c.path.endswith(f"/{t.innocent_backend}") and c.status == 200
    )
    eventually(
        lambda: ctl.metric("events_waiting") == 0 and ctl.metric("queue_depth") == 0,
        timeout=300,
        what="every Event posted or dropped",
    )
    watch.close()
    flood_seen = [s for s in watch.seen if s.namespace == t.tenant.ns]
    between = sum(1 for s in flood_seen if patched <= s.at < applied.at)
    after = sum(1 for s in flood_seen if s.at > applied.at)
    posted = len(t.tenant.kube.list(f"/api/v1/namespaces/{t.tenant.ns}/events")[0])
    dropped = ctl.metric("events_dropped_total")
    row = t.finish(
        figures,
        "14 3000 invalid Ingresses, Events",
        innocent,
        reconciles=flood,
        extra=(
            f"(its Event {applied.at - patched:.2f}s after its PATCH; flood Events: "
            f"{waiting:.0f} waiting then, {between} posted between its PATCH and its Event, "
            f"{after} after; {posted} posted, {dropped:.0f} dropped; created in {created:.1f}s)"
        ),
    )
    print(f"peak RSS {row.peak_rss / 1024**2:.1f} MiB")
    assert waiting > 0, "the flood left no backlog of Events: this shows nothing"
    # Its Event came at its namespace's turn: before most of what the flood had waiting.
    assert after > between, (between, after)
    # Every Warning of the flood was posted, or dropped and counted: none lost silently.
    assert posted + dropped == flood, (posted, dropped)
    full = 'gke_ingress_timeout_events_dropped_total{reason="namespace_full"} '
    scraped = (ctl.get("/metrics") or requests.Response()).text.splitlines()
    assert [float(line.split()[-1]) for line in scraped if line.startswith(full)] == [dropped]
