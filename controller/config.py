"""One frozen Config built from flags, each with an environment-variable twin.

``parse(argv, env)`` is the whole story: the flag wins, then
``INGRESS_TIMEOUT_<FLAG>``, then the default; ``--help`` lists both.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from controller.model import CLUSTER_UID

ENV_PREFIX = "INGRESS_TIMEOUT_"
DEFAULT_PREFIX = "ingress-timeout.dev"


@dataclass(frozen=True)
class Config:
    kubeconfig: str | None
    project: str | None
    region: str
    compute_endpoint: str | None
    annotation_prefix: str
    default_timeout: int
    max_timeout: int
    default_draining_timeout: int
    namespaces: frozenset[str]
    workers: int
    write_rate: float
    read_rate: float
    cluster_uid: str
    unsafe_send_credentials_to_endpoint: bool
    resync_period: float
    state_namespace: str | None
    state_configmap: str
    dry_run: bool
    once: bool
    lease_wait: float
    log_format: str
    log_level: str
    listen: str
    leader_elect: bool


# (flag, type, default, help). The env twin is derived from the flag.
_FLAGS: list[tuple[str, type, object, str]] = [
    (
        "kubeconfig",
        str,
        None,
        "kubeconfig file; default: in-cluster service account, else $KUBECONFIG or ~/.kube/config",
    ),
    (
        "project",
        str,
        None,
        "GCP project of the backend services; default: "
        "$GOOGLE_CLOUD_PROJECT, the credentials' project, then the metadata server",
    ),
    (
        "region",
        str,
        "",
        "region of regional backend services (gce-internal, "
        "gce-regional-external Ingresses); default: the metadata server's cluster location",
    ),
    (
        "compute-endpoint",
        str,
        None,
        "Compute API endpoint, e.g. http://127.0.0.1:8089/compute/v1/ "
        "for an emulator (then anonymous credentials); default: Google's. Credentials go "
        "only to Google over https or to a loopback endpoint",
    ),
    (
        "cluster-uid",
        str,
        "",
        "this cluster's ingress-gce uid: only backend services whose names carry it are "
        "ever touched; default: read from the ConfigMap kube-system/ingress-uid",
    ),
    (
        "annotation-prefix",
        str,
        DEFAULT_PREFIX,
        "users annotate <prefix>/timeout, <prefix>/timeouts and <prefix>/draining-timeout",
    ),
    ("default-timeout", int, 30, "seconds restored when no Ingress asks any more"),
    (
        "default-draining-timeout",
        int,
        0,
        "connection-draining seconds restored when no Ingress asks any more (0..3600)",
    ),
    ("max-timeout", int, 86400, "largest timeout accepted, in seconds (1..86400)"),
    ("namespaces", str, "", "comma-separated namespaces whose Ingresses count; default: all"),
    ("workers", int, 4, "reconciles (and Compute calls) in flight at once"),
    (
        "write-rate",
        float,
        1.0,
        "backend-service writes per second, all workers together "
        "(the Compute quota is shared with ingress-gce)",
    ),
    (
        "read-rate",
        float,
        10.0,
        "backend-service and operation reads per second, all workers together",
    ),
    ("resync-period", float, 600.0, "seconds between full resyncs (jittered up to +10%%)"),
    (
        "state-namespace",
        str,
        None,
        "namespace of the BackendTimeout records of what was applied; "
        "default: the pod's own namespace, else gke-ingress-timeout",
    ),
    (
        "state-configmap",
        str,
        "gke-ingress-timeout-state",
        "the ConfigMap in which versions before 0.2 kept their records: moved over at start",
    ),
    (
        "lease-wait",
        float,
        20.0,
        "with --once: seconds to wait for the Lease while another replica holds it (one "
        "that died lets go within 15 s), then exit 3 naming the holder",
    ),
    ("log-format", str, "human", "human or json"),
    ("log-level", str, "info", "debug logs every HTTP call to both APIs"),
    ("listen", str, "0.0.0.0:8080", "address of /healthz, /readyz and /metrics; empty: none"),
]
_SWITCHES = [
    ("dry-run", "plan and log, change nothing in GCP"),
    (
        "once",
        "reconcile every Ingress once, print a table, exit non-zero on failure; "
        "writes only while holding the Lease, as a replica does",
    ),
    ("no-leader-elect", "act without holding the Lease (only ever run one replica then)"),
    (
        "unsafe-send-credentials-to-endpoint",
        "send Google credentials to a --compute-endpoint that is not Google's over https",
    ),
]


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.upper().replace("-", "_")


def parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gke-ingress-timeout",
        description="Keep the timeoutSec of GKE load-balancer backend services in line with "
        f"the {DEFAULT_PREFIX}/timeout annotation of their Ingress.",
    )
    for flag, kind, default, text in _FLAGS:
        value = env.get(env_name(flag), default)
        p.add_argument(
            f"--{flag}",
            type=kind,
            default=value,
            help=f"{text} [env {env_name(flag)}; default {default!r}]",
        )
    for flag, text in _SWITCHES:
        on = env.get(env_name(flag), "").lower() in {"1", "true", "yes"}
        p.add_argument(
            f"--{flag}", action="store_true", default=on, help=f"{text} [env {env_name(flag)}=true]"
        )
    return p


def parse(argv: Sequence[str], env: Mapping[str, str]) -> Config:
    p = parser(env)
    a = p.parse_args(argv)
    if not 1 <= a.max_timeout <= 86400:
        p.error("--max-timeout must be between 1 and 86400")
    if not 1 <= a.default_timeout <= 2147483647:
        p.error("--default-timeout must be at least 1")
    if not 0 <= a.default_draining_timeout <= 3600:
        p.error("--default-draining-timeout must be between 0 and 3600")
    if a.workers < 1 or a.write_rate <= 0 or a.read_rate <= 0 or a.resync_period <= 0:
        p.error("--workers, --write-rate, --read-rate and --resync-period must be positive")
    if a.lease_wait < 0:
        p.error("--lease-wait must not be negative")
    if a.cluster_uid and not CLUSTER_UID.fullmatch(a.cluster_uid):
        p.error("--cluster-uid is the 8 to 16 lowercase hex characters ingress-gce uses")
    if a.log_format not in {"human", "json"}:
        p.error("--log-format is human or json")
    if a.listen and not _host_port(a.listen):
        p.error("--listen is HOST:PORT, e.g. 0.0.0.0:8080")
    project = a.project or env.get("GOOGLE_CLOUD_PROJECT") or None
    namespaces = frozenset(n.strip() for n in a.namespaces.split(",") if n.strip())
    return Config(
        kubeconfig=a.kubeconfig,
        project=project,
        region=a.region,
        compute_endpoint=a.compute_endpoint,
        annotation_prefix=a.annotation_prefix.rstrip("/"),
        default_timeout=a.default_timeout,
        max_timeout=a.max_timeout,
        default_draining_timeout=a.default_draining_timeout,
        namespaces=namespaces,
        workers=a.workers,
        write_rate=a.write_rate,
        read_rate=a.read_rate,
        cluster_uid=a.cluster_uid,
        unsafe_send_credentials_to_endpoint=a.unsafe_send_credentials_to_endpoint,
        resync_period=a.resync_period,
        state_namespace=a.state_namespace,
        state_configmap=a.state_configmap,
        dry_run=a.dry_run,
        once=a.once,
        lease_wait=a.lease_wait,
        log_format=a.log_format,
        log_level=a.log_level.upper(),
        listen=a.listen,
        leader_elect=not a.no_leader_elect,
    )


def _host_port(address: str) -> tuple[str, int] | None:
    host, _, port = address.rpartition(":")
    return (host, int(port)) if port.isdigit() and int(port) < 65536 else None


def listen_address(cfg: Config) -> tuple[str, int] | None:
    """Where the health and metrics server listens, or None for no server."""
    return _host_port(cfg.listen) if cfg.listen else None
