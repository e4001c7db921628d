"""CLI: flags and env, logging, wiring, signals. No decisions live here.

``python -m controller --help`` (or the ``gke-ingress-timeout`` script) lists
every flag with its environment twin.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from controller import config, plan
from controller.gcp.backends import Compute, ComputePool, is_local
from controller.gcp.metadata import cluster_region
from controller.gcp.ratelimit import WriteLimiter
from controller.kube.client import KubeClient
from controller.manager import Manager
from controller.reconciler import Outcome

log = logging.getLogger("controller")
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


def build(cfg: config.Config) -> Manager:
    kube = KubeClient.from_environment(cfg.kubeconfig)
    project = resolve_project(cfg)
    limiter = WriteLimiter(cfg.write_rate, burst=max(1, int(cfg.write_rate)))
    pool = ComputePool(lambda: Compute(project, endpoint=cfg.compute_endpoint, limiter=limiter))
    region = cfg.region or ("" if is_local(cfg.compute_endpoint) else cluster_region())
    settings = plan.Settings(
        timeout_key=f"{cfg.annotation_prefix}/timeout",
        max_timeout=cfg.max_timeout,
        default_timeout=cfg.default_timeout,
        region=region,
        namespaces=cfg.namespaces,
    )
    log.info(
        "kubernetes %r, compute project %s at %s, annotation %s",
        kube,
        project,
        cfg.compute_endpoint or "googleapis",
        settings.timeout_key,
    )
    return Manager(
        kube=kube,
        compute=pool.get,
        settings=settings,
        state=(state_namespace(cfg), cfg.state_configmap),
        instance=os.environ.get("POD_NAME") or socket.gethostname(),
        workers=cfg.workers,
        resync_period=cfg.resync_period,
        dry_run=cfg.dry_run,
    )


def table(outcomes: Sequence[Outcome]) -> str:
    rows = [("INGRESS", "RESULT", "ACTIONS")]
    for o in outcomes:
        result = "error" if o.error else "ok"
        rows.append((o.key, result, "; ".join(o.actions) or o.error or "-"))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{k:<{width}}  {r:<6}  {a}" for k, r, a in rows)


def main(argv: Sequence[str] | None = None) -> int:
    cfg = config.parse(sys.argv[1:] if argv is None else argv, os.environ)
    setup_logging(cfg)
    manager = build(cfg)
    if cfg.once:
        outcomes = manager.run_once()
        print(table(outcomes))
        return 1 if any(o.error for o in outcomes) else 0
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s: finishing work in flight, then stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    manager.run(stop)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
