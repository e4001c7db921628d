# kopf is the bench extra: where only dev is installed (make lint), mypy sees its
# decorators as untyped.
# mypy: disallow-untyped-decorators=False
"""The same job with kopf as its documentation suggests: one handler on Ingress create,
update and resume, filtered on the annotation, GETs each backend, checks its owner, PATCHes
timeoutSec with the fingerprint and waits on the operation; kopf's defaults otherwise.
"""

from __future__ import annotations

import argparse
import os
import uuid
from typing import Any

import kopf

from bench.peers.common import (
    TIMEOUT_KEY,
    ComputeClient,
    backend_names,
    is_gce,
    owned_by,
    parse_timeout,
    services_of,
)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.execution.max_workers = memo.workers


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return kopf.login_with_kubeconfig(**kwargs)


def gce(annotations: kopf.Annotations, spec: kopf.Spec, **_: Any) -> bool:
    return is_gce(dict(annotations), dict(spec))


ANNOTATED = {TIMEOUT_KEY: kopf.PRESENT}


@kopf.on.resume("networking.k8s.io", "v1", "ingresses", annotations=ANNOTATED, when=gce)
@kopf.on.create("networking.k8s.io", "v1", "ingresses", annotations=ANNOTATED, when=gce)
@kopf.on.update("networking.k8s.io", "v1", "ingresses", annotations=ANNOTATED, when=gce)
def apply_timeout(
    annotations: kopf.Annotations,
    spec: kopf.Spec,
    namespace: str | None,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    seconds = parse_timeout(annotations[TIMEOUT_KEY])
    if seconds is None:
        raise kopf.PermanentError(f"{TIMEOUT_KEY}: whole seconds or a duration, 1s to 24h")
    compute: ComputeClient = memo.compute
    project = compute.project
    services = services_of(dict(spec))
    for name in backend_names(dict(annotations)):
        current = compute.call(compute.backends.get(project=project, backendService=name))
        if not owned_by(current.get("description", ""), namespace or "", services):
            logger.warning(f"{name} does not serve this Ingress: not touched")
            continue
        if current.get("timeoutSec") == seconds:
            continue
        body = {"timeoutSec": seconds, "fingerprint": current["fingerprint"]}
        request = compute.backends.patch(
            project=project, backendService=name, body=body, requestId=str(uuid.uuid4())
        )
        operation = compute.call(request)
        while operation.get("status") != "DONE":
            wait = compute.operations.wait(project=project, operation=operation["name"])
            operation = compute.call(wait)
        if operation.get("error"):
            raise kopf.TemporaryError(f"{name}: {operation['error']}", delay=10)
        logger.info(f"{name}: timeoutSec {current.get('timeoutSec')} -> {seconds}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peers.kopf_peer", description=__doc__)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--compute-endpoint", required=True)
    p.add_argument("--project", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--workers", type=int, default=4)
    args = p.parse_args(argv)
    os.environ["KUBECONFIG"] = args.kubeconfig  # read by the login handler above
    kopf.configure(verbose=False)  # what `kopf run` does before it runs
    kopf.run(
        standalone=True,  # no peering CRD: one replica, as the benchmark runs each contender
        namespaces=[args.namespace],
        memo=kopf.Memo(
            compute=ComputeClient(args.compute_endpoint, args.project), workers=args.workers
        ),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
