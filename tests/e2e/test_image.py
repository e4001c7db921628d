"""The image as shipped: it runs non-root on a read-only root, does the controller's job
as the Deployment runs it (real apiserver, real bound token, the Compute fake), stops
cleanly on SIGTERM, and survives a trip through a registry.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import deployed
from tests.e2e.conftest import Podman
from tests.fakes.compute import ComputeFake
from tests.ground.controlplane import ControlPlane, free_port
from tests.integration.world import World
from tests.wait import eventually

pytestmark = pytest.mark.podman

NS = "gke-ingress-timeout"  # deploy/'s namespace, ServiceAccount and Deployment
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


# Started early under xdist: the first image test builds the image, the others wait for it.
@pytest.mark.long(minutes=4)
def test_image_is_non_root_and_runs_the_controller(podman: Podman, image: str) -> None:
    config = json.loads(podman("image", "inspect", "--format", "{{json .Config}}", image).stdout)
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["python3", "-m", "controller"]


def test_image_prints_its_flags_as_uid_65532_on_a_read_only_root(
    podman: Podman, image: str
) -> None:
    # No tmpfs either: --help must not need to write anywhere.
    done = podman.run(
        "--rm", "--user", "65532", "--read-only", "--read-only-tmpfs=false", image, "--help"
    )
    for flag in ("--kubeconfig", "--project", "--compute-endpoint", "--namespaces", "--once"):
        assert flag in done.stdout


def pod_env(
    container: dict[str, Any], pod_name: str, config_maps: Callable[[str], dict[str, str]]
) -> dict[str, str]:
    """The environment the kubelet gives the Deployment's container; ``config_maps``
    reads a ConfigMap's data in its namespace."""
    fields = {"metadata.name": pod_name, "metadata.namespace": NS}
    env = {}
    for e in container.get("env", []):
        source = e.get("valueFrom", {})
        if "fieldRef" in source:
            env[e["name"]] = fields[source["fieldRef"]["fieldPath"]]
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[e["name"]] = config_maps(ref["name"])[ref["key"]]
        else:
            env[e["name"]] = e.get("value", "")
    return env


@pytest.fixture
def container(podman: Podman) -> Iterator[str]:
    """A container name, removed afterwards whatever happened; its log is printed."""
    name = f"gke-ingress-timeout-e2e-{uuid.uuid4().hex[:8]}"
    yield name
    logs = podman("logs", name, check=False)
    print(f"--- podman logs {name}\n{logs.stdout}{logs.stderr}")
    podman("rm", "--force", name, check=False)


@pytest.fixture
def fake() -> Iterator[ComputeFake]:
    with ComputeFake() as f:
        yield f


@pytest.mark.apiserver
def test_container_applies_a_timeout_as_the_pod_would_and_stops_on_sigterm(
    podman: Podman,
    image: str,
    apiserver: ControlPlane,
    namespace: str,
    fake: ComputeFake,
    container: str,
    tmp_path: Path,
) -> None:
    with deployed(apiserver):
        deployment = json.loads(apiserver.kubectl("get", "deployment", NS, "-n", NS, "-o", "json"))
    pod = deployment["spec"]["template"]["spec"]
    [spec] = pod["containers"]

    def config_maps(name: str) -> dict[str, str]:
        got = apiserver.kubectl("get", "configmap", name, "-n", NS, "-o", "json")
        return dict(json.loads(got).get("data") or {})

    assert "command" not in spec, "deploy/ must run the image's entrypoint"
    assert pod["securityContext"]["runAsUser"] == 65532
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True

    world = World(apiserver, namespace, fake)
    web = world.backend("web")
    tokens = tmp_path / "serviceaccount"
    env = {
        **pod_env(spec, container, config_maps),
        **apiserver.pod_service_account(NS, NS, tokens),
        "INGRESS_TIMEOUT_PROJECT": "demo-project",
        "INGRESS_TIMEOUT_COMPUTE_ENDPOINT": fake.url,
        "INGRESS_TIMEOUT_NAMESPACES": namespace,
        # The host's network is shared: a free port, not the Deployment's.
        "INGRESS_TIMEOUT_LISTEN": f"127.0.0.1:{free_port()}",
    }
    podman.run(
        "--detach",
        "--name",
        container,
        "--user",
        "65532",
        # The pod's root is read-only with an emptyDir on /tmp, and no other tmpfs.
        "--read-only",
        "--read-only-tmpfs=false",
        "--tmpfs",
        "/tmp",
        "--cap-drop",
        "all",
        "--security-opt",
        "no-new-privileges",
        "--volume",
        f"{tokens}:{TOKEN_DIR}:ro",
        *(a for k, v in env.items() for a in ("--env", f"{k}={v}")),
        image,
        *spec.get("args", []),
    )

    world.ingress("app", timeout="1h", backends=[web])
    eventually(lambda: world.timeout_of(web) == 3600, timeout=90, what="backend patched to 3600")
    eventually(lambda: world.events("app", "TimeoutApplied"), what="TimeoutApplied event")

    # SIGTERM; SIGKILL only after 30 s (the timeout is podman's own slowness on a busy machine)
    podman("stop", "--time", "30", container, timeout=120)
    state = json.loads(podman("inspect", "--format", "{{json .State}}", container).stdout)
    assert state["Status"] == "exited"
    assert state["ExitCode"] == 0


def test_image_pushed_to_a_registry_pulls_back_with_the_same_digest(
    podman: Podman, image: str, registry: str, tmp_path: Path
) -> None:
    remote = f"{registry}/gke-ingress-timeout:e2e"
    digest_file = tmp_path / "digest"
    podman("push", "--tls-verify=false", "--digestfile", str(digest_file), image, remote)
    pushed = digest_file.read_text().strip()

    r = requests.get(
        f"http://{registry}/v2/gke-ingress-timeout/manifests/e2e",
        headers={"Accept": MANIFEST_TYPES},
        timeout=10,
    )
    r.raise_for_status()
    assert r.headers["Docker-Content-Digest"] == pushed

    # Into an empty store, so that every layer really comes from the registry.
    store = Path(tempfile.mkdtemp(prefix="store-"))  # short: podman's runroot limit is 50
    elsewhere = Podman(podman.containers_conf, root=str(store))
    try:
        elsewhere("pull", "--tls-verify=false", remote, timeout=300)
        pulled = json.loads(elsewhere("image", "inspect", remote).stdout)[0]
    finally:
        elsewhere("rmi", "--all", "--force", check=False)
        shutil.rmtree(store, ignore_errors=True)  # vfs: a full copy of the tree per layer
    local = json.loads(podman("image", "inspect", image).stdout)[0]
    assert pulled["Digest"] == pushed
    assert pulled["Id"] == local["Id"]
