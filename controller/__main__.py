"""CLI: flags and env, logging, wiring, signals. No decisions live here.

``python -m controller --help`` (or the ``gke-ingress-timeout`` script) lists
every flag with its environment twin.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import requests

from controller import config
from controller.gcp.backends import Compute, GcpError, is_local
from controller.gcp.metadata import cluster_region
from controller.gcp.ratelimit import WriteLimiter
from controller.kube.client import AuthError, KubeClient, KubeConfigError, KubeError
from controller.kube.events import EventQueue, EventRecorder
from controller.kube.lease import LeaderElector, LeaseConfig
from controller.manager import COMPONENT, Manager
from controller.metrics import Metrics
from controller.model import CLUSTER_UID, Settings
from controller.reconciler import Outcome
from controller.server import Server

log = logging.getLogger("controller")
LEASE_NAME = "gke-ingress-timeout"
EXIT_LEASE_HELD = 3  # --once: another replica holds the Lease; nothing was written
INGRESS_UID = "/api/v1/namespaces/kube-system/configmaps/ingress-uid"
SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line)


def setup_logging(cfg: config.Config) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if cfg.log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    )
    logging.basicConfig(level=cfg.log_level, handlers=[handler], force=True)
    if cfg.log_level != "DEBUG":
        logging.getLogger("googleapiclient").setLevel(logging.WARNING)
        # It warns of every rate-limited answer; Compute's Outage says so once an episode.
        logging.getLogger("googleapiclient.http").setLevel(logging.ERROR)


def resolve_project(cfg: config.Config) -> str:
    if cfg.project:
        return cfg.project
    if is_local(cfg.compute_endpoint):
        raise SystemExit("--project (or GOOGLE_CLOUD_PROJECT) is required with a local endpoint")
    import google.auth

    _, project = google.auth.default()
    if not project:
        raise SystemExit("no GCP project: set --project or GOOGLE_CLOUD_PROJECT")
    return str(project)


def state_namespace(cfg: config.Config) -> str:
    if cfg.state_namespace:
        return cfg.state_namespace
    if SA_NAMESPACE.exists():
        return SA_NAMESPACE.read_text().strip()
    return "gke-ingress-timeout"


class CannotStart(Exception):
    """A fact the controller needs before it can act safely is missing."""


def cluster_uid(cfg: config.Config, kube: KubeClient) -> str:
    """This cluster's ingress-gce uid: the flag, else kube-system/ingress-uid."""
    if cfg.cluster_uid:
        return cfg.cluster_uid
    try:
        uid = (kube.get(INGRESS_UID).get("data") or {}).get("uid")
    except KubeError as e:
        if e.status != 404:
            raise
        uid = None
    if not isinstance(uid, str) or not CLUSTER_UID.fullmatch(uid):
        raise CannotStart(
            f"no cluster uid: {INGRESS_UID} has no valid data.uid (is ingress-gce running?); "
            "set --cluster-uid"
        )
    return uid


def build(
    cfg: config.Config, kube: KubeClient, metrics: Metrics, events: EventQueue
) -> Callable[[], Manager]:
    """What a leadership term needs, resolved once; the result makes a fresh Manager
    (queue, index, caches, informer) for each term, all sharing one Compute client
    and the process's Event queue."""
    project = resolve_project(cfg)
    uid = cluster_uid(cfg, kube)
    compute = Compute(
        project,
        endpoint=cfg.compute_endpoint,
        limiter=WriteLimiter(
            cfg.write_rate,
            burst=max(1, int(cfg.write_rate)),
            on_wait=metrics.budget("write", cfg.write_rate),
        ),
        read_limiter=WriteLimiter(
            cfg.read_rate,
            burst=max(1, int(cfg.read_rate)),
            on_wait=metrics.budget("read", cfg.read_rate),
        ),
        on_call=metrics.gcp_call,
        unsafe_endpoint=cfg.unsafe_send_credentials_to_endpoint,
    )
    region = cfg.region or ("" if is_local(cfg.compute_endpoint) else cluster_region())
    settings = Settings(
        timeout_key=f"{cfg.annotation_prefix}/timeout",
        cluster_uid=uid,
        max_timeout=cfg.max_timeout,
        default_timeout=cfg.default_timeout,
        default_draining_timeout=cfg.default_draining_timeout,
        region=region,
        namespaces=cfg.namespaces,
    )
    log.info(
        "kubernetes %r, compute project %s at %s, cluster uid %s, annotation %s",
        kube,
        project,
        cfg.compute_endpoint or "googleapis",
        uid,
        settings.timeout_key,
    )
    return lambda: Manager(
        kube=kube,
        compute=compute,
        settings=settings,
        namespace=state_namespace(cfg),
        legacy_configmap=cfg.state_configmap,
        instance=instance(),
        workers=cfg.workers,
        resync_period=cfg.resync_period,
        dry_run=cfg.dry_run,
        metrics=metrics,
        events=events,
    )


def instance() -> str:
    return os.environ.get("POD_NAME") or socket.gethostname()


def table(outcomes: Sequence[Outcome]) -> str:
    rows = [("BACKEND", "RESULT", "ACTIONS")]
    for o in outcomes:
        result = "error" if o.error else "ok"
        rows.append((o.key, result, "; ".join(o.actions) or o.error or "-"))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{k:<{width}}  {r:<6}  {a}" for k, r, a in rows)


def once(cfg: config.Config, kube: KubeClient, manager: Manager) -> int:
    """--once: reconcile everything once and print the table; 1 if anything failed.

    What writes takes the Lease first, as a replica does, so that it never
    writes beside a running leader: EXIT_LEASE_HELD, having written nothing,
    if it cannot within --lease-wait. A dry run (which writes nothing) and
    --no-leader-elect (one replica, by the user's word) need no Lease.
    """
    if cfg.dry_run or not cfg.leader_elect:
        outcomes = manager.run_once()
    else:
        elector = LeaderElector(kube, lease_config(cfg, "once"))
        done = threading.Event()  # the work has returned: release the Lease
        result: list[list[Outcome] | Exception] = []

        def lead(lost: threading.Event) -> None:
            try:
                result.append(manager.run_once(may_write=elector.holding))
            except Exception as e:  # told on the main thread, like a failure before the Lease
                result.append(e)
            finally:
                done.set()

        if not elector.run(done, lead, give_up_after=cfg.lease_wait):
            lease = f"{elector.config.namespace}/{elector.config.name}"
            holder = elector.holder()
            if holder:
                log.error(
                    "not run: the Lease %s is held by %r (waited %.0f s); --once writes only "
                    "while holding it (stop that replica, or add --dry-run)",
                    lease,
                    holder,
                    cfg.lease_wait,
                )
            else:
                log.error(
                    "not run: could not take the Lease %s within %.0f s", lease, cfg.lease_wait
                )
            return EXIT_LEASE_HELD
        if isinstance(result[0], Exception):
            raise result[0]
        outcomes = result[0]
    print(table(outcomes))
    return 1 if any(o.error for o in outcomes) else 0


# glibc's mallopt parameter for the most malloc arenas; it gives every thread one of its
# own by default, up to 8 a core.
M_ARENA_MAX = -8


def fewer_malloc_arenas(arenas: int = 2) -> bool:
    """Let glibc's malloc share ``arenas`` arenas between the threads, unless the
    environment already says (MALLOC_ARENA_MAX). Each arena keeps what its threads
    freed, and a dozen threads (workers, informers, Events, server) each with its own
    arena hold several MB more than two shared ones, under a 128 MiB limit. Called before
    any thread starts; returns whether malloc took it (False where malloc is not glibc's).
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_ARENA_MAX, arenas))


# Seconds a thread holds the interpreter before another that waits may take it. A worker
# woken by a watch event otherwise waits up to Python's default 5 ms, at each step of its
# way to the PATCH, for a finisher or an Event poster that is parsing or serialising.
SWITCH_INTERVAL = 0.0005


def main(argv: Sequence[str] | None = None) -> int:
    fewer_malloc_arenas()
    sys.setswitchinterval(SWITCH_INTERVAL)
    cfg = config.parse(sys.argv[1:] if argv is None else argv, os.environ)
    setup_logging(cfg)
    try:
        kube = KubeClient.from_environment(cfg.kubeconfig)
        metrics = Metrics()
        events = EventQueue(
            EventRecorder(kube, component=COMPONENT, instance=instance()),
            on_drop=metrics.event_dropped,
            posters=cfg.workers,  # as many as write: the writes do not wait for their Events
        )
        metrics.bind_events(events.waiting)
        new_manager = build(cfg, kube, metrics, events)
        manager = new_manager()
        if cfg.once:
            return once(cfg, kube, manager)
    except (
        KubeConfigError,
        AuthError,
        KubeError,
        GcpError,
        CannotStart,
        requests.RequestException,
    ) as e:
        log.error("cannot start: %s", e)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s: finishing work in flight, then stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with posting(events) as poster:
        if not cfg.leader_elect:
            metrics.leading(lambda: True)
            with serving(cfg, lambda: manager, poster, standing_by=lambda: False):
                manager.run(stop)
        else:
            elector = LeaderElector(kube, lease_config(cfg))
            metrics.leading(elector.is_leader.is_set)
            terms = Terms(elector, new_manager, first=manager)

            def standing_by() -> bool:
                return not elector.is_leader.is_set()

            with serving(cfg, lambda: terms.manager, poster, standing_by=standing_by):
                terms.run(stop)
    log.info("stopped")
    return 0


@contextlib.contextmanager
def posting(events: EventQueue) -> Iterator[threading.Thread]:
    """The Event queue's thread, for the whole process: Events wait across terms and
    outages, and go out before the process ends (after the last term's work)."""
    stop = threading.Event()
    thread = threading.Thread(target=events.run, args=(stop,), name="events")
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join()


def lease_config(cfg: config.Config, role: str = "") -> LeaseConfig:
    """The Lease every replica (and a writing --once) campaigns for, under a fresh identity."""
    identity = "-".join(filter(None, [instance(), role, uuid.uuid4().hex[:6]]))
    return LeaseConfig(state_namespace(cfg), LEASE_NAME, identity)


class Terms:
    """Campaigns and leads until stopped, one fresh Manager a leadership term.

    A term ends when ``stop`` is set, or when the Lease is lost or in doubt;
    then this replica stands by and campaigns again. Each term starts from
    nothing in memory, as a restarted process would: whatever the last term
    knew may have changed while another replica led, and whatever it dropped
    when its fence shut (a write refused in the gap) is queued again by the
    next term's start, which looks at every claimed and recorded backend.
    """

    def __init__(
        self, elector: LeaderElector, new_manager: Callable[[], Manager], *, first: Manager
    ) -> None:
        self.elector = elector
        self.manager = first  # the current term's (or the next one's, standing by)
        self._new_manager = new_manager

    def run(self, stop: threading.Event) -> None:
        while True:
            self.elector.run(stop, self._lead)
            if stop.is_set():
                return
            # The term's work has ended and its fence is shut: standing by is as safe
            # as a restart, and an apiserver outage longer than the renew deadline
            # (a zonal control-plane upgrade) does not turn into a crash loop. Its
            # Events still wait in the process's queue and go out when they can.
            log.info("lost the Lease: stopped writing; campaigning for it again")

    def _lead(self, lost: threading.Event) -> None:
        if self.manager.ran:
            self.manager = self._new_manager()
        self.manager.run(lost, may_write=self.elector.holding)


@contextlib.contextmanager
def serving(
    cfg: config.Config,
    current: Callable[[], Manager],
    poster: threading.Thread,
    standing_by: Callable[[], bool],
) -> Iterator[None]:
    """/healthz, /readyz and /metrics while the controller runs (unless --listen is empty),
    about the ``current`` term's Manager and the process's Event thread."""
    address = config.listen_address(cfg)
    if address is None:
        yield
        return
    server = Server(
        *address,
        metrics=current().metrics,
        healthy=lambda: poster.is_alive() and current().healthy(),
        ready=lambda: standing_by() or current().ready.is_set(),
    )
    with server:
        log.info("serving /healthz, /readyz and /metrics on %s:%d", address[0], server.port)
        yield


if __name__ == "__main__":
    sys.exit(main())
