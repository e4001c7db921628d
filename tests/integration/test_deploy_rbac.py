"""deploy/ against the real kube-apiserver: it installs, its RBAC is least privilege, and
the controller does its whole job as that ServiceAccount, with a real bound token.

No kubelet runs, so the Deployment is only stored; the controller runs in-process with
the token, CA and namespace files a pod would get, and reaches the Compute fake.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from controller.gcp.backends import Compute
from controller.kube.client import KubeClient, KubeError
from controller.manager import Manager
from controller.model import Settings
from controller.records import GROUP, PLURAL, VERSION
from tests.conftest import deployed
from tests.fakes.compute import ComputeFake
from tests.ground.controlplane import CLUSTER_UID, ControlPlane
from tests.integration.world import KEY, World
from tests.wait import eventually

pytestmark = pytest.mark.apiserver

ROOT = Path(__file__).resolve().parents[2]
NS = "gke-ingress-timeout"
SA = "gke-ingress-timeout"
AS_SA = f"--as=system:serviceaccount:{NS}:{SA}"
# Same groups as the controller's ServiceAccount, no bindings: what every account has.
AS_BASELINE = f"--as=system:serviceaccount:{NS}:no-bindings"
STATE = "gke-ingress-timeout-state"  # the ConfigMap of versions before 0.2: moved, deleted
STATE_PATH = f"/api/v1/namespaces/{NS}/configmaps/{STATE}"
RECORDS_PATH = f"/apis/{GROUP}/{VERSION}/namespaces/{NS}/{PLURAL}"

Rule = tuple[str, str, str, str]  # resource, non-resource URLs, resource names, verbs
INGRESSES = ("ingresses.networking.k8s.io", "[]", "[]", "[list watch]")
EVENTS = ("events", "[]", "[]", "[create patch list]")
RECORDS = (f"{PLURAL}.{GROUP}", "[]", "[]", "[get list create update delete]")
STATE_CONFIGMAP = ("configmaps", "[]", f"[{STATE}]", "[get delete]")
CLUSTER_UID_CONFIGMAP = ("configmaps", "[]", "[ingress-uid]", "[get]")
CREATE_LEASES = ("leases.coordination.k8s.io", "[]", "[]", "[create]")
LEASE = ("leases.coordination.k8s.io", "[]", "[gke-ingress-timeout]", "[get update]")


@pytest.fixture(scope="module")
def installed(apiserver: ControlPlane) -> Iterator[str]:
    """``kubectl apply -k deploy/``; idempotent, as the namespace may exist already."""
    with deployed(apiserver) as output:
        yield output


def can_i(apiserver: ControlPlane, *args: str) -> bool:
    """One ``kubectl auth can-i`` as the controller's ServiceAccount (exit 1 means no)."""
    kubectl = [str(apiserver.assets / "kubectl"), f"--kubeconfig={apiserver.kubeconfig}"]
    done = subprocess.run(
        [*kubectl, "auth", "can-i", *args, AS_SA],
        capture_output=True,
        text=True,
        timeout=60,
    )
    answer = done.stdout.strip()
    assert answer in ("yes", "no"), f"can-i {args}: {done.returncode} {answer} {done.stderr}"
    return answer == "yes"


def rules(apiserver: ControlPlane, who: str, namespace: str) -> set[Rule]:
    """The table of ``kubectl auth can-i --list``, one tuple a row."""
    out = apiserver.kubectl("auth", "can-i", "--list", who, "-n", namespace).splitlines()
    header = out[0]
    starts = [header.index(h) for h in ("Non-Resource URLs", "Resource Names", "Verbs")]
    bounds = list(zip([0, *starts], [*starts, None], strict=True))
    return {
        (r[0], r[1], r[2], r[3])
        for r in (tuple(line[a:b].strip() for a, b in bounds) for line in out[1:] if line.strip())
    }


def granted(apiserver: ControlPlane, namespace: str) -> set[Rule]:
    """What deploy/ grants the ServiceAccount in ``namespace``, beyond every account's rights."""
    return rules(apiserver, AS_SA, namespace) - rules(apiserver, AS_BASELINE, namespace)


def test_applying_deploy_again_changes_nothing(apiserver: ControlPlane, installed: str) -> None:
    # kubectl reports "configured" for an object whose applied form differs from what
    # the apiserver keeps (a list the apiserver fills with defaults is sent whole again).
    again = apiserver.kubectl("apply", "-k", str(ROOT / "deploy")).splitlines()

    assert [line for line in again if not line.endswith(" unchanged")] == []


def test_apply_installs_the_controller_with_a_hardened_deployment(
    apiserver: ControlPlane, installed: str
) -> None:
    assert "deployment.apps/gke-ingress-timeout" in installed
    assert apiserver.kubectl("apply", "-k", str(ROOT / "deploy"))  # again: no conflict

    deployment = KubeClient.from_kubeconfig(apiserver.kubeconfig).get(
        f"/apis/apps/v1/namespaces/{NS}/deployments/gke-ingress-timeout"
    )
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    assert spec["replicas"] == 1
    assert pod["serviceAccountName"] == SA
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["INGRESS_TIMEOUT_STATE_CONFIGMAP"]["value"] == STATE


def test_service_account_has_exactly_what_the_controller_needs(
    apiserver: ControlPlane, installed: str, namespace: str
) -> None:
    assert granted(apiserver, NS) == {
        INGRESSES,
        EVENTS,
        RECORDS,
        STATE_CONFIGMAP,
        CREATE_LEASES,
        LEASE,
    }
    assert granted(apiserver, namespace) == {INGRESSES, EVENTS}
    assert granted(apiserver, "kube-system") == {INGRESSES, EVENTS, CLUSTER_UID_CONFIGMAP}

    everywhere = "--all-namespaces"
    assert can_i(apiserver, "list", "ingresses.networking.k8s.io", everywhere)
    assert can_i(apiserver, "watch", "ingresses.networking.k8s.io", everywhere)
    assert can_i(apiserver, "create", "events", everywhere)
    assert can_i(apiserver, "patch", "events", "-n", namespace)
    assert can_i(apiserver, "list", "events", everywhere)  # what was told before a term
    assert can_i(apiserver, "get", f"configmaps/{STATE}", "-n", NS)
    assert can_i(apiserver, "delete", f"configmaps/{STATE}", "-n", NS)
    assert can_i(apiserver, "update", f"{PLURAL}.{GROUP}", "-n", NS)
    assert can_i(apiserver, "get", "configmaps/ingress-uid", "-n", "kube-system")

    assert not can_i(apiserver, "get", "secrets", "-n", NS)
    assert not can_i(apiserver, "list", "secrets", everywhere)
    assert not can_i(apiserver, "update", "ingresses.networking.k8s.io", "-n", namespace)
    assert not can_i(apiserver, "patch", "ingresses.networking.k8s.io", everywhere)
    assert not can_i(apiserver, "get", "configmaps/someone-elses", "-n", NS)
    assert not can_i(apiserver, "list", "configmaps", "-n", NS)
    assert not can_i(apiserver, "update", f"configmaps/{STATE}", "-n", NS)
    assert not can_i(apiserver, "create", "configmaps", "-n", NS)
    assert not can_i(apiserver, "update", "configmaps/ingress-uid", "-n", "kube-system")
    assert not can_i(apiserver, "get", "configmaps/kube-proxy", "-n", "kube-system")
    assert not can_i(apiserver, "watch", f"{PLURAL}.{GROUP}", "-n", NS)
    for verb in ("get", "create", "update"):
        assert not can_i(apiserver, verb, f"configmaps/{STATE}", "-n", namespace)
        assert not can_i(apiserver, verb, f"{PLURAL}.{GROUP}", "-n", namespace)
    assert can_i(apiserver, "update", "leases.coordination.k8s.io/gke-ingress-timeout", "-n", NS)
    assert not can_i(apiserver, "update", "leases.coordination.k8s.io/kube-scheduler", "-n", NS)
    assert not can_i(apiserver, "create", "leases.coordination.k8s.io", "-n", namespace)


class Calls:
    """Every response the controller's apiserver client got: (method, path, status)."""

    def __init__(self, session: requests.Session) -> None:
        self.seen: list[tuple[str, str, int]] = []
        session.hooks["response"].append(self._record)

    def _record(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        path = urlsplit(response.request.url or "").path
        self.seen.append((response.request.method or "", path, response.status_code))

    def statuses(self, method: str, path: str) -> list[int]:
        return [s for m, p, s in self.seen if m == method and p == path]


@pytest.fixture
def fake() -> Iterator[ComputeFake]:
    with ComputeFake() as f:
        yield f


def forbidden_logs(records: list[logging.LogRecord]) -> list[str]:
    """Warnings and errors that mention a 403, tracebacks of logged exceptions included."""
    lines = [logging.Formatter().format(r) for r in records if r.levelno >= logging.WARNING]
    return [line for line in lines if "403" in line or "forbidden" in line.lower()]


def records(world: World) -> dict[str, dict[str, Any]]:
    """The controller's records, read as admin, by backend-service name."""
    items = world.kube.get(RECORDS_PATH)["items"]
    return {i["spec"]["backend"]["name"]: i["spec"] for i in items}


def test_controller_applies_and_restores_as_its_service_account(
    apiserver: ControlPlane,
    installed: str,
    namespace: str,
    fake: ComputeFake,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    world = World(apiserver, namespace, fake)  # the admin side: Ingresses, GCP, Events
    web = world.backend("web")
    # What a version before 0.2 remembered: moved to a record at start, then deleted.
    old = world.backend("old")
    legacy = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": STATE},
              "data": {f"global.{old}": '{"applied":600,"claims":{}}'}}  # fmt: skip
    fake.set_timeout_out_of_band(old, 600)
    try:
        world.kube.post(f"/api/v1/namespaces/{NS}/configmaps", legacy)
    except KubeError as e:
        if e.status != 409:
            raise

    session = requests.Session()
    calls = Calls(session)
    env = apiserver.pod_service_account(NS, SA, tmp_path)
    pod = KubeClient.in_cluster(root=str(tmp_path), env=env)
    # The same server, token file and CA, on a session whose responses the test can see.
    kube = KubeClient(pod.server, auth=pod.auth, verify=pod.verify, session=session)
    manager = Manager(
        kube=kube,
        compute=Compute("demo-project", endpoint=fake.url, base_delay=0.01, max_delay=0.05),
        settings=Settings(
            timeout_key=KEY,
            cluster_uid=CLUSTER_UID,
            region="europe-west1",
            namespaces=frozenset({namespace}),
        ),
        namespace=NS,
        instance="rbac-test",
        workers=2,
    )
    stop = threading.Event()
    thread = threading.Thread(target=manager.run, args=(stop,), name="manager")
    thread.start()
    try:
        eventually(lambda: manager.ready.is_set() or not thread.is_alive(), what="ready")
        assert manager.ready.is_set(), "the controller stopped before it was ready"
        world.ingress("app", timeout="1h", backends=[web])

        eventually(lambda: world.timeout_of(web) == 3600, what="backend patched to 3600")
        eventually(lambda: world.events("app", "TimeoutApplied"), what="TimeoutApplied event")
        record = eventually(lambda: records(world).get(web), what="record written")
        state = record["fields"]["timeout"]
        assert state["applied"] == 3600 and state["claims"] == {f"{namespace}/app": 3600}
        assert 201 in calls.statuses("POST", RECORDS_PATH)
        # the migrated record: nobody claims it; 0.1 cannot say whether it wrote the 600
        # there, so it is left, and the record goes
        eventually(lambda: old not in records(world), what="migrated record settled")
        assert world.timeout_of(old) == 600
        assert 200 in calls.statuses("DELETE", STATE_PATH)

        world.annotate("app", None)
        eventually(lambda: world.timeout_of(web) == 30, what="default restored")
        eventually(lambda: world.events("app", "TimeoutRestored"), what="TimeoutRestored event")
        eventually(lambda: web not in records(world), what="the record is deleted")
        assert 200 in calls.statuses("PUT", f"{RECORDS_PATH}/global.{web}")
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive(), "controller did not stop"

    assert world.patches(web) == [3600, 30]
    assert world.patches(old) == []
    assert [c for c in calls.seen if c[2] in (401, 403)] == []
    assert forbidden_logs(caplog.records) == []
    assert calls.statuses("POST", f"/api/v1/namespaces/{namespace}/events")
