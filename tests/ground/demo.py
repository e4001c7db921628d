"""`make demo`: the controller doing its job, start to finish, on this machine.

A real kube-apiserver, the Compute fake seeded as ingress-gce would have left a
load balancer, and the controller as its own process. An Ingress is annotated
with kubectl, the backend timeouts change; then a timeout per Service and
connection draining take the place of the plain one; the annotations are
removed and the defaults come back. Exits non-zero if anything does not happen
as told.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable

import requests

from tests.fakes.compute import ComputeFake, seed_demo
from tests.ground.controlplane import ControlPlane, find_assets, free_port

KEY = "ingress-timeout.dev/timeout"
TIMEOUTS = "ingress-timeout.dev/timeouts"
DRAINING = "ingress-timeout.dev/draining-timeout"
BOLD, DIM, RESET = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")


def say(text: str) -> None:
    print(f"\n{BOLD}== {text}{RESET}", flush=True)


def show_timeouts(fake: ComputeFake, names: list[str]) -> dict[str, tuple[int, int]]:
    """(timeoutSec, drainingTimeoutSec) of each backend service, printed as a table."""
    values = {}
    print(f"   {'BACKEND SERVICE (in the Compute fake)':<44} {'SERVES':<34} TIMEOUTSEC  DRAINING")
    for name in names:
        backend = fake.backend(name)
        service = json.loads(backend["description"])["kubernetes.io/service-name"]
        draining = int(backend["connectionDraining"]["drainingTimeoutSec"])
        values[name] = (int(backend["timeoutSec"]), draining)
        print(f"   {name:<44} {service:<34} {values[name][0]:<11} {draining}")
    return values


def values_of(fake: ComputeFake, names: list[str]) -> dict[str, tuple[int, int]]:
    """(timeoutSec, drainingTimeoutSec) of the Ingress's own backends (not the default's)."""
    return {
        name: (
            int(fake.backend(name)["timeoutSec"]),
            int(fake.backend(name)["connectionDraining"]["drainingTimeoutSec"]),
        )
        for name in names[1:]
    }


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo failed: {what} did not happen within {timeout:.0f}s")
        time.sleep(0.1)


def ingress(backends: list[str]) -> str:
    return json.dumps(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {
                "name": "chat",
                "namespace": "default",
                "annotations": {
                    "kubernetes.io/ingress.class": "gce",
                    # what ingress-gce writes once the load balancer exists
                    "ingress.kubernetes.io/backends": json.dumps({b: "HEALTHY" for b in backends}),
                },
            },
            "spec": {
                "rules": [
                    {
                        "http": {
                            "paths": [
                                {
                                    "path": "/chat",
                                    "pathType": "Prefix",
                                    "backend": {
                                        "service": {"name": "chat", "port": {"number": 8080}}
                                    },
                                },
                                {
                                    "path": "/",
                                    "pathType": "Prefix",
                                    "backend": {"service": {"name": "web", "port": {"number": 80}}},
                                },
                            ]
                        }
                    }
                ]
            },
        }
    )


def relay(stream: Iterable[str], prefix: str, started: threading.Event) -> None:
    for line in stream:
        print(f"{DIM}   {prefix} {line.rstrip()}{RESET}", flush=True)
        if "start:" in line:
            started.set()


def main() -> int:
    assets = find_assets()
    if assets is None:
        raise SystemExit("no kube-apiserver/etcd/kubectl: run `make demo`, which builds them")
    say("Starting a real kube-apiserver (with etcd) on loopback")
    with ControlPlane(assets) as plane, ComputeFake().start() as fake:
        print(f"   kube-apiserver {plane.version} at {plane.url}")
        names = seed_demo(fake)
        print(f"   Compute API fake at {fake.url}, seeded as ingress-gce leaves a load balancer")

        def kubectl(*args: str, stdin: str | None = None) -> str:
            print(f"   $ kubectl {' '.join(args)}")
            out = plane.kubectl(*args, input=stdin)
            for line in out.strip().splitlines():
                print(f"     {line}")
            return out

        say("The Ingress, as ingress-gce left it: a load balancer with three backend services")
        kubectl("apply", "-f", "-", stdin=ingress(names))
        before = show_timeouts(fake, names)

        say("Starting the controller (python -m controller), as its own process")
        port = free_port()
        env = {
            **os.environ,
            "INGRESS_TIMEOUT_KUBECONFIG": plane.kubeconfig,
            "INGRESS_TIMEOUT_PROJECT": "demo-project",
            "INGRESS_TIMEOUT_COMPUTE_ENDPOINT": fake.url,
            "INGRESS_TIMEOUT_STATE_NAMESPACE": "default",
            "INGRESS_TIMEOUT_LISTEN": f"127.0.0.1:{port}",
        }
        controller = subprocess.Popen(
            [sys.executable, "-m", "controller"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        started = threading.Event()
        assert controller.stdout is not None
        threading.Thread(
            target=relay, args=(controller.stdout, "controller |", started), daemon=True
        ).start()
        try:
            wait_for(started.is_set, "the controller's start")
            say(f"A user asks for one hour: kubectl annotate ingress chat {KEY}=1h")
            kubectl("annotate", "ingress", "chat", f"{KEY}=1h")
            web, chat = names[1], names[2]
            wait_for(
                lambda: values_of(fake, names) == {web: (3600, 0), chat: (3600, 0)},
                "the timeout change",
            )
            time.sleep(0.5)  # let the controller's log lines arrive before the table
            after = show_timeouts(fake, names)
            print("   The cluster default backend (kube-system) is not the Ingress's: untouched.")

            say(
                "Per Service, and draining: the REST Service web fails fast at 30 s, the "
                "WebSocket Service chat keeps its hour, and a pod that goes away in a "
                "rollout keeps its open connections for 5 minutes"
            )
            calls_before = len(fake.calls)
            kubectl(
                "annotate",
                "ingress",
                "chat",
                "--overwrite",
                f"{KEY}=1h",
                f'{TIMEOUTS}={{"web": "30s"}}',
                f"{DRAINING}=5m",
            )
            wait_for(
                lambda: values_of(fake, names) == {web: (30, 300), chat: (3600, 300)},
                "the per-Service timeout and draining",
            )
            time.sleep(0.5)
            per_service = show_timeouts(fake, names)
            print("   The PATCHes sent: every field that differed, in one body, one fingerprint:")
            for call in fake.calls[calls_before:]:
                if call.method == "PATCH" and call.status == 200:
                    print(f"   {call.path.rsplit('/', 1)[-1]}: {json.dumps(call.body)}")

            say("What the controller remembers, one record per backend service")
            kubectl("get", "backendtimeouts", "-n", "default")

            say("What the user sees on the Ingress")
            kubectl(
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=chat",
                "-o",
                "custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message",
            )

            say("The user removes the annotations: the defaults come back (30 s, no draining)")
            kubectl("annotate", "ingress", "chat", f"{KEY}-", f"{TIMEOUTS}-", f"{DRAINING}-")
            wait_for(
                lambda: values_of(fake, names) == {web: (30, 0), chat: (30, 0)},
                "the restore",
            )
            time.sleep(0.5)
            restored = show_timeouts(fake, names)

            say(f"What Prometheus sees: curl http://127.0.0.1:{port}/metrics (excerpt)")
            metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            for line in metrics.splitlines():
                if line.startswith(
                    (
                        "gke_ingress_timeout_gcp_calls_total{",
                        'gke_ingress_timeout_reconciles_total{result="ok"}',
                    )
                ):
                    print(f"   {line}")
        finally:
            controller.terminate()
            controller.wait(timeout=30)

        assert before[web] == (30, 0) and after[web] == (3600, 0) and restored[web] == (30, 0)
        assert per_service[web] == (30, 300) and per_service[chat] == (3600, 300)
        assert after[names[0]] == per_service[names[0]] == (30, 0), (
            "the cluster default backend must never be touched"
        )
        say(
            "Done: 30s -> 3600s on the Ingress's own backends; per Service 30s and 3600s "
            "with 300s of draining; back to 30s and 0s on removal."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
