"""The scenarios, run the same way against every contender: cold start, restart, health
flips, change latency, forced watch closes, a forced relist, idle. Each returns plain
figures (JSON-ready dicts) about one Seat, a contender at one size, and judges nothing.
"""

from __future__ import annotations

import math
import random
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from bench.apiproxy import WRITES, ApiProxy
from bench.cluster import (
    ASKED_SECONDS,
    BACKENDS_KEY,
    TIMEOUT_KEY,
    Kube,
    backends_value,
    ingresses_path,
)
from bench.contenders import Contender, Process, Where
from tests.fakes.compute import ComputeFake

Figures = dict[str, Any]
METRIC_PREFIX = "gke_ingress_timeout_"  # the product's metrics
PAGE = 500  # most backend services in one Compute list page
POLL = 0.05  # seconds between looks while waiting for something to land
SETTLE = 3.0  # seconds with no call anywhere that count as "done reacting"
# A watch is ended this long after it opened. The apiserver ends them after minutes (7 s
# at the shortest --min-request-timeout tests use); one ended within a second of opening
# looks like a server in trouble, and a careful client backs off from that.
WATCH_AGE = 2.0
_KINDS = {
    "list": "list",
    "get": "get",
    "patch": "patch",
    "update": "patch",
    "operations.get": "op",
    "operations.wait": "op",
}


_START = time.monotonic()


def say(line: str) -> None:
    """Progress, on stderr so stdout holds only the table."""
    print(f"{time.monotonic() - _START:5.0f}s {line}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Options:
    steady: float = 60.0  # seconds of health flips
    flips: float = 5.0  # health flips a second, per contender
    idle: float = 60.0  # seconds of the idle window
    changes: int = 100  # annotation changes timed one at a time
    closes: int = 10  # forced watch closes
    quiet: float = 10.0  # a cold start with no Compute call for this long is over
    cap: float = 900.0  # the longest any one wait lasts
    change_timeout: float = 3.0  # a change not at the fake by then is missed
    paced: float = 60.0  # seconds of one annotation change a second ("changes at size")
    shared_changes: int = 20  # changes of one claimant among many on one backend
    resyncs: int = 5  # full resyncs watched after the cold start (--only resyncs)


@dataclass
class Seat:
    """One contender at one size: its apiserver's client, namespace, Compute fake, proxy
    and process."""

    contender: Contender
    kube: Kube
    where: Where
    fake: ComputeFake
    proxy: ApiProxy
    logdir: Path
    tag: str  # names its logs: the world it is in
    claims: dict[str, list[str]]  # annotated Ingress -> the backend services it names
    backends_total: int  # every backend service in the fake (annotated or not)
    version: str  # of its kube-apiserver
    proc: Process | None = None
    peak_kib: int = 0
    failed: str = ""
    figures: Figures = field(default_factory=dict)
    logs: list[Path] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # source_digest of each run

    @property
    def name(self) -> str:
        return self.contender.name

    @property
    def up(self) -> bool:
        return self.proc is not None and self.proc.alive and not self.failed

    def start(self) -> Process:
        log = self.logdir / f"{self.tag}-{self.name}-{len(self.logs) + 1}.log"
        self.logs.append(log)
        self.proc = Process(self.contender, self.where, log)
        self.sources.append(self.proc.source)
        return self.proc

    def stop(self) -> None:
        if self.proc is not None and self.proc.stop_seconds is None:
            self.proc.vm_hwm_kib()
            self.peak_kib = max(self.peak_kib, self.proc.peak_kib)
            self.proc.stop()
            say(f"[{self.name}] stopped in {self.proc.stop_seconds or 0:.1f} s")

    def fail(self, why: str) -> None:
        tail = self.proc.tail() if self.proc is not None else ""
        self.failed = why
        say(f"[{self.name}] {why}; the last lines of its log:\n{tail}")


# --- counting ---------------------------------------------------------------------------


def compute_counts(fake: ComputeFake) -> Counter[str]:
    """Compute calls so far by kind (list, get, patch, op) and rejected writes."""
    counts: Counter[str] = Counter()
    stats = getattr(fake, "stats", None)
    if stats is not None:  # cheap counters, where this version of the fake has them
        pairs = [(op, status, n) for (op, status), n in stats().items()]
    else:
        pairs = [(_op_of(c.method, c.path), c.status, 1) for c in fake.calls]
    for op, status, n in pairs:
        kind = _KINDS.get(op, "other")
        counts[kind] += n
        if kind == "patch" and status >= 400:
            counts["rejected"] += n
    return counts


def _op_of(method: str, path: str) -> str:
    parts = path.rstrip("/").split("/")
    if "operations" in parts:
        return "operations.wait" if parts[-1] == "wait" else "operations.get"
    if parts[-1] == "backendServices":
        return "list" if method == "GET" else "other"
    return {"GET": "get", "PATCH": "patch", "PUT": "update"}.get(method, "other")


def wait_until(check: Callable[[], bool], timeout: float, interval: float = POLL) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def settle(seat: Seat, cap: float) -> float:
    """Wait until neither the fake nor the proxy has seen a call for SETTLE seconds;
    returns when the last one was."""
    last_counts = compute_counts(seat.fake)
    last_seen = time.monotonic()
    seen_requests = len(seat.proxy.requests())
    deadline = last_seen + cap
    while time.monotonic() - last_seen < SETTLE and time.monotonic() < deadline:
        time.sleep(POLL * 4)
        counts, requests = compute_counts(seat.fake), len(seat.proxy.requests())
        if counts != last_counts or requests != seen_requests:
            last_counts, seen_requests, last_seen = counts, requests, time.monotonic()
    return last_seen


def at_value(fake: ComputeFake, names: Sequence[str], seconds: int = ASKED_SECONDS) -> int:
    return sum(1 for n in names if fake.backend(n)["timeoutSec"] == seconds)


def patched_to(fake: ComputeFake, backend: str, seconds: int, mark: int) -> bool:
    """A PATCH setting `backend` to `seconds` reached the fake after the first `mark` calls."""
    suffix = f"/backendServices/{backend}"
    return any(
        c.method == "PATCH"
        and c.path.endswith(suffix)
        and (c.body or {}).get("timeoutSec") == seconds
        for c in fake.calls_since(mark)
    )


# --- the scenarios ----------------------------------------------------------------------


def cold_start(seat: Seat, opts: Options) -> Figures:
    """Start with every Ingress already annotated and every backend at 30 s; time until
    all are at the asked value, or until Compute has been quiet for opts.quiet."""
    names = sorted({n for backends in seat.claims.values() for n in backends})
    minimum = math.ceil(seat.backends_total / PAGE) + 2 * len(names)
    # Its first Ingress LIST waits at the proxy while its resident set is read: what it
    # holds before any Ingress (interpreter, libraries, clients), its fixed cost.
    seat.proxy.hold("LIST", "ingresses")
    proc = seat.start()
    t0 = proc.started
    try:
        wait_until(lambda: seat.proxy.first("LIST", "ingresses", t0) is not None, 60)
        rss_start = proc.vm_rss_kib()
    finally:
        seat.proxy.release()
    last, last_change, checked, done = Counter[str](), t0, 0.0, None
    while True:
        time.sleep(POLL)
        now = time.monotonic()
        counts = compute_counts(seat.fake)
        if counts != last:
            last, last_change = counts, now
        if counts["patch"] - counts["rejected"] >= len(names) and now - checked > 1.0:
            checked = now
            if at_value(seat.fake, names) == len(names):
                done = now
                break
        if not proc.alive:
            seat.fail(f"exited with {proc.proc.returncode} during the cold start")
            break
        watching = seat.proxy.first("WATCH", "ingresses", t0)
        if watching is not None and now - max(watching, last_change) > opts.quiet:
            break
        if now - t0 > opts.cap:
            break
    if done is not None:
        settle(seat, opts.cap)  # the last operation waits come after the last write lands
        last = compute_counts(seat.fake)
    watching = seat.proxy.first("WATCH", "ingresses", t0)
    return {
        "backends": len(names),
        "at_value": at_value(seat.fake, names),
        "seconds": None if done is None else done - t0,
        "to_watch": None if watching is None else watching - t0,
        "calls": dict(last),
        "minimum": minimum,
        "ingress_lists": lists(seat.proxy, t0),
        "api_writes": api_writes(seat.proxy, t0),
        "rss_start_kib": rss_start,
    }


def lists(proxy: ApiProxy, since: float) -> dict[str, int]:
    """Ingress LISTs it started, and the requests (pages) they took."""
    counts = proxy.counts(since)
    first = counts[("LIST", "ingresses")]
    return {"lists": first, "pages": first + counts[("LIST_PAGE", "ingresses")]}


def api_writes(proxy: ApiProxy, since: float) -> int:
    """Writes it sent to the apiserver (any resource: Events, its records, Ingresses)."""
    return sum(n for (verb, _), n in proxy.counts(since).items() if verb in WRITES)


def restart(seat: Seat, opts: Options) -> Figures:
    """Stop it and start it again with everything already right: what it reads and writes
    before it is quiet again, and how long until it watches (and, for the product, is ready)."""
    seat.stop()
    stopped_in = seat.proc.stop_seconds if seat.proc else None
    before = compute_counts(seat.fake)
    proc = seat.start()
    t0 = proc.started
    ready = None
    readyz = seat.contender.has_readyz
    if readyz and wait_until(lambda: proc.ready() or not proc.alive, opts.cap) and proc.alive:
        ready = time.monotonic() - t0
    wait_until(
        lambda: seat.proxy.first("WATCH", "ingresses", t0) is not None or not proc.alive, opts.cap
    )
    if not proc.alive:
        seat.fail(f"exited with {proc.proc.returncode} after a restart")
        return {}
    settle(seat, opts.cap)
    watching = seat.proxy.first("WATCH", "ingresses", t0)
    return {
        "stopped_in": stopped_in,
        "to_watch": None if watching is None else watching - t0,
        "to_ready": ready,
        "calls": dict(compute_counts(seat.fake) - before),
        "ingress_lists": lists(seat.proxy, t0),
        "api_writes": api_writes(seat.proxy, t0),
    }


def _change(seat: Seat, ingress: str, value: int) -> None:
    body = {"metadata": {"annotations": {TIMEOUT_KEY: str(value)}}}
    seat.kube.merge_patch(ingresses_path(seat.where.namespace, ingress), body)


def _spread(items: Sequence[str], k: int, offset: int = 0) -> list[str]:
    """k items spread over the whole list (wrapping when k exceeds it)."""
    step = max(1, len(items) // max(k, 1))
    return [items[(offset + i * step) % len(items)] for i in range(k)]


def latency(seat: Seat, opts: Options) -> Figures:
    """Change the annotation of one Ingress at a time to a new value: seconds from the
    PATCH sent to the apiserver until the PATCH with that value reaches the fake."""
    seen: list[float] = []
    ingresses = list(seat.claims)
    for i, ingress in enumerate(_spread(ingresses, opts.changes)):
        value = ASKED_SECONDS + 1 + i
        backend = seat.claims[ingress][0]
        mark = seat.fake.call_count()
        t0 = time.monotonic()
        _change(seat, ingress, value)
        if wait_until(
            lambda: patched_to(seat.fake, backend, value, mark),  # noqa: B023
            opts.change_timeout,
            interval=0.002,
        ):
            seen.append(time.monotonic() - t0)
        if not seat.up:
            break
    return {"changes": opts.changes, "seen": len(seen), "seconds": seen}


def paced(seat: Seat, opts: Options) -> Figures:
    """One annotation change a second for opts.paced seconds, each to a new value on an
    Ingress of its own: the latency of each (as in `latency`) and the CPU the contender
    spent per change, to compare between sizes."""
    if seat.proc is None:
        return {}
    ingresses = _spread(list(seat.claims), max(1, int(opts.paced)), offset=len(seat.claims) // 3)
    # What the scenario before left to finish (a burst's outcomes and Events, which a
    # contender may finish after its PATCHes) is not this one's to count.
    settle(seat, opts.cap)
    cpu0, t0, seen = seat.proc.cpu_seconds(), time.monotonic(), []
    for i, ingress in enumerate(ingresses):
        time.sleep(max(0.0, t0 + i - time.monotonic()))
        value = ASKED_SECONDS + 2000 + i
        backend, mark, sent = seat.claims[ingress][0], seat.fake.call_count(), time.monotonic()
        _change(seat, ingress, value)
        if wait_until(
            lambda: patched_to(seat.fake, backend, value, mark),  # noqa: B023
            min(opts.change_timeout, 0.95),
            interval=0.002,
        ):
            seen.append(time.monotonic() - sent)
        if not seat.up:
            break
    settle(seat, opts.cap)
    cpu = seat.proc.cpu_seconds() - cpu0
    return {
        "changes": len(ingresses),
        "seen": len(seen),
        "seconds": seen,
        "cpu": cpu,
        "cpu_per_change": cpu / len(ingresses),
    }


def shared_changes(seat: Seat, opts: Options) -> Figures:
    """Every Ingress on one backend service: one of them changes its timeout, each time to
    the largest (so each change is a write), opts.shared_changes times, one at a time.
    CPU, apiserver writes and Events per change."""
    if seat.proc is None:
        return {}
    ingress = next(iter(seat.claims))
    backend = seat.claims[ingress][0]
    cpu0, t0, seen = seat.proc.cpu_seconds(), time.monotonic(), []
    for i in range(opts.shared_changes):
        value, mark, sent = ASKED_SECONDS + 100 + i, seat.fake.call_count(), time.monotonic()
        _change(seat, ingress, value)
        if wait_until(
            lambda: patched_to(seat.fake, backend, value, mark),  # noqa: B023
            opts.change_timeout * 10,
            interval=0.002,
        ):
            seen.append(time.monotonic() - sent)
        settle(seat, opts.cap)  # its Events and records too, before the next change
        if not seat.up:
            break
    n = max(opts.shared_changes, 1)
    counts = seat.proxy.counts(t0)
    events = sum(
        k for (verb, resource), k in counts.items() if verb in WRITES and resource == "events"
    )
    return {
        "changes": opts.shared_changes,
        "seen": len(seen),
        "seconds": seen,
        "cpu_per_change": (seat.proc.cpu_seconds() - cpu0) / n,
        "events_per_change": events / n,
        "api_writes_per_change": api_writes(seat.proxy, t0) / n,
    }


def watch_closes(seat: Seat, opts: Options) -> Figures:
    """End its Ingress watch cleanly `closes` times, each WATCH_AGE after it opened, and
    change one Ingress while it is away: are the changes applied, does it LIST again?"""
    t0 = time.monotonic()
    applied = cut = 0
    ingresses = list(seat.claims)
    for i, ingress in enumerate(_spread(ingresses, opts.closes, offset=len(ingresses) // 2)):
        if not wait_until(
            lambda: seat.proxy.open_watches("ingresses", WATCH_AGE) > 0 or not seat.up, 60
        ):
            continue
        value = ASKED_SECONDS + 1000 + i
        mark = seat.fake.call_count()
        cut += seat.proxy.cut_watches("ingresses", hold=True)
        try:
            _change(seat, ingress, value)
        finally:
            seat.proxy.release()
        backend = seat.claims[ingress][0]
        applied += wait_until(
            lambda: patched_to(seat.fake, backend, value, mark),  # noqa: B023
            opts.change_timeout,
        )
    return {
        "closes": opts.closes,
        "cut": cut,
        "applied": applied,
        "ingress_lists": lists(seat.proxy, t0),
        "ingress_watches": seat.proxy.counts(t0)[("WATCH", "ingresses")],
    }


def forced_relist(seat: Seat, opts: Options) -> Figures:
    """End its Ingress watch with a 410 Expired ERROR event, as the apiserver does when the
    watch's resourceVersion has left its history, so that it must LIST every Ingress again:
    its peak resident set over that relist (VmHWM reset just before), the Ingress LISTs it
    made (1 due) and the Compute writes (0 due: nothing changed)."""
    proc = seat.proc
    if proc is None or not wait_until(
        lambda: seat.proxy.open_watches("ingresses", WATCH_AGE) > 0 or not seat.up, 60
    ):
        return {}
    settle(seat, opts.cap)
    before = compute_counts(seat.fake)
    rss_before = proc.vm_rss_kib()
    proc.reset_peak()
    t0 = time.monotonic()
    expired = seat.proxy.cut_watches("ingresses", hold=False, expire=True)
    watching = wait_until(
        lambda: seat.proxy.first("WATCH", "ingresses", t0) is not None or not seat.up, opts.cap
    )
    again = time.monotonic() - t0 if watching and seat.up else None
    settle(seat, opts.cap)
    return {
        "expired": expired,
        "rss_before_kib": rss_before,
        "peak_kib": proc.vm_hwm_kib(),
        "rss_after_kib": proc.vm_rss_kib(),
        "to_watch": again,
        "ingress_lists": lists(seat.proxy, t0),
        "calls": dict(compute_counts(seat.fake) - before),
    }


def _metric(proc: Process, name: str) -> float | None:
    """The sum of a metric's samples at the product's /metrics; None when unreachable."""
    try:
        text = requests.get(f"http://127.0.0.1:{proc.port}/metrics", timeout=5).text
    except requests.RequestException:
        return None
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(METRIC_PREFIX + name) and line[len(METRIC_PREFIX + name)] in " {"
    ]
    return sum(values) if values else None


def resyncs(seat: Seat, opts: Options) -> Figures:
    """Let opts.resyncs full resyncs happen (the product started with a short
    --resync-period, through its environment twin) and read its resident set after each,
    once its queue is empty and its reconciles have stopped: does memory grow with each
    resync? VmHWM is started again after each reading, so each peak is one resync's."""
    proc = seat.proc
    if proc is None or not proc.contender.has_readyz:
        return {}
    settle(seat, opts.cap)
    proc.reset_peak()
    rows = [{"rss_kib": proc.vm_rss_kib(), "peak_kib": proc.vm_hwm_kib()}]
    for _ in range(opts.resyncs):
        last = _metric(proc, "last_sync_timestamp_seconds")

        def resynced(last: float | None = last) -> bool:
            return _metric(proc, "last_sync_timestamp_seconds") != last or not seat.up

        if not wait_until(resynced, opts.cap, interval=0.5):
            break
        # Done: nothing queued and no reconcile finished for SETTLE seconds.
        seen, since = _metric(proc, "reconciles_total"), time.monotonic()
        while seat.up and time.monotonic() - since < SETTLE:
            time.sleep(0.5)
            now = _metric(proc, "reconciles_total")
            if now != seen or _metric(proc, "queue_depth"):
                seen, since = now, time.monotonic()
        rows.append({"rss_kib": proc.vm_rss_kib(), "peak_kib": proc.vm_hwm_kib()})
        say(
            f"[{seat.name}] resync {len(rows) - 1}: VmRSS {rows[-1]['rss_kib'] / 1024:.1f} MiB, "
            f"VmHWM {rows[-1]['peak_kib'] / 1024:.1f} MiB"
        )
        proc.reset_peak()
    return {"after": rows}


def steady(seats: Sequence[Seat], opts: Options) -> dict[str, Figures]:
    """All contenders at once: ingress-gce's health checks flip a backend's state in the
    backends annotation `flips` times a second each, for opts.steady seconds. Nothing asks
    for a new timeout, so every Compute write is one too many."""
    live = [s for s in seats if s.up]
    before = {s.name: (compute_counts(s.fake), s.proc.cpu_seconds()) for s in live if s.proc}
    t0 = time.monotonic()
    flips: Counter[str] = Counter()

    def flip(seat: Seat, seed: int) -> None:
        rng = random.Random(seed)
        ingresses = list(seat.claims)
        unhealthy: set[str] = set()
        k = 0
        while (due := t0 + k / opts.flips) < t0 + opts.steady:
            time.sleep(max(0.0, due - time.monotonic()))
            ingress = rng.choice(ingresses)
            health = "HEALTHY" if ingress in unhealthy else "UNHEALTHY"
            unhealthy ^= {ingress}
            body = {
                "metadata": {
                    "annotations": {BACKENDS_KEY: backends_value(seat.claims[ingress], health)}
                }
            }
            seat.kube.merge_patch(ingresses_path(seat.where.namespace, ingress), body)
            flips[seat.name] += 1
            k += 1

    # one seed for all: each contender sees the same flips of the same Ingresses
    threads = [threading.Thread(target=flip, args=(s, 9)) for s in live]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for seat in live:
        settle(seat, opts.cap)
    figures = {}
    for seat in live:
        counts, cpu = before[seat.name]
        after = compute_counts(seat.fake) - counts
        figures[seat.name] = {
            "seconds": opts.steady,
            "flips": flips[seat.name],
            "writes": after["patch"],
            "reads": after["get"] + after["list"] + after["op"],
            "api_writes": api_writes(seat.proxy, t0),
            "cpu": seat.proc.cpu_seconds() - cpu if seat.proc else None,
        }
    return figures


def idle(seats: Sequence[Seat], opts: Options) -> dict[str, Figures]:
    """All contenders at once, nothing changing: CPU each spends in opts.idle seconds."""
    live = [s for s in seats if s.up and s.proc]
    before = {s.name: s.proc.cpu_seconds() for s in live if s.proc}
    time.sleep(opts.idle)
    return {
        s.name: {"seconds": opts.idle, "cpu": s.proc.cpu_seconds() - before[s.name]}
        for s in live
        if s.proc and s.up
    }


def median_and_p99(values: Sequence[float]) -> tuple[float, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return statistics.median(ordered), ordered[math.ceil(0.99 * len(ordered)) - 1]
