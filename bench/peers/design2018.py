"""The 2018 talk's design, as described: one watch, act on MODIFIED only, PATCH the
timeout without reading the backend first (no fingerprint), no list; so ADDED events (a
start, a re-watch) are ignored and every change of an annotated Ingress is a write.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
import yaml

from bench.peers.common import TIMEOUT_KEY, ComputeClient, backend_names, is_gce, parse_timeout

log = logging.getLogger("design2018")


def kube_session(kubeconfig: str) -> tuple[str, str, requests.Session]:
    """The server, its CA file and a Session from a kubeconfig with a token."""
    with open(kubeconfig) as f:
        config = yaml.safe_load(f)
    context = next(c for c in config["contexts"] if c["name"] == config["current-context"])
    cluster = next(c for c in config["clusters"] if c["name"] == context["context"]["cluster"])
    user = next(u for u in config["users"] if u["name"] == context["context"]["user"])
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {user['user']['token']}"
    return cluster["cluster"]["server"], cluster["cluster"]["certificate-authority"], session


def events(session: requests.Session, url: str, ca: str) -> Iterator[dict[str, Any]]:
    """One watch from now on (no resourceVersion): every object comes first as ADDED."""
    # verify here: REQUESTS_CA_BUNDLE in the environment would beat session.verify
    watch = {"watch": "true"}
    with session.get(url, params=watch, stream=True, timeout=(10, 330), verify=ca) as r:
        r.raise_for_status()
        pending = b""
        # split lines ourselves: iter_lines() can hold the last event back
        for chunk in r.iter_content(chunk_size=None):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    yield json.loads(line)


def patch(compute: ComputeClient, name: str, seconds: int) -> None:
    try:
        body = {"timeoutSec": seconds}
        compute.call(
            compute.backends.patch(project=compute.project, backendService=name, body=body)
        )
        log.info("set %s to %ss", name, seconds)
    except Exception as e:  # a worker must survive whatever one backend does
        log.warning("%s: %s", name, e)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peers.design2018", description=__doc__)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--compute-endpoint", required=True)
    p.add_argument("--project", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--workers", type=int, default=4)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    server, ca, session = kube_session(args.kubeconfig)
    compute = ComputeClient(args.compute_endpoint, args.project)
    url = f"{server}/apis/networking.k8s.io/v1/namespaces/{args.namespace}/ingresses"
    with ThreadPoolExecutor(args.workers) as pool:
        while True:
            try:
                for event in events(session, url, ca):
                    if event["type"] != "MODIFIED":
                        continue
                    meta, spec = event["object"]["metadata"], event["object"].get("spec") or {}
                    annotations = meta.get("annotations") or {}
                    seconds = parse_timeout(annotations.get(TIMEOUT_KEY, ""))
                    if seconds is None or not is_gce(annotations, spec):
                        continue
                    for name in backend_names(annotations):
                        pool.submit(patch, compute, name, seconds)
            except (requests.RequestException, ValueError) as e:
                log.warning("watch ended: %s", e)
                time.sleep(1)


if __name__ == "__main__":
    raise SystemExit(main())
