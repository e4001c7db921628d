"""The monitoring objects that the chart renders and deploy/monitoring/'s components add,
judged by a real apiserver under the real CRDs of Google Cloud Managed Service for
Prometheus (PodMonitoring, Rules) and prometheus-operator (ServiceMonitor,
PrometheusRule), as their projects ship them (tests/ground/monitoring-crds.sh fetches
them, pinned): each object is accepted, and a wrong field is refused, so the schemas
are really there."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_real
from tests.ground.controlplane import ControlPlane, find_assets
from tests.integration.render import COMPONENTS, MONITORING, NS, Helm, kustomize, objects

# One worker runs them all under xdist: one apiserver with the CRDs, not one a worker.
pytestmark = [pytest.mark.apiserver, pytest.mark.xdist_group("monitoring-crds")]

CRDS = {
    "podmonitorings.monitoring.googleapis.com",
    "rules.monitoring.googleapis.com",
    "servicemonitors.monitoring.coreos.com",
    "prometheusrules.monitoring.coreos.com",
}


@pytest.fixture(scope="module")
def plane(monitoring_crds: Path) -> Iterator[ControlPlane]:
    """An apiserver of its own with the four CRDs: they are cluster-wide, and the
    session's apiserver is shared with other tests."""
    assets = find_assets()
    if assets is None:
        require_real("kube-apiserver/etcd/kubectl (KUBEBUILDER_ASSETS or the build cache)")
    assert assets is not None
    with ControlPlane(assets) as p:
        p.kubectl("create", "-f", str(monitoring_crds))
        p.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        names = p.kubectl("get", "crd", "-o", "jsonpath={.items[*].metadata.name}").split()
        assert set(names) >= CRDS
        p.kubectl("create", "namespace", NS)
        yield p


def dry_run(plane: ControlPlane, objs: list[dict[str, Any]]) -> str:
    """``kubectl apply --dry-run=server`` of those objects: the apiserver validates them
    (schema, unknown fields) and stores nothing. Raises RuntimeError if one is refused."""
    body = {"apiVersion": "v1", "kind": "List", "items": objs}
    return plane.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(body))


@pytest.mark.parametrize("switch", MONITORING)
def test_each_monitoring_switch_of_the_chart_renders_objects_the_apiserver_accepts(
    helm: Helm, plane: ControlPlane, switch: str
) -> None:
    base = objects(helm.template(crds=False))
    added = [obj for key, obj in objects(helm.template(switch, crds=False)).items()
             if key not in base]  # fmt: skip
    assert added, f"{switch} renders nothing"

    out = dry_run(plane, added)

    assert out.count("(server dry run)") == len(added), out


@pytest.mark.parametrize("component", COMPONENTS)
def test_each_monitoring_component_of_deploy_adds_objects_the_apiserver_accepts(
    plane: ControlPlane, tmp_path: Path, component: str
) -> None:
    kubectl = plane.assets / "kubectl"
    (tmp_path / "base").mkdir()
    (tmp_path / "with").mkdir()
    base = objects(kustomize(kubectl, tmp_path / "base", []))
    added = [obj for key, obj in objects(kustomize(kubectl, tmp_path / "with", [component]))
             .items() if key not in base]  # fmt: skip
    kinds = {obj["kind"] for obj in added}
    assert kinds & {"PodMonitoring", "Rules", "ServiceMonitor", "PrometheusRule"}

    out = dry_run(plane, added)

    assert out.count("(server dry run)") == len(added), out


def _rule(obj: dict[str, Any]) -> dict[str, Any]:
    rule: dict[str, Any] = obj["spec"]["groups"][0]["rules"][0]
    return rule


# Per kind, a mistake a hand-written object could make, and what the schema says of it.
WRONG: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "PodMonitoring": (
        lambda o: o["spec"]["endpoints"][0].update(interval="often"),
        "spec.endpoints[0].interval",
    ),
    "Rules": (
        lambda o: _rule(o).update(record="gke_ingress_timeout:denied"),
        "Must set exactly one of Record or Alert",
    ),
    "ServiceMonitor": (
        lambda o: o["spec"]["endpoints"][0].update(interval="often"),
        "spec.endpoints[0].interval",
    ),
    "PrometheusRule": (
        lambda o: _rule(o).update(**{"for": "a while"}),
        "spec.groups[0].rules[0].for",
    ),
}


@pytest.mark.parametrize("kind", WRONG)
def test_the_real_schema_refuses_a_wrong_field(helm: Helm, plane: ControlPlane, kind: str) -> None:
    [obj] = [o for (k, _, _), o in objects(helm.template(*MONITORING, crds=False)).items()
             if k == kind]  # fmt: skip
    dry_run(plane, [obj])  # as rendered: accepted
    mutate, words = WRONG[kind]
    mutate(obj)

    with pytest.raises(RuntimeError, match="is invalid") as refused:
        dry_run(plane, [obj])

    assert words in str(refused.value)
