"""The Helm chart with a real helm (built from source, tests/ground/operator-tools.sh):
it lints, its schema refuses bad values, its defaults render what ``kubectl apply -k
deploy/`` applies (and its monitoring switches what deploy/'s monitoring components
add), its values reach the controller and the admission policy together, and it
installs and upgrades against the real apiserver.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from controller.config import env_name, parse
from tests.conftest import require_real
from tests.ground.controlplane import ControlPlane, find_assets
from tests.integration.render import CHART, COMPONENTS, MONITORING, NS, Helm, kustomize, objects
from tests.wait import eventually


def test_the_chart_lints_with_defaults_and_with_everything_on(helm: Helm) -> None:
    for sets in ([], [*MONITORING, "admissionPolicy=Warn", "networkPolicy.enabled=false"]):
        args = [a for s in sets for a in ("--set", s)]
        done = helm.run("lint", str(CHART), "--strict", *args)
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("admissionPolicy=Maybe", "/admissionPolicy"),
        ("maxTimeout=0", "/maxTimeout"),
        ("maxTimeout=86401", "/maxTimeout"),
        ("defaultDrainingTimeout=-1", "/defaultDrainingTimeout"),
        ("defaultDrainingTimeout=3601", "/defaultDrainingTimeout"),
        ("annotationPrefix=Not_A_Domain", "/annotationPrefix"),
        ("namespaces={Shop}", "/namespaces/0"),
        ("writeRate=0", "/writeRate"),
        ("replicas=-1", "/replicas"),
        ("image.tag=", "/image/tag"),
        ("workloadIdentity.gcpServiceAccount=me@gmail.com", "/workloadIdentity"),
        ("monitoring.interval=often", "/monitoring/interval"),
        ("networkPolicy.enabeld=false", "enabeld"),
    ],
)
def test_the_schema_refuses_bad_values(helm: Helm, value: str, words: str) -> None:
    done = helm.run("template", NS, str(CHART), "--set", value)

    assert done.returncode != 0
    assert words in done.stderr


@pytest.mark.parametrize(
    ("components", "sets"),
    [([], []), *(([c], sets) for c, sets in COMPONENTS.items())],
    ids=["defaults", *COMPONENTS],
)
def test_the_chart_renders_what_kubectl_apply_k_deploy_applies(
    helm: Helm, tmp_path: Path, components: list[str], sets: list[str]
) -> None:
    """The defaults, and each monitoring component of deploy/ beside the chart's switches
    that render the same objects: the two ways of installing cannot drift."""
    assets = find_assets()
    if assets is None:
        require_real("kubectl (KUBEBUILDER_ASSETS or the build cache)")
    assert assets is not None
    deploy = objects(kustomize(assets / "kubectl", tmp_path, components))
    chart = objects(helm.template(*sets))

    # Helm does not own the namespace it installs into (--create-namespace).
    assert deploy.pop(("Namespace", "", NS))
    assert sorted(chart) == sorted(deploy)
    for key, obj in deploy.items():
        assert chart[key] == obj, key


def test_values_reach_the_controller_and_the_admission_policy_together(helm: Helm) -> None:
    chart = objects(
        helm.template(
            "annotationPrefix=example.com",
            "maxTimeout=3600",
            "defaultDrainingTimeout=300",
            "namespaces={shop,blog}",
            "json:writeRate=2.5",
            "readRate=20",
            "region=europe-west1",
            "replicas=2",
            "image.repository=europe-docker.pkg.dev/p/r/gke-ingress-timeout",
            "image.tag=0.2.0",
            "workloadIdentity.gcpServiceAccount=timeouts@my-project.iam.gserviceaccount.com",
            "admissionPolicy=Warn",
        )
    )
    settings = chart[("ConfigMap", NS, "gke-ingress-timeout-settings")]["data"]
    assert settings == {
        "annotation-prefix": "example.com",
        "max-timeout": "3600",
        "default-draining-timeout": "300",
        "namespaces": "shop,blog",
    }
    deployment = chart[("Deployment", NS, NS)]["spec"]
    assert deployment["replicas"] == 2
    [container] = deployment["template"]["spec"]["containers"]
    assert container["image"] == "europe-docker.pkg.dev/p/r/gke-ingress-timeout:0.2.0"
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["INGRESS_TIMEOUT_WRITE_RATE"] == "2.5"
    assert env["INGRESS_TIMEOUT_READ_RATE"] == "20"
    assert env["INGRESS_TIMEOUT_REGION"] == "europe-west1"
    ref = "gke-ingress-timeout-settings"
    for key in settings:  # each setting as its flag's environment twin
        assert env[env_name(key)] == {"configMapKeyRef": {"name": ref, "key": key}}
    # ... which the controller reads as those flags.
    cfg = parse([], {env_name(key): value for key, value in settings.items()})
    assert cfg.annotation_prefix == "example.com"
    assert (cfg.max_timeout, cfg.default_draining_timeout) == (3600, 300)
    assert cfg.namespaces == {"shop", "blog"}
    binding = chart[("ValidatingAdmissionPolicyBinding", "", NS)]["spec"]
    assert binding["validationActions"] == ["Warn"]
    assert binding["paramRef"]["name"] == ref
    account = chart[("ServiceAccount", NS, NS)]["metadata"]["annotations"]
    assert account == {
        "iam.gke.io/gcp-service-account": "timeouts@my-project.iam.gserviceaccount.com"
    }

    off = objects(helm.template("admissionPolicy=Off", "networkPolicy.enabled=false"))
    kinds = {kind for kind, _, _ in off}
    assert not kinds & {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    assert "NetworkPolicy" not in kinds


def test_monitoring_renders_the_one_source_of_rules_and_the_dashboard(helm: Helm) -> None:
    chart = objects(helm.template(*MONITORING))
    rules = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())

    assert chart[("Rules", NS, NS)]["apiVersion"] == "monitoring.googleapis.com/v1"
    assert chart[("Rules", NS, NS)]["spec"] == rules
    assert chart[("PrometheusRule", NS, NS)]["apiVersion"] == "monitoring.coreos.com/v1"
    assert chart[("PrometheusRule", NS, NS)]["spec"] == rules
    dashboard = chart[("ConfigMap", NS, "gke-ingress-timeout-dashboard")]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((CHART / "files" / "dashboard.json").read_text())
    assert json.loads(dashboard["data"]["gke-ingress-timeout.json"]) == shipped
    # What scrapes selects the controller's pods and their http port.
    pod = chart[("Deployment", NS, NS)]["spec"]["template"]
    labels = pod["metadata"]["labels"]
    ports = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    monitor = chart[("PodMonitoring", NS, NS)]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= labels.items()
    assert {e["port"] for e in monitor["endpoints"]} <= ports
    service = chart[("Service", NS, "gke-ingress-timeout-metrics")]["spec"]
    assert service["selector"].items() <= labels.items()
    assert service["ports"][0]["targetPort"] in ports
    servicemonitor = chart[("ServiceMonitor", NS, NS)]["spec"]
    assert servicemonitor["selector"]["matchLabels"].items() <= (
        chart[("Service", NS, "gke-ingress-timeout-metrics")]["metadata"]["labels"].items()
    )


@pytest.fixture
def plane(apiserver_factory: Callable[..., ControlPlane]) -> Iterator[ControlPlane]:
    """An apiserver of its own: the chart's policy and cluster-wide objects stay there."""
    p = apiserver_factory()
    p.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "ingress-uid", "namespace": "kube-system"},
        "data": {"uid": "0123456789abcdef"},
    }))  # fmt: skip
    yield p


@pytest.mark.apiserver
def test_install_and_upgrade_against_the_real_apiserver(helm: Helm, plane: ControlPlane) -> None:
    kube = ["--kubeconfig", plane.kubeconfig]
    # What the chart renders, as the apiserver validates it (namespaced objects need
    # their namespace, which --create-namespace then finds in place).
    plane.kubectl("create", "namespace", NS)
    plane.kubectl("apply", "--dry-run=server", "-f", "-", input=helm.template())

    done = helm.run("install", NS, str(CHART), "-n", NS, "--create-namespace", *kube)
    assert done.returncode == 0, done.stderr
    refused = dry_run_verdict(plane, "1d")
    eventually(lambda: refused() == 422, timeout=60, what="the chart's policy refuses 1d")
    assert dry_run_verdict(plane, "1h")() == 201

    done = helm.run(
        "upgrade", NS, str(CHART), "-n", NS, *kube,
        "--set", "admissionPolicy=Warn", "--set", "maxTimeout=3600",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    settings = json.loads(
        plane.kubectl("get", "configmap", "-n", NS, f"{NS}-settings", "-o", "json")
    )
    assert settings["data"]["max-timeout"] == "3600"
    binding = json.loads(plane.kubectl("get", "validatingadmissionpolicybinding", NS, "-o", "json"))
    assert binding["spec"]["validationActions"] == ["Warn"]
    eventually(lambda: refused() == 201, timeout=60, what="Warn lets 1d through")

    done = helm.run("upgrade", NS, str(CHART), "-n", NS, *kube, "--set", "admissionPolicy=Off")
    assert done.returncode == 0, done.stderr
    left = plane.kubectl("get", "validatingadmissionpolicies", "-o", "name")
    assert left.strip() == ""
    status = json.loads(helm.run("status", NS, "-n", NS, *kube, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    assert status["version"] == 3


def dry_run_verdict(plane: ControlPlane, value: str) -> Callable[[], int]:
    """The status code of a dry-run CREATE of a gce Ingress with that timeout."""
    body = json.dumps({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"generateName": "probe-", "namespace": "default",
                     "annotations": {"ingress-timeout.dev/timeout": value}},
        "spec": {"defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}},
    })  # fmt: skip

    def verdict() -> int:
        done = subprocess.run(
            [str(plane.assets / "kubectl"), f"--kubeconfig={plane.kubeconfig}",
             "create", "--dry-run=server", "-f", "-"],
            input=body, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if done.returncode == 0:
            return 201
        return 422 if "denied request" in done.stderr else 500

    return verdict
