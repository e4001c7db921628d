"""What the two ways of installing render, as objects keyed by kind, namespace and name:
the Helm chart through a real helm (tests/ground/operator-tools.sh builds it) with some
values set, and ``kubectl kustomize`` of deploy/ with some of its components."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import DEPLOY

CHART = Path(__file__).resolve().parents[2] / "charts" / "gke-ingress-timeout"
NS = "gke-ingress-timeout"
# Every monitoring switch of the chart.
MONITORING = [
    "monitoring.podMonitoring=true",
    "monitoring.gmpRules=true",
    "monitoring.serviceMonitor=true",
    "monitoring.prometheusRule=true",
    "monitoring.dashboard=true",
]
# deploy/'s monitoring components and the chart's switches that render the same objects.
COMPONENTS = {
    "monitoring/gmp": ["monitoring.podMonitoring=true", "monitoring.gmpRules=true"],
    "monitoring/prometheus-operator": [
        "monitoring.serviceMonitor=true",
        "monitoring.prometheusRule=true",
    ],
}

Key = tuple[str, str, str]  # kind, namespace, name


class Helm:
    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        # Its caches and settings stay in the test's folder.
        self.env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, timeout=300, env=self.env
        )

    def template(self, *sets: str, crds: bool = True) -> str:
        args = ["template", NS, str(CHART), "--namespace", NS]
        args += ["--include-crds"] if crds else []
        for s in sets:  # json: a number that is not an integer (--set makes it a string)
            args += ["--set-json", s[5:]] if s.startswith("json:") else ["--set", s]
        done = self.run(*args)
        assert done.returncode == 0, done.stderr
        return done.stdout


def kustomize(kubectl: Path, folder: Path, components: list[str]) -> str:
    """``kubectl kustomize`` of a kustomization in ``folder`` (written there) that takes
    deploy/ with those of its components, as a user's own kustomization would."""
    # kustomize takes only relative paths.
    rel = os.path.relpath(DEPLOY, folder)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [rel],
        "components": [f"{rel}/{c}" for c in components],
    }
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return subprocess.run(
        [str(kubectl), "kustomize", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


def objects(text: str) -> dict[Key, dict[str, Any]]:
    out = {}
    for doc in yaml.safe_load_all(text):
        if doc:
            meta = doc["metadata"]
            out[(doc["kind"], meta.get("namespace", ""), meta["name"])] = doc
    return out
