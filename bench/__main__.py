"""The benchmark: informer memory, initial sync time, reconcile throughput and plan cost.

Owns standing up a real kube-apiserver, etcd and the Compute fake, filling them with
realistic Ingresses, running the controller's own parts against them and printing one
table per measurement. It prints figures and never asserts a time.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import logging
import os
import platform
import statistics
import sys
import threading
import time
import timeit
import tracemalloc
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import requests

from controller import config, plan
from controller.annotations import BACKENDS_ANNOTATION, CLASS_ANNOTATION
from controller.gcp.backends import Compute, ComputePool
from controller.gcp.ratelimit import WriteLimiter
from controller.ingress import Ingress, from_object
from controller.kube.client import KubeClient, StaticTokenAuth
from controller.kube.watch import Informer, object_key
from controller.manager import INGRESSES, Manager
from controller.model import GLOBAL, Backend, BackendRef
from tests.fakes.compute import ComputeFake, neg_backend_name
from tests.ground.controlplane import ControlPlane, find_assets

TIMEOUT_KEY = f"{config.DEFAULT_PREFIX}/timeout"
TIMEOUT = "1h"
DESIRED = 3600  # seconds TIMEOUT asks for
CLUSTER_UID = "0e20ca25204f6195"
PAGE = 500  # the informer's LIST page size
POLL = 0.05  # seconds between looks at the fake while waiting for writes to land
MEMORY_NS = "bench-memory"

Json = dict[str, Any]


def say(line: str) -> None:
    """Progress, on stderr so stdout holds only the tables."""
    print(line, file=sys.stderr, flush=True)


# --- realistic Ingresses --------------------------------------------------------------------


def ingress_body(
    namespace: str, name: str, services: Sequence[str], *, timeout: str | None = TIMEOUT
) -> Json:
    """An Ingress as kubectl apply and ingress-gce leave it: ~1.5 kB of last-applied JSON,
    the load-balancer annotations, and a backends annotation naming one NEG per Service."""
    hosts = [f"{name}.shop.example.com", f"{name}.api.example.com"]
    labels = {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/part-of": "storefront",
        "app.kubernetes.io/managed-by": "kustomize",
        "team": "payments",
        "environment": "production",
    }
    user = {
        CLASS_ANNOTATION: "gce",
        "kubernetes.io/ingress.global-static-ip-name": f"{name}-ip",
        "networking.gke.io/managed-certificates": f"{name}-cert",
        "networking.gke.io/v1beta1.FrontendConfig": f"{name}-frontend",
    }
    if timeout is not None:
        user[TIMEOUT_KEY] = timeout
    paths = [
        {
            "path": path,
            "pathType": "Prefix",
            "backend": {"service": {"name": services[i % len(services)], "port": {"number": 80}}},
        }
        for i, path in enumerate(("/", "/api", "/ws", "/static"))
    ]
    spec = {
        "tls": [{"hosts": hosts, "secretName": f"{name}-tls"}],
        "rules": [{"host": host, "http": {"paths": paths}} for host in hosts],
    }
    applied = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"annotations": user, "labels": labels, "name": name, "namespace": namespace},
        "spec": spec,
    }
    backends = [neg_backend_name(namespace, s, 80, CLUSTER_UID) for s in services]
    lb = f"{CLUSTER_UID[:8]}-{namespace}-{name}-q7x2mz4k"
    annotations = {
        **user,
        # kubectl writes compact JSON with sorted keys and a trailing newline
        "kubectl.kubernetes.io/last-applied-configuration": json.dumps(
            applied, sort_keys=True, separators=(",", ":")
        )
        + "\n",
        BACKENDS_ANNOTATION: json.dumps({b: "HEALTHY" for b in backends}),
        "ingress.kubernetes.io/forwarding-rule": f"k8s2-fr-{lb}",
        "ingress.kubernetes.io/https-forwarding-rule": f"k8s2-fs-{lb}",
        "ingress.kubernetes.io/target-proxy": f"k8s2-tp-{lb}",
        "ingress.kubernetes.io/https-target-proxy": f"k8s2-ts-{lb}",
        "ingress.kubernetes.io/url-map": f"k8s2-um-{lb}",
        "ingress.kubernetes.io/ssl-cert": f"mcrt-{lb}",
        "ingress.kubernetes.io/static-ip": f"{name}-ip",
    }
    metadata = {"name": name, "namespace": namespace, "labels": labels, "annotations": annotations}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": metadata,
        "spec": spec,
    }


def shop(i: int) -> tuple[str, list[str]]:
    """The name and three Services of the i-th Ingress of the memory and plan runs."""
    name = f"shop-{i:05d}"
    return name, [f"{name}-web", f"{name}-api", f"{name}-ws"]


# --- the apiserver --------------------------------------------------------------------------


def admin(plane: ControlPlane, session: requests.Session | None = None) -> KubeClient:
    return KubeClient(
        plane.url, auth=StaticTokenAuth(plane.admin_token), verify=plane.ca_file, session=session
    )


def create_namespace(plane: ControlPlane, name: str) -> None:
    admin(plane).post(
        "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )


def create_ingresses(plane: ControlPlane, bodies: Sequence[Json], threads: int = 16) -> float:
    """POST every body from a thread pool (one Session a thread); returns the seconds taken."""
    local = threading.local()
    sessions: list[requests.Session] = []
    lock = threading.Lock()

    def post(body: Json) -> None:
        kube: KubeClient | None = getattr(local, "kube", None)
        if kube is None:
            session = requests.Session()
            with lock:
                sessions.append(session)
            kube = local.kube = admin(plane, session)
        ns = body["metadata"]["namespace"]
        kube.post(f"/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses", body)

    start = time.perf_counter()
    try:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(post, bodies))
    finally:
        for session in sessions:
            session.close()
    return time.perf_counter() - start


def wait_for(check: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not within {timeout}s: {what}")
        time.sleep(0.01)


# --- 1 and 2: the informer ------------------------------------------------------------------


@dataclass(frozen=True)
class Sync:
    seconds: float  # informer start -> synced
    pages: int  # LIST requests it sent
    objects: int  # keys in its store
    kept: int = 0  # bytes still allocated once synced (traced runs only)
    peak: int = 0  # most bytes allocated at once while listing (traced runs only)


def counting_session() -> tuple[requests.Session, list[int]]:
    """A Session and a one-item list counting the LIST requests sent through it."""
    lists = [0]

    def count(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        url = response.request.url or ""
        if response.request.method == "GET" and "watch=" not in url:
            lists[0] += 1

    session = requests.Session()
    session.hooks["response"].append(count)
    return session, lists


def informer_sync(plane: ControlPlane, *, trace: bool) -> Sync:
    """Run the controller's informer until synced and its watch is open, then stop it."""
    session, pages = counting_session()
    informer: Informer[Ingress] = Informer(
        admin(plane, session),
        INGRESSES,
        transform=functools.partial(from_object, timeout_key=TIMEOUT_KEY),
        on_change=lambda _kind, _key: None,
    )
    stop = threading.Event()
    thread = threading.Thread(target=informer.run, args=(stop,), name="bench-informer")
    gc.collect()
    if trace:
        tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0] if trace else 0
    start = time.perf_counter()
    thread.start()
    try:
        wait_for(informer.synced.is_set, "informer synced")
        seconds = time.perf_counter() - start
        # the open watch is part of what a running informer keeps
        wait_for(lambda: informer.stats.watches >= 1, "informer watching")
        gc.collect()
        kept = peak = 0
        if trace:
            current, top = tracemalloc.get_traced_memory()
            kept, peak = current - before, top - before
        return Sync(seconds, pages[0], len(informer.keys()), kept, peak)
    finally:
        stop.set()
        thread.join()
        session.close()
        if trace:
            tracemalloc.stop()


def consistent_list(plane: ControlPlane) -> Sync:
    """What the informer does after a 410: a LIST without resourceVersion (a consistent
    read from etcd, paged by 500), then the same transform."""
    session, pages = counting_session()
    with contextlib.closing(session):
        start = time.perf_counter()
        items, _ = admin(plane, session).list(INGRESSES, limit=PAGE)
        store = {object_key(o): from_object(o, timeout_key=TIMEOUT_KEY) for o in items}
        return Sync(time.perf_counter() - start, pages[0], len(store))


def whole_objects(plane: ControlPlane) -> tuple[int, int]:
    """Bytes a store of whole objects would keep (json.loads of the same items, by key),
    and the bytes of their JSON."""
    with contextlib.closing(requests.Session()) as session:
        items, _ = admin(plane, session).list(INGRESSES, limit=PAGE)
    raw = json.dumps(items)
    del items
    gc.collect()
    tracemalloc.start()
    try:
        store = {object_key(obj): obj for obj in json.loads(raw)}
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del store
    return kept, len(raw.encode())


@dataclass(frozen=True)
class InformerRow:
    n: int
    added: int  # Ingresses created for this row
    created: float  # seconds that took
    json_bytes: int
    traced: Sync
    whole: int
    syncs: tuple[Sync, ...]
    relists: tuple[Sync, ...]


def measure_informer(plane: ControlPlane, sizes: Sequence[int], repeats: int) -> list[InformerRow]:
    create_namespace(plane, MEMORY_NS)
    rows = []
    have = 0
    for n in sorted(sizes):
        bodies = [ingress_body(MEMORY_NS, *shop(i)) for i in range(have, n)]
        say(f"[informer] creating {len(bodies)} Ingresses (to {n}) ...")
        created = create_ingresses(plane, bodies)
        have = n
        say(f"[informer] N={n}: tracemalloc run, {repeats} timed syncs, whole objects ...")
        traced = informer_sync(plane, trace=True)
        syncs = tuple(informer_sync(plane, trace=False) for _ in range(repeats))
        relists = tuple(consistent_list(plane) for _ in range(repeats))
        whole, json_bytes = whole_objects(plane)
        rows.append(InformerRow(n, len(bodies), created, json_bytes, traced, whole, syncs, relists))
    return rows


# --- 3: reconcile throughput ----------------------------------------------------------------


@dataclass(frozen=True)
class Throughput:
    workers: int
    rate: float  # write limit, writes/s
    n: int
    total: float  # controller start -> every backend at DESIRED
    ready: float  # controller start -> workers running
    patches: int
    applied_at: tuple[float, ...]  # seconds from start, sorted


def reconcile_run(
    plane: ControlPlane, namespace: str, n: int, *, workers: int, rate: float
) -> Throughput:
    """n annotated Ingresses, each on its own NEG backend service, then start the controller
    and time until every backend service has the timeout."""
    create_namespace(plane, namespace)
    with ComputeFake() as fake:
        names = []
        bodies = []
        for i in range(n):
            service = f"svc-{i:04d}"
            names.append(neg_backend_name(namespace, service, 80, CLUSTER_UID))
            fake.add_backend(names[-1], service=f"{namespace}/{service}")
            bodies.append(ingress_body(namespace, f"ing-{i:04d}", [service]))
        create_ingresses(plane, bodies)
        # as the CLI builds it: one limiter shared by every worker's Compute
        limiter = WriteLimiter(rate, burst=max(1, int(rate)))
        url, project = fake.url, fake.project
        pool = ComputePool(lambda: Compute(project, endpoint=url, limiter=limiter))
        with contextlib.closing(requests.Session()) as session:
            manager = Manager(
                kube=admin(plane, session),
                compute=pool.get,
                settings=plan.Settings(timeout_key=TIMEOUT_KEY, namespaces=frozenset({namespace})),
                state=(namespace, "gke-ingress-timeout-state"),
                instance="bench",
                workers=workers,
            )
            stop = threading.Event()
            thread = threading.Thread(target=manager.run, args=(stop,), name="bench-manager")
            start = time.perf_counter()
            thread.start()
            try:
                ready, applied = _watch_backends(fake, names, manager, start)
            finally:
                stop.set()
                thread.join()
        patches = fake.count("PATCH")
    admin(plane).delete(f"/apis/networking.k8s.io/v1/namespaces/{namespace}/ingresses")
    times = tuple(sorted(t - start for t in applied.values()))
    return Throughput(workers, rate, n, times[-1], ready - start, patches, times)


def compute_round_trip(calls: int = 20) -> float:
    """Seconds per backendServices.get from the controller's Compute client to the fake."""
    with ComputeFake() as fake:
        fake.add_backend("k8s1-bench-probe")
        compute = Compute(fake.project, endpoint=fake.url)
        ref = BackendRef(GLOBAL, "k8s1-bench-probe")
        compute.get(ref)  # connect first
        start = time.perf_counter()
        for _ in range(calls):
            compute.get(ref)
        return (time.perf_counter() - start) / calls


def _watch_backends(
    fake: ComputeFake, names: Sequence[str], manager: Manager, start: float, limit: float = 120.0
) -> tuple[float, dict[str, float]]:
    """When the manager became ready, and when each backend service first showed DESIRED."""
    pending = set(names)
    applied: dict[str, float] = {}
    ready = 0.0
    while pending:
        now = time.perf_counter()
        if not ready and manager.ready.is_set():
            ready = now
        for name in list(pending):
            if fake.backend(name)["timeoutSec"] == DESIRED:
                applied[name] = now
                pending.discard(name)
        if now - start > limit:
            raise RuntimeError(f"{len(pending)} backend services not updated after {limit}s")
        time.sleep(POLL)
    return ready or time.perf_counter(), applied


# --- 4: plan cost ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanRow:
    n: int
    all_annotated: float  # seconds per decide, every Ingress asking for a timeout
    one_annotated: float  # seconds per decide, only the reconciled one asking
    copy: float  # seconds per copy of the store (what a reconcile reads from)


def per_call(fn: Callable[[], object]) -> float:
    """Best of 5 timeit repeats, in seconds per call."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    return min(timer.repeat(repeat=5, number=number)) / number


def measure_plan(sizes: Sequence[int]) -> list[PlanRow]:
    return [
        PlanRow(n, _decide_cost(n, annotate_all=True), *_decide_and_copy_cost(n)) for n in sizes
    ]


def _decide_and_copy_cost(n: int) -> tuple[float, float]:
    store = _plan_store(n, annotate_all=False)
    return _decide_cost(n, annotate_all=False), per_call(lambda: dict(list(store.items())))


def _plan_store(n: int, *, annotate_all: bool) -> dict[str, Ingress]:
    """n Ingresses as the informer keeps them; the middle one always asks for TIMEOUT."""
    store = {}
    for i in range(n):
        asks = annotate_all or i == n // 2
        ingress = from_object(
            ingress_body("plan", *shop(i), timeout=TIMEOUT if asks else None),
            timeout_key=TIMEOUT_KEY,
        )
        store[ingress.key] = ingress
    return store


def _decide_cost(n: int, *, annotate_all: bool) -> float:
    """Seconds per decide for the middle Ingress, on its first apply (no ledger records)."""
    settings = plan.Settings(timeout_key=TIMEOUT_KEY)
    store = _plan_store(n, annotate_all=annotate_all)
    name, services = shop(n // 2)
    key = f"plan/{name}"
    facts: dict[BackendRef, Backend | None] = {}
    for service in services:
        ref = BackendRef(GLOBAL, neg_backend_name("plan", service, 80, CLUSTER_UID))
        facts[ref] = Backend(ref, 30, "fp", f"plan/{service}")
    steps = plan.decide(key, store, facts, {}, settings).steps
    if [s.set_to for s in steps] != [DESIRED] * len(services):
        raise RuntimeError(f"the plan benchmark's input is not what it means to be: {steps}")
    return per_call(lambda: plan.decide(key, store, facts, {}, settings))


# --- output ---------------------------------------------------------------------------------


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def report_informer(rows: Sequence[InformerRow]) -> None:
    base = next((r.traced.kept for r in rows if r.n == 0), 0)
    print("\n1. Informer memory (tracemalloc; the N=0 row is the fixed cost, subtracted below)")
    lines = []
    for r in rows:
        if r.n == 0:
            lines.append(["0", "-", f"{r.traced.kept / 1024:.0f} kB total", "-", "-", "-"])
            continue
        kept = (r.traced.kept - base) / r.n
        whole = r.whole / r.n
        lines.append(
            [
                str(r.n),
                f"{r.json_bytes / r.n:,.0f} B",
                f"{kept:,.0f} B/Ingress",
                f"{whole:,.0f} B/Ingress",
                f"{whole / kept:.1f}x",
                f"{r.traced.peak / r.n:,.0f} B/Ingress",
            ]
        )
    head = ["N", "JSON/object", "store kept", "whole objects", "whole/store", "peak in LIST"]
    print(table(head, lines))
    print(
        "   store kept: what the running informer holds once synced; whole objects: a dict of\n"
        "   json.loads'ed items by key; peak in LIST: most traced at once during the sync."
    )

    print(
        "\n2. Time to initial sync (the informer's first LIST: consistent, limit=500, + transform)"
    )
    lines = []
    for r in rows:
        first = statistics.median(s.seconds for s in r.syncs)
        again = statistics.median(s.seconds for s in r.relists)
        lines.append(
            [
                str(r.n),
                f"{first * 1000:.0f} ms",
                f"{min(s.seconds for s in r.syncs) * 1000:.0f} ms",
                f"{first / r.n * 1e6:.0f} ms" if r.n else "-",
                str(r.syncs[0].pages),
                f"{again * 1000:.0f} ms",
                str(r.relists[0].pages),
                str(r.syncs[0].objects),
                f"{r.added / r.created:.0f}/s" if r.added else "-",
            ]
        )
    head = [
        "N",
        "first sync",
        "best",
        "per 1000",
        "LIST requests",
        "relist (no RV)",
        "LIST requests",
        "in store",
        "create rate",
    ]
    print(table(head, lines))
    print(
        f"   medians of {len(rows[0].syncs)} runs. first sync: informer start -> synced. relist:\n"
        "   a consistent LIST (what follows a 410) + transform. create rate: POSTs from 16\n"
        "   threads while filling the apiserver."
    )


def report_throughput(runs: Sequence[Throughput], paced: Throughput, round_trip: float) -> None:
    print("\n3. Reconcile throughput (controller start -> every backend service at 3600 s)")
    print(
        f"   one Compute call to the fake: {round_trip * 1000:.1f} ms; a reconcile here makes two\n"
        "   (PATCH, GET) plus an Event POST and a ledger PUT to the apiserver."
    )
    lines = []
    for t in runs:
        work = t.total - t.ready
        lines.append(
            [
                str(t.workers),
                f"{t.rate:g}/s",
                str(t.n),
                str(t.patches),
                f"{t.ready:.2f} s",
                f"{t.total:.2f} s",
                f"{t.n / t.total:.1f}/s",
                f"{t.n / work:.1f}/s" if work > 0 else "-",
            ]
        )
    head = [
        "workers",
        "write limit",
        "Ingresses",
        "PATCHes",
        "to ready",
        "to all",
        "reconciles/s",
        "after ready",
    ]
    print(table(head, lines))
    if len(runs) == 2:
        a, b = runs
        print(
            f"   workers={b.workers} vs workers={a.workers}: {a.total / b.total:.2f}x "
            f"(start to all), {(a.total - a.ready) / max(b.total - b.ready, 1e-9):.2f}x "
            "(after ready)"
        )
    times = paced.applied_at
    span = times[-1] - times[0]
    burst = max(1, int(paced.rate))
    expected = (paced.n - burst) / paced.rate
    print(
        f"   default write limit ({paced.rate:g}/s, burst {burst}), workers={paced.workers}, "
        f"{paced.n} Ingresses:\n"
        f"     first to last write: expected {expected:.1f} s, observed {span:.1f} s; "
        f"{1 / paced.rate:.2f} s/write expected, {span / max(paced.n - 1, 1):.2f} s/write observed"
    )


def report_plan(rows: Sequence[PlanRow]) -> None:
    print("\n4. Plan cost: plan.decide for one key (timeit, best of 5)")
    first = rows[0]
    lines = [
        [
            str(r.n),
            f"{r.all_annotated * 1e6:,.1f} µs",
            f"{r.all_annotated / first.all_annotated:,.0f}x",
            f"{r.all_annotated * r.n:,.2f} s",
            f"{r.one_annotated * 1e6:,.1f} µs",
            f"{r.one_annotated / first.one_annotated:,.0f}x",
            f"{r.copy * 1e6:,.1f} µs",
        ]
        for r in rows
    ]
    head = [
        "Ingresses",
        "decide, all annotated",
        f"vs {first.n}",
        "x N (one resync)",
        "decide, 1 annotated",
        f"vs {first.n}",
        "store copy",
    ]
    print(table(head, lines))
    print(
        "   all annotated: every cached Ingress asks for a timeout (worst case); 1 annotated:\n"
        "   only the reconciled one does. x N: decide's CPU for a resync that reconciles every\n"
        "   annotated Ingress. store copy: dict(informer.items()), done once per reconcile."
    )


# --- main -----------------------------------------------------------------------------------


def sizes_arg(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--ingresses", type=sizes_arg, default=[0, 1000, 5000], help="informer N")
    p.add_argument("--plan-sizes", type=sizes_arg, default=[10, 1000, 5000])
    p.add_argument("--reconciles", type=int, default=200, help="Ingresses for throughput")
    p.add_argument("--paced", type=int, default=10, help="Ingresses at the default write rate")
    p.add_argument("--repeats", type=int, default=3, help="timed syncs per N")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    assets = find_assets()
    if assets is None:
        say("no kube-apiserver/etcd/kubectl: run `make bench` (it builds or finds them)")
        return 2
    defaults = config.parse([], {})
    started = time.perf_counter()
    with ControlPlane(assets) as plane:
        print("gke-ingress-timeout benchmark")
        print(
            f"kube-apiserver {plane.version}, Python {platform.python_version()}, "
            f"{os.cpu_count()} CPUs. Everything runs on this machine, which is shared and\n"
            "noisy: absolute numbers are rough; compare ratios within one run."
        )
        sys.stdout.flush()
        say(f"[throughput] {args.reconciles} Ingresses, workers 1 then 4 ...")
        runs = [
            reconcile_run(plane, f"bench-w{w}", args.reconciles, workers=w, rate=1000.0)
            for w in (1, 4)
        ]
        round_trip = compute_round_trip()
        say(f"[throughput] {args.paced} Ingresses at the default write rate ...")
        paced = reconcile_run(
            plane, "bench-paced", args.paced, workers=defaults.workers, rate=defaults.write_rate
        )
        informer_rows = measure_informer(plane, args.ingresses, args.repeats)
    say("[plan] timing decide ...")
    plan_rows = measure_plan(args.plan_sizes)
    report_informer(informer_rows)
    report_throughput(runs, paced, round_trip)
    report_plan(plan_rows)
    print(f"\ntotal run time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
