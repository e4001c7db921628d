"""deploy/'s ValidatingAdmissionPolicy in the real kube-apiserver: a bad timeout is refused
when written, with the controller's own words; a good one, another class's and a write
that leaves the annotation alone pass; it follows the settings the controller reads; and
for generated strings its verdict is annotations.parse_timeout's.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.config import DEFAULT_PREFIX
from controller.fields import API_MAX_DRAINING
from controller.ingress import INVALID_TIMEOUT, from_object
from controller.model import Settings
from tests.conftest import DEPLOY, IN_CI, deployed
from tests.ground.controlplane import ControlPlane
from tests.wait import eventually

pytestmark = pytest.mark.apiserver

NS = "gke-ingress-timeout"
DENIED = (
    "ValidatingAdmissionPolicy 'gke-ingress-timeout' with binding 'gke-ingress-timeout' "
    "denied request: "
)
SETTINGS = "gke-ingress-timeout-settings"
KEY = f"{DEFAULT_PREFIX}/timeout"
DRAINING_KEY = f"{DEFAULT_PREFIX}/draining-timeout"
MAX = 86400
# Each example is a round trip to the apiserver: few, and the same ones under CI.
PROPERTY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=IN_CI,
)


def ingress(
    name: str, annotations: dict[str, str], class_name: str | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {"defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}}
    if class_name is not None:
        spec["ingressClassName"] = class_name
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "annotations": annotations},
        "spec": spec,
    }


class Api:
    """Ingress writes in one namespace, answered as the apiserver answers them."""

    def __init__(self, plane: ControlPlane, namespace: str) -> None:
        self.plane, self.namespace = plane, namespace
        self.url = f"{plane.url}/apis/networking.k8s.io/v1/namespaces/{namespace}/ingresses"

    def create(self, body: dict[str, Any], dry_run: bool = False) -> requests.Response:
        return requests.post(
            self.url,
            params={"dryRun": "All"} if dry_run else None,
            json=body,
            headers=self.plane.admin_headers,
            verify=self.plane.ca_file,
            timeout=10,
        )

    def verdict(
        self, annotations: dict[str, str], body: dict[str, Any] | None = None
    ) -> tuple[bool, str]:
        """(admitted, message) of a dry-run CREATE of a gce Ingress with these annotations
        (or of ``body``, which has them)."""
        r = self.create(body or ingress(f"p-{uuid.uuid4().hex[:8]}", annotations), dry_run=True)
        if r.status_code == 201:
            return True, ""
        assert r.status_code == 422, r.text
        return False, str(r.json()["message"])

    def kubectl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """kubectl as a user runs it: exit code, stdout and stderr, never raises."""
        return subprocess.run(
            [
                str(self.plane.assets / "kubectl"),
                f"--kubeconfig={self.plane.kubeconfig}",
                "-n",
                self.namespace,
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )


def enforced(api: Api, key: str = KEY, bad: str = "1d") -> None:
    """Wait until a new policy, binding or parameter is in force (it takes a moment)."""
    eventually(lambda: not api.verdict({key: bad})[0], timeout=60, what=f"{key}={bad} refused")


def controller_words(
    body: dict[str, Any], prefix: str = DEFAULT_PREFIX, max_timeout: int = MAX
) -> list[str]:
    """The controller's InvalidTimeout Warnings for this Ingress (ingress.from_object, as
    its informer reads it), in the order it tells them."""
    settings = Settings(timeout_key=f"{prefix}/timeout", cluster_uid="0", max_timeout=max_timeout)
    parsed = from_object({**body, "metadata": {**body["metadata"], "namespace": "any"}}, settings)
    assert parsed is not None
    return [p.message for p in parsed.problems if p.reason == INVALID_TIMEOUT]


def event_words(raw: str, key: str = KEY, max_timeout: int = MAX) -> str:
    """The controller's Warning for ``key``'s value ``raw``."""
    [words] = controller_words(ingress("e", {key: raw}), key.rpartition("/")[0], max_timeout)
    return words


@pytest.fixture(scope="module")
def api(apiserver: ControlPlane) -> Iterator[Api]:
    """deploy/ applied (policy in Deny), a namespace of its own, the policy in force."""
    with deployed(apiserver):
        namespace = f"adm-{uuid.uuid4().hex[:8]}"
        apiserver.kubectl("create", "namespace", namespace)
        a = Api(apiserver, namespace)
        enforced(a)
        yield a


def set_settings(plane: ControlPlane, **data: str) -> None:
    patch = json.dumps({"data": data})
    plane.kubectl("patch", "configmap", SETTINGS, "-n", NS, "--type=merge", "-p", patch)


def test_kubectl_annotate_with_a_bad_value_is_refused_with_the_event_words(api: Api) -> None:
    created = api.create(ingress("shop", {KEY: "30s"}))
    assert created.status_code == 201, created.text

    done = api.kubectl("annotate", "--overwrite", "ingress", "shop", f"{KEY}=1d")

    assert done.returncode != 0
    assert event_words("1d") in done.stderr
    assert "ValidatingAdmissionPolicy 'gke-ingress-timeout'" in done.stderr
    print(f"$ kubectl annotate --overwrite ingress shop {KEY}=1d\n{done.stderr}")
    kept = json.loads(api.kubectl("get", "ingress", "shop", "-o", "json").stdout)
    assert kept["metadata"]["annotations"][KEY] == "30s"


def test_a_good_value_passes(api: Api) -> None:
    api.create(ingress("good", {}))
    for value in ("3600", "1h30m", "90s", "86400", "24h"):
        done = api.kubectl("annotate", "--overwrite", "ingress", "good", f"{KEY}={value}")
        assert done.returncode == 0, done.stderr
        assert "Warning" not in done.stderr


def test_kubectl_annotate_with_a_bad_draining_timeout_is_refused_with_the_event_words(
    api: Api,
) -> None:
    created = api.create(ingress("drain", {DRAINING_KEY: "5m"}))
    assert created.status_code == 201, created.text

    for bad in ("5 m", "-1", "3601", "2h"):
        done = api.kubectl("annotate", "--overwrite", "ingress", "drain", f"{DRAINING_KEY}={bad}")

        assert done.returncode != 0
        assert done.stderr.strip().endswith(DENIED + event_words(bad, DRAINING_KEY)), done.stderr
    print(f"$ kubectl annotate --overwrite ingress drain {DRAINING_KEY}=2h\n{done.stderr}")
    kept = json.loads(api.kubectl("get", "ingress", "drain", "-o", "json").stdout)
    assert kept["metadata"]["annotations"][DRAINING_KEY] == "5m"
    for good in ("0", "0s", "300", "1h", str(API_MAX_DRAINING)):
        done = api.kubectl("annotate", "--overwrite", "ingress", "drain", f"{DRAINING_KEY}={good}")
        assert done.returncode == 0, done.stderr


def test_a_value_above_the_maximum_is_refused_with_the_range(api: Api) -> None:
    admitted, message = api.verdict({KEY: "86401"})

    assert not admitted
    assert message.endswith(event_words("86401"))
    assert "from 1s to 86400s" in message


@pytest.mark.parametrize(
    ("annotations", "class_name"),
    [
        ({"kubernetes.io/ingress.class": "nginx"}, None),
        ({}, "nginx"),
        ({"kubernetes.io/ingress.class": "gce-internal-not"}, None),
    ],
)
def test_ingresses_of_other_classes_are_not_judged(
    api: Api, annotations: dict[str, str], class_name: str | None
) -> None:
    body = ingress("other", {**annotations, KEY: "1d"}, class_name)

    assert api.create(body, dry_run=True).status_code == 201


@pytest.mark.parametrize("gce_class", ["gce", "gce-internal", "gce-regional-external"])
def test_every_gce_class_is_judged(api: Api, gce_class: str) -> None:
    body = ingress("mine", {"kubernetes.io/ingress.class": gce_class, KEY: "1d"})

    assert api.create(body, dry_run=True).status_code == 422


def test_an_ingress_invalid_before_takes_writes_that_leave_the_annotation_alone(
    api: Api, apiserver: ControlPlane
) -> None:
    # Warn: the write goes through with the message as a warning.
    warn = json.dumps([{"op": "replace", "path": "/spec/validationActions", "value": ["Warn"]}])
    binding = ("validatingadmissionpolicybinding", "gke-ingress-timeout")
    apiserver.kubectl("patch", *binding, "--type=json", "-p", warn)
    try:
        eventually(lambda: api.verdict({KEY: "1d"})[0], timeout=60, what="Warn in force")
        manifest = json.dumps(ingress("legacy", {KEY: "1d"}))
        done = subprocess.run(
            [
                str(apiserver.assets / "kubectl"),
                f"--kubeconfig={apiserver.kubeconfig}",
                "-n",
                api.namespace,
                "create",
                "-f",
                "-",
            ],
            input=manifest,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr.startswith("Warning: ")
        assert event_words("1d") in done.stderr
        print(f"$ kubectl create -f legacy.json  # Warn mode\n{done.stderr}{done.stdout}")
    finally:
        deny = warn.replace('["Warn"]', '["Deny"]')
        apiserver.kubectl("patch", *binding, "--type=json", "-p", deny)
    enforced(api)

    # ingress-gce's writes: its annotations, a label, the status subresource.
    backends = json.dumps({"k8s1-0123456789abcdef-default-web-80-1a2b3c4d": "HEALTHY"})
    for args in (
        ("annotate", "ingress", "legacy", f"ingress.kubernetes.io/backends={backends}"),
        ("label", "ingress", "legacy", "touched=yes"),
    ):
        done = api.kubectl(*args)
        assert done.returncode == 0, done.stderr
    status = {"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}}
    done = api.kubectl(
        "patch", "ingress", "legacy", "--subresource=status", "--type=merge", "-p",
        json.dumps(status),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # Changing the bad value to another bad one is a write of it, and refused.
    done = api.kubectl("annotate", "--overwrite", "ingress", "legacy", f"{KEY}=2d")
    assert done.returncode != 0
    assert event_words("2d") in done.stderr
    # Taking the annotation away is allowed: nothing is left to judge.
    done = api.kubectl("annotate", "ingress", "legacy", f"{KEY}-")
    assert done.returncode == 0, done.stderr


def test_it_follows_the_settings_the_controller_reads(api: Api, apiserver: ControlPlane) -> None:
    deployment = (DEPLOY / "deployment.yaml").read_text()
    # The Deployment takes both flags from the ConfigMap the binding names as parameters.
    for env, key in (
        ("INGRESS_TIMEOUT_ANNOTATION_PREFIX", "annotation-prefix"),
        ("INGRESS_TIMEOUT_MAX_TIMEOUT", "max-timeout"),
        ("INGRESS_TIMEOUT_NAMESPACES", "namespaces"),
    ):
        assert f"name: {env}\n" in deployment
        assert f"{{name: {SETTINGS}, key: {key}}}" in deployment

    set_settings(apiserver, **{"annotation-prefix": "example.com", "max-timeout": "3600"})
    try:
        enforced(api, "example.com/timeout", "2h")
        admitted, message = api.verdict({"example.com/timeout": "2h"})
        assert not admitted
        assert message.endswith(event_words("2h", "example.com/timeout", 3600))
        assert api.verdict({"example.com/timeout": "1h"})[0]
        assert api.verdict({KEY: "1d"})[0], "the old prefix is no longer the controller's"

        set_settings(apiserver, namespaces=f"elsewhere, {api.namespace}")
        assert not api.verdict({"example.com/timeout": "2h"})[0]
        set_settings(apiserver, namespaces="elsewhere")
        eventually(lambda: api.verdict({"example.com/timeout": "2h"})[0], timeout=60)

        # Settings it cannot read refuse nothing (the controller would not start on them).
        set_settings(apiserver, namespaces="", **{"max-timeout": "ten"})
        eventually(lambda: api.verdict({"example.com/timeout": "2h"})[0], timeout=60)
        assert api.verdict({"example.com/timeout": "1d"})[0]
    finally:
        set_settings(
            apiserver,
            **{"annotation-prefix": DEFAULT_PREFIX, "max-timeout": str(MAX), "namespaces": ""},
        )
    enforced(api)


# Strings near the grammar, and anything at all.
_NEAR = st.text(alphabet="0123456789hms", max_size=30)
_UNITS = st.from_regex(r"\A([0-9]{1,7}h)?([0-9]{1,9}m)?([0-9]{1,11}s)?\Z", fullmatch=True)
_VALUES = st.one_of(
    _NEAR,
    _UNITS,
    st.integers(min_value=0, max_value=10**13).map(str),
    st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=45),
    st.text(alphabet="0123456789hms \t\n+-.dHMS\u0660\u0661\uff11", max_size=15),
)


def agree(api: Api, annotations: dict[str, str], body: dict[str, Any] | None = None) -> None:
    """The apiserver admits a CREATE of this Ingress exactly when the controller warns of
    none of its annotations; when it refuses, it says the controller's first Warning, byte
    for byte, for every value that is printable ASCII (what a kubectl user types; the
    controller escapes the rest as JSON does, which CEL cannot)."""
    body = body or ingress(f"p-{uuid.uuid4().hex[:8]}", annotations)
    words = controller_words(body)

    admitted, message = api.verdict(annotations, body)

    assert admitted == (words == []), (annotations, message, words)
    if not admitted and all(v.isascii() and v.isprintable() for v in annotations.values()):
        assert message.endswith(DENIED + words[0]), (annotations, message)


@PROPERTY
@given(raw=_VALUES)
def test_the_apiserver_and_the_controller_agree_on_every_timeout(api: Api, raw: str) -> None:
    agree(api, {KEY: raw})


@PROPERTY
@given(raw=_VALUES)
def test_the_apiserver_and_the_controller_agree_on_every_draining_timeout(
    api: Api, raw: str
) -> None:
    agree(api, {DRAINING_KEY: raw})


def test_the_warn_component_turns_deny_into_warn(apiserver: ControlPlane, tmp_path: Path) -> None:
    deploy = os.path.relpath(DEPLOY, tmp_path)  # kustomize takes no absolute root
    (tmp_path / "kustomization.yaml").write_text(
        f"resources: [{deploy}]\ncomponents: [{deploy}/admission/warn]\n"
    )
    built = apiserver.kubectl("kustomize", str(tmp_path))
    [binding] = [
        d for d in yaml.safe_load_all(built) if d["kind"] == "ValidatingAdmissionPolicyBinding"
    ]
    assert binding["spec"]["validationActions"] == ["Warn"]
    plain = apiserver.kubectl("kustomize", str(DEPLOY))
    assert '["Deny"]' in plain or "- Deny" in plain
