"""The benchmark's CLI: the product against the same job written with kopf and as the
2018 talk designed it, each a process against its own real kube-apiserver and a Compute
fake; prints one table side by side, writes the figures as JSON, asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.apiproxy import ApiProxy
from bench.cluster import (
    ASKED,
    LATENCY,
    OP_DELAY,
    ROOT,
    Kube,
    add_backends,
    add_default_backend,
    create_all,
    create_namespace,
    ingress_body,
    new_fake,
    prepare,
    shared_backend_name,
)
from bench.contenders import CONTENDERS, WORKERS, Contender, Where, write_kubeconfig
from bench.report import table
from bench.scenarios import (
    Figures,
    Options,
    Seat,
    cold_start,
    forced_relist,
    idle,
    latency,
    paced,
    restart,
    resyncs,
    say,
    shared_changes,
    steady,
    watch_closes,
)
from tests.ground.controlplane import ControlPlane, find_assets

NAMESPACE = "shop"  # every contender's Ingresses, each in its own apiserver
# The scenarios of a full run after the cold start, which --only narrows to some.
SCENARIOS = ("restart", "latency", "paced", "closes", "relist", "resyncs", "steady", "idle")
# A full run leaves out the resyncs: at the product's own period they take an hour.
DEFAULT = tuple(s for s in SCENARIOS if s != "resyncs")
MIX_SIZE = 10000
SHARED_SIZE = 1000


@dataclass(frozen=True)
class Spec:
    """One Ingress to create: its Services, the timeout it asks for and its class."""

    name: str
    services: tuple[str, ...]
    timeout: str | None = ASKED
    ingress_class: str = "gce"
    backends: tuple[str, ...] | None = None  # instead of one NEG per Service


Layout = Callable[[int], list[Spec]]


def uniform(n: int) -> list[Spec]:
    """n annotated GCE Ingresses, each on its own backend service."""
    return [Spec(f"ing-{i:05d}", (f"svc-{i:05d}",)) for i in range(n)]


def mix(n: int) -> list[Spec]:
    """A cluster where few Ingresses ask: a tenth are annotated GCE Ingresses with two
    backends each; of the rest, half GCE without the annotation (their backend services
    exist too), half another class, every other one of those annotated all the same."""
    annotated = n // 10
    specs = []
    for i in range(n):
        name, svc = f"ing-{i:05d}", f"svc-{i:05d}"
        if i < annotated:
            specs.append(Spec(name, (f"{svc}-web", f"{svc}-ws")))
        elif i < annotated + (n - annotated) // 2:
            specs.append(Spec(name, (svc,), timeout=None))
        else:
            specs.append(
                Spec(name, (svc,), timeout=ASKED if i % 2 else None, ingress_class="nginx")
            )
    return specs


def shared(n: int) -> list[Spec]:
    """n annotated Ingresses routing to one Service on one instance-group backend service,
    as one Ingress per customer on a shared Service is."""
    return [Spec(f"ing-{i:05d}", ("web",), backends=(shared_backend_name(),)) for i in range(n)]


def open_seat(
    stack: contextlib.ExitStack,
    plane: ControlPlane,
    contender: Contender,
    specs: Sequence[Spec],
    logdir: Path,
    tag: str,
) -> Seat:
    """The contender's own apiserver prepared, `specs` created in one namespace, its own
    Compute fake holding their backend services, and its proxy; not started yet."""
    kube = Kube(plane)
    stack.callback(kube.close)
    prepare(plane)
    create_namespace(kube, NAMESPACE)
    fake = new_fake()
    stack.callback(fake.stop)
    add_default_backend(fake)
    claims: dict[str, list[str]] = {}
    total, made = 1, set[str]()
    for spec in specs:
        if spec.ingress_class == "gce":
            if spec.backends is None:
                names = add_backends(fake, NAMESPACE, spec.services)
            else:
                names = list(spec.backends)
                for name in set(names) - made:
                    fake.add_backend(name, service=f"{NAMESPACE}/{spec.services[0]}")
            total += len(set(names) - made)
            made.update(names)
            if spec.timeout is not None:
                claims[spec.name] = names
    bodies = [
        ingress_body(
            NAMESPACE,
            s.name,
            s.services,
            timeout=s.timeout,
            ingress_class=s.ingress_class,
            backends=s.backends,
        )
        for s in specs
    ]
    started = time.monotonic()
    create_all(kube, bodies)
    say(
        f"  {contender.name}: {len(bodies)} Ingresses created in {time.monotonic() - started:.0f} s"
    )
    port = int(plane.url.rsplit(":", 1)[1])
    proxy = stack.enter_context(
        ApiProxy(
            port,
            cert=plane.ca_file,  # self-signed: the serving certificate is its own CA
            key=str(plane.workdir / "serving.key"),
            ca=plane.ca_file,
        )
    )
    kubeconfig = write_kubeconfig(
        logdir / f"{tag}-{contender.name}.kubeconfig",
        proxy.url,
        plane.ca_file,
        plane.admin_token,
    )
    seat = Seat(
        contender=contender,
        kube=kube,
        where=Where(kubeconfig, fake.url, NAMESPACE),
        fake=fake,
        proxy=proxy,
        logdir=logdir,
        tag=tag,
        claims=claims,
        backends_total=total,
        version=plane.version,
    )
    stack.callback(seat.stop)
    return seat


@contextlib.contextmanager
def still_heap() -> Iterator[None]:
    """Keep this process's own garbage collector out of the contenders' figures while
    a scenario runs. The Compute fakes and the proxies run in this process, beside every
    Ingress spec, fake backend service, call and request the harness holds; at 10,000
    Ingresses a full collection of all that took 130-160 ms, the fakes stood still
    meanwhile, and every twelfth change or so was timed that much slower (more often for
    a contender whose calls leave more behind). So what is held is frozen (never
    traversed again) and nothing is collected until the scenario is over."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def run_world(
    assets: Path,
    title: str,
    layout: Layout,
    n: int,
    opts: Options,
    contenders: Sequence[Contender],
    logdir: Path,
    *,
    full: bool,
    steps: Sequence[tuple[str, Callable[[Seat, Options], Figures]]] = (),
    only: frozenset[str] = frozenset(DEFAULT),
) -> dict[str, Figures]:
    """Every contender on the same layout, each with its own apiserver. Cold start (and
    with `full` restart, latency, changes at a pace and watch closes; else `steps`) one
    contender at a time; the health flips (with `full`) and the idle window for all of
    them at once. `only` leaves out the other scenarios of a full run."""
    with contextlib.ExitStack() as stack:
        say(f"[{title}] an apiserver and {n} Ingresses for each contender ...")
        # One apiserver each: the product watches every namespace, so a shared one would
        # show it the others' Ingresses too. Started one by one: ControlPlane picks its
        # free ports before it binds them, so starts side by side can pick the same one.
        planes = [ControlPlane(assets) for _ in contenders]
        for plane in planes:
            stack.callback(plane.stop)
            plane.start()
        specs, tag = layout(n), f"{layout.__name__}{n}"
        seats = [
            open_seat(stack, p, c, specs, logdir, tag)
            for p, c in zip(planes, contenders, strict=True)
        ]
        for seat in seats:
            say(f"[{title}] {seat.name}: cold start ...")
            with still_heap():
                seat.figures["cold"] = cold_start(seat, opts)
            if not seat.up:
                continue
            todo = list(steps)
            if full:
                say(
                    f"[{title}] {seat.name}: restart, {opts.changes} changes, "
                    f"{opts.paced:.0f} s of a change a second, {opts.closes} closes, "
                    "a forced relist ..."
                )
                todo = [
                    (key, step)
                    for key, step in (
                        ("restart", restart),
                        ("latency", latency),
                        ("paced", paced),
                        ("closes", watch_closes),
                        ("relist", forced_relist),
                        ("resyncs", resyncs),
                    )
                    if key in only
                ]
            for key, step in todo:
                if seat.up:
                    say(f"[{title}] {seat.name}: {key} ...")
                    with still_heap():
                        seat.figures[key] = step(seat, opts)
        if full and "steady" in only:
            say(f"[{title}] health flips for {opts.steady:.0f} s, every contender at once ...")
            with still_heap():
                flipped = steady(seats, opts)
            for name, figures in flipped.items():
                next(s for s in seats if s.name == name).figures["steady"] = figures
        if "idle" in only:
            say(f"[{title}] idle for {opts.idle:.0f} s, every contender at once ...")
            with still_heap():
                quiet = idle(seats, opts)
            for name, figures in quiet.items():
                next(s for s in seats if s.name == name).figures["idle"] = figures
        for seat in seats:
            seat.stop()
            seat.figures["peak_kib"] = seat.peak_kib
            seat.figures["failed"] = seat.failed
            seat.figures["logs"] = [str(p) for p in seat.logs]
            seat.figures["sources"] = seat.sources
            seat.figures["kube_apiserver"] = seat.version
        return {s.name: s.figures for s in seats}


def product_version() -> str:
    """The commit the product was run at, and whether controller/ differed from it."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
        return done.stdout.strip()

    head = git("log", "-1", "--format=%h %s") or "unknown commit"
    changed = [
        line for line in git("status", "--porcelain", "--", "controller").splitlines() if line
    ]
    return f"{head}" + (
        f" + uncommitted changes to {len(changed)} files in controller/" if changed else ""
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--sizes", default="200,2000", help="Ingresses per contender, comma-separated")
    p.add_argument("--size", type=int, help="one size instead, e.g. 10000 (adds the realistic mix)")
    p.add_argument("--mix-size", type=int, default=MIX_SIZE, help="Ingresses in the realistic mix")
    p.add_argument("--smoke", action="store_true", help="size 50 once, short windows (CI)")
    p.add_argument("--steady", type=float, default=60.0, help="seconds of health flips")
    p.add_argument("--long", action="store_true", help="10 minutes of health flips")
    p.add_argument("--flips", type=float, default=5.0, help="health flips a second per contender")
    p.add_argument("--idle", type=float, default=60.0, help="seconds of the idle window")
    p.add_argument("--changes", type=int, default=100, help="annotation changes timed")
    p.add_argument("--closes", type=int, default=10, help="forced watch closes")
    p.add_argument("--paced", type=float, default=60.0, help="seconds of a change a second")
    p.add_argument(
        "--shared",
        type=int,
        default=SHARED_SIZE,
        help="Ingresses on one shared backend service (0: not that world)",
    )
    p.add_argument(
        "--mix",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"the realistic mix (default: when {MIX_SIZE} is a size); --sizes '' --mix: it alone",
    )
    p.add_argument(
        "--only",
        default=",".join(DEFAULT),
        help="the scenarios after each cold start, comma-separated (latency needs restart "
        "before it to time changes on listed backends, as the full run does)",
    )
    p.add_argument("--resyncs", type=int, default=5, help="full resyncs watched (resyncs)")
    p.add_argument(
        "--resync-period",
        type=float,
        help="the product's --resync-period in seconds (default: its own, 10 minutes)",
    )
    p.add_argument("--contenders", default=",".join(c.name for c in CONTENDERS))
    p.add_argument("--json", default=str(ROOT / "bench" / "results.json"), help="figures go here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    assets = find_assets()
    if assets is None:
        say("no kube-apiserver/etcd/kubectl: run `make bench` (it builds or finds them)")
        return 2
    sizes = [args.size] if args.size else [int(s) for s in args.sizes.split(",") if s.strip()]
    opts = Options(
        steady=600.0 if args.long else args.steady,
        flips=args.flips,
        idle=args.idle,
        changes=args.changes,
        closes=args.closes,
        paced=args.paced,
        resyncs=args.resyncs,
    )
    if args.resync_period:
        # Through its environment twin: reaches the product and the baseline, which the
        # peers (no resync of their own) ignore.
        os.environ["INGRESS_TIMEOUT_RESYNC_PERIOD"] = str(args.resync_period)
    shared_size = args.shared
    if args.smoke:
        sizes, shared_size = [50], 50
        opts = Options(
            steady=5.0, idle=5.0, changes=10, closes=3, quiet=5.0, paced=5.0, shared_changes=3
        )
    with_mix = args.mix if args.mix is not None else MIX_SIZE in sizes and not args.smoke
    chosen = args.contenders.split(",")
    contenders = [c for c in CONTENDERS if c.name in chosen]
    logdir = Path(tempfile.mkdtemp(prefix="gke-ingress-timeout-bench-"))
    say(f"contenders' logs and kubeconfigs: {logdir}")
    started = time.monotonic()
    results: dict[str, Any] = {
        "meta": {
            "product": product_version(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "compute_latency": LATENCY,
            "operation_delay": OP_DELAY,
            "workers": WORKERS,
            "options": vars(opts),
            "logs": str(logdir),
        },
        "sizes": {},
    }
    only = frozenset(s for s in args.only.split(",") if s)
    unknown = only - set(SCENARIOS)
    if unknown:
        say(f"--only: no such scenario {', '.join(sorted(unknown))}; there are {SCENARIOS}")
        return 2
    for n in sizes:
        results["sizes"][str(n)] = run_world(
            assets, f"N={n}", uniform, n, opts, contenders, logdir, full=True, only=only
        )
    if shared_size:
        n = shared_size
        results["shared"] = {
            "title": f"shared backend: {n} Ingresses on one, one of them changing",
            "contenders": run_world(
                assets,
                "shared",
                shared,
                n,
                opts,
                contenders,
                logdir,
                full=False,
                steps=[("shared", shared_changes)],
                only=only,
            ),
        }
    if with_mix:
        n = args.mix_size
        results["mix"] = {
            "title": f"realistic mix: {n} Ingresses, {n // 10} annotated with 2 backends each",
            "contenders": run_world(
                assets, "mix", mix, n, opts, contenders, logdir, full=False, only=only
            ),
        }
    results["meta"]["seconds"] = time.monotonic() - started
    worlds = [
        *results["sizes"].values(),
        results.get("mix", {}).get("contenders", {}),
        results.get("shared", {}).get("contenders", {}),
    ]
    versions = {f.get("kube_apiserver") for world in worlds for f in world.values()}
    results["meta"]["kube_apiserver"] = ", ".join(sorted(v for v in versions if v))
    Path(args.json).write_text(json.dumps(results, indent=1))
    print(header(results, contenders))
    print(table(results, [c.name for c in contenders]))
    print(f"\nfigures: {args.json}; total run time {results['meta']['seconds']:.0f} s")
    return 0


def header(results: dict[str, Any], contenders: Sequence[Contender]) -> str:
    meta = results["meta"]
    lines = [
        "gke-ingress-timeout benchmark: the product and two peers doing the same job",
        f"product at {meta['product']}",
        f"kube-apiserver {meta['kube_apiserver']} (one per contender), Python {meta['python']}, "
        f"{meta['cpus']} CPUs",
        f"Compute fake: {meta['compute_latency'] * 1000:.0f} ms a call, operations DONE "
        f"{meta['operation_delay'] * 1000:.0f} ms after their write; {meta['workers']} workers "
        "each, no write limit. Shared noisy machine: compare within one run.",
    ]
    lines += [f"  {c.name}: {c.what}" for c in contenders]
    worlds = [
        *results["sizes"].values(),
        results.get("mix", {}).get("contenders", {}),
        results.get("shared", {}).get("contenders", {}),
    ]
    for c in contenders:
        ran = {s for world in worlds for s in (world.get(c.name) or {}).get("sources", [])}
        if len(ran) > 1:
            lines.append(
                f"  NOTE: {c.name}'s code changed while this ran ({c.source}/ was edited): "
                f"{len(ran)} versions of it ran, so its figures mix them"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
