"""deploy/'s ValidatingAdmissionPolicy in the real kube-apiserver: a bad timeout is refused
when written, with the controller's own words; a good one, another class's and a write
that leaves the annotation alone pass; it follows the settings the controller reads; and
for generated strings its verdict is annotations.parse_timeout's.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from controller.annotations import MAP_ENTRY, MAP_GRAMMAR, SELECTOR
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
MAP_KEY = f"{DEFAULT_PREFIX}/timeouts"
MAX = 86400
# Each example is a round trip to the apiserver: few, and the same ones under CI.
PROPERTY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=IN_CI,
)


Route = tuple[str, int | str]  # a Service and its port, a number or a name


def backend(service: str, port: int | str) -> dict[str, Any]:
    named = {"number": port} if isinstance(port, int) else {"name": port}
    return {"service": {"name": service, "port": named}}


def ingress(
    name: str,
    annotations: dict[str, str],
    class_name: str | None = None,
    routes: list[Route] | None = None,
    default: Route | None = ("web", 80),
) -> dict[str, Any]:
    """A gce Ingress: ``default`` its default backend, ``routes`` one path each."""
    spec: dict[str, Any] = {"defaultBackend": backend(*default)} if default else {}
    if routes:
        paths = [
            {"path": f"/{i}", "pathType": "Prefix", "backend": backend(*route)}
            for i, route in enumerate(routes)
        ]
        spec["rules"] = [{"http": {"paths": paths}}]
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
        legacy = {KEY: "1d", DRAINING_KEY: "2h", MAP_KEY: '{"nope": "1h"}'}
        manifest = json.dumps(ingress("legacy", legacy))
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
        # A warning for the durations (the first refused, by key) and one for the map.
        told = controller_words(ingress("legacy", legacy))
        assert [w for w in told if w in done.stderr] == told[1:]  # the map's, draining's
        print(f"$ kubectl create -f legacy.json  # Warn mode\n{done.stderr}{done.stdout}")
    finally:
        deny = warn.replace('["Warn"]', '["Deny"]')
        apiserver.kubectl("patch", *binding, "--type=json", "-p", deny)
    enforced(api)

    # ingress-gce's writes: its annotations, a label, the status subresource; and a user's
    # change of the spec that leaves the annotations as they were.
    backends = json.dumps({"k8s1-0123456789abcdef-default-web-80-1a2b3c4d": "HEALTHY"})
    spec = {"spec": {"defaultBackend": backend("shop", 8080)}}
    for args in (
        ("annotate", "ingress", "legacy", f"ingress.kubernetes.io/backends={backends}"),
        ("label", "ingress", "legacy", "touched=yes"),
        ("patch", "ingress", "legacy", "--type=merge", "-p", json.dumps(spec)),
    ):
        done = api.kubectl(*args)
        assert done.returncode == 0, done.stderr
    status = {"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}}
    done = api.kubectl(
        "patch", "ingress", "legacy", "--subresource=status", "--type=merge", "-p",
        json.dumps(status),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # Changing a bad value to another bad one is a write of it, and refused.
    for key, bad in ((KEY, "2d"), (DRAINING_KEY, "3h"), (MAP_KEY, '{"nope": "2h"}')):
        done = api.kubectl("annotate", "--overwrite", "ingress", "legacy", f"{key}={bad}")
        assert done.returncode != 0
        body = ingress("legacy", {key: bad}, default=("shop", 8080))
        assert done.stderr.strip().endswith(DENIED + controller_words(body)[0]), done.stderr
    # Taking the annotations away is allowed: nothing is left to judge.
    done = api.kubectl(
        "annotate", "ingress", "legacy", f"{KEY}-", f"{DRAINING_KEY}-", f"{MAP_KEY}-"
    )
    assert done.returncode == 0, done.stderr


def test_it_follows_the_settings_the_controller_reads(
    apiserver_factory: Callable[..., ControlPlane],
) -> None:
    deployment = (DEPLOY / "deployment.yaml").read_text()
    # The Deployment takes both flags from the ConfigMap the binding names as parameters.
    for env, key in (
        ("INGRESS_TIMEOUT_ANNOTATION_PREFIX", "annotation-prefix"),
        ("INGRESS_TIMEOUT_MAX_TIMEOUT", "max-timeout"),
        ("INGRESS_TIMEOUT_NAMESPACES", "namespaces"),
    ):
        assert f"name: {env}\n" in deployment
        assert f"{{name: {SETTINGS}, key: {key}}}" in deployment

    # An apiserver of its own: once a binding naming a ConfigMap as its parameters is
    # deleted, kube-apiserver stops watching ConfigMaps for policies and judges by the
    # settings it held for the rest of its life (kubernetes/kubernetes#130887). The
    # session's apiserver has seen deployed() delete the binding; this one has not.
    apiserver = apiserver_factory()
    with deployed(apiserver):
        apiserver.kubectl("create", "namespace", "settings")
        api = Api(apiserver, "settings")
        enforced(api)

        set_settings(apiserver, **{"annotation-prefix": "example.com", "max-timeout": "3600"})
        enforced(api, "example.com/timeout", "2h")
        admitted, message = api.verdict({"example.com/timeout": "2h"})
        assert not admitted
        assert message.endswith(event_words("2h", "example.com/timeout", 3600))
        assert api.verdict({"example.com/timeout": "1h"})[0]
        for key, value in (("timeouts", '{"web": "2h"}'), ("draining-timeout", "2h")):
            admitted, message = api.verdict({f"example.com/{key}": value})
            body = ingress("e", {f"example.com/{key}": value})
            assert not admitted
            assert message.endswith(DENIED + controller_words(body, "example.com", 3600)[0])
        assert api.verdict({"example.com/timeouts": '{"web": "1h"}'})[0]
        for key, value in ((KEY, "1d"), (DRAINING_KEY, "2h"), (MAP_KEY, "{")):
            assert api.verdict({key: value})[0], "the old prefix is no longer the controller's"

        set_settings(apiserver, namespaces=f"elsewhere, {api.namespace}")
        assert not api.verdict({"example.com/timeout": "2h"})[0]
        set_settings(apiserver, namespaces="elsewhere")
        eventually(lambda: api.verdict({"example.com/timeout": "2h"})[0], timeout=60)

        # Settings it cannot read refuse nothing (the controller would not start on them).
        set_settings(apiserver, namespaces="", **{"max-timeout": "ten"})
        eventually(lambda: api.verdict({"example.com/timeout": "2h"})[0], timeout=60)
        assert api.verdict({"example.com/timeout": "1d"})[0]


def test_the_apiserver_keeps_old_settings_once_the_binding_came_back_as_the_readme_warns(
    apiserver_factory: Callable[..., ControlPlane],
) -> None:
    """The README's caution (kubernetes/kubernetes#130887) holds on the apiserver the
    tests run; when this fails, kube-apiserver follows again and the caution can go."""
    apiserver = apiserver_factory()
    with deployed(apiserver):
        enforced(Api(apiserver, "default"))
    with deployed(apiserver):  # the binding back, after a moment with none
        api = Api(apiserver, "default")
        enforced(api)
        set_settings(apiserver, **{"annotation-prefix": "example.com"})
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            assert api.verdict({"example.com/timeout": "1d"})[0]
            assert not api.verdict({KEY: "1d"})[0]
            time.sleep(0.5)


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
    for byte, whatever the value."""
    body = body or ingress(f"p-{uuid.uuid4().hex[:8]}", annotations)
    words = controller_words(body)

    admitted, message = api.verdict(annotations, body)

    assert admitted == (words == []), (annotations, body["spec"], message, words)
    if not admitted:
        assert message.endswith(DENIED + words[0]), (annotations, body["spec"], message)


# Always: each character JSON escapes, line separators, and characters beyond ASCII.
_ESCAPED = "".join(chr(c) for c in range(0x20)) + '"\\\x7f\x85\u2028\u2029\u202e\u00e9\uff11'


def _escapes(test: Any) -> Any:
    for at in range(0, len(_ESCAPED), 8):
        test = example(raw="1h" + _ESCAPED[at : at + 8])(test)
    return example(raw="x" * 39 + "\n\u2028")(test)


@PROPERTY
@given(raw=_VALUES)
@_escapes
def test_the_apiserver_and_the_controller_agree_on_every_timeout(api: Api, raw: str) -> None:
    agree(api, {KEY: raw})


@PROPERTY
@given(raw=_VALUES)
@_escapes
def test_the_apiserver_and_the_controller_agree_on_every_draining_timeout(
    api: Api, raw: str
) -> None:
    agree(api, {DRAINING_KEY: raw})


# The per-Service map, on an Ingress routing to a few Services by port number or name. Its
# entries name mostly Services it routes to, bare or with a port (one it routes them by,
# another named alike, or one named the other way), else other Services, near misses and
# anything printable; their values durations, whole numbers and near misses; any JSON
# whitespace between. One map in five has a value outside the grammar, one in ten a key
# twice; one in twenty is no map at all.
_SERVICES = st.sampled_from(["ws", "api", "web", "a-1"])
_PORTS: st.SearchStrategy[int | str] = st.sampled_from([80, 8080, 65535, "http", "grpc", "h2c-1"])
_PLAIN = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\'), max_size=12
)
_NEAR_MISSES = st.sampled_from(
    [
        *("Ws", "", "ws:", ":80", "ws:0", "ws:080", "ws:65536", "ws:8-0", "ws:HTTP", "other"),
        *("a" * 63, "a" * 64, "a" * 63 + ":named-port-15", "a" * 63 + ":named-port-16c"),
    ]
)
_ENTRY_VALUES = st.one_of(
    st.sampled_from(["1h", "30s", "90", "1h30m", "24h", "86400"]).map(json.dumps),
    st.integers(min_value=1, max_value=86400).map(str),
    st.sampled_from(["86401", "0", "", "1d", "1h 30m", "-5", "1.5", "x" * 45]).map(json.dumps),
    _PLAIN.map(json.dumps),
    st.integers(min_value=-5, max_value=10**14).map(str),
)
_OUTSIDE = st.one_of(
    st.sampled_from(
        ["-0", "1.5", "1e3", "true", "null", "[1]", '{"h": 1}', '"\\u0031h"', "01", '"\u00e9"']
    ),
    st.text(max_size=3).map(json.dumps),
)
_GAP = st.sampled_from(["", " ", "  ", "\n  ", "\t", "\r\n"])


@st.composite
def _routed_maps(draw: st.DrawFn) -> tuple[str, list[Route], Route | None]:
    """(the map, the routes of the Ingress's paths, its default backend)."""
    routes = draw(st.lists(st.tuples(_SERVICES, _PORTS), min_size=1, max_size=4))
    default = draw(st.one_of(st.none(), st.tuples(_SERVICES, _PORTS)))
    routed = [*routes, *([default] if default else [])]
    if draw(st.integers(0, 19)) == 0:
        return draw(st.one_of(_PLAIN, st.text(max_size=20))), routes, default
    near = st.sampled_from(routed).flatmap(
        lambda r: st.sampled_from(
            [r[0], f"{r[0]}:{r[1]}", f"{r[0]}:81", f"{r[0]}:grpc", f"{r[0]}:h2c-2"]
        )
    )
    selectors = st.one_of(*[near] * 6, _SERVICES, _NEAR_MISSES, _PLAIN)
    entries = draw(
        st.lists(st.tuples(selectors, _ENTRY_VALUES), max_size=4, unique_by=lambda e: e[0])
    )
    if entries and draw(st.integers(0, 4)) == 0:
        at = draw(st.integers(0, len(entries) - 1))
        entries[at] = (entries[at][0], draw(_OUTSIDE))
    if entries and draw(st.integers(0, 9)) == 0:
        entries.append((draw(st.sampled_from(entries))[0], draw(_ENTRY_VALUES)))
    gap = draw(_GAP)
    text = f",{gap}".join(f'"{k}"{draw(_GAP)}:{gap}{v}' for k, v in entries)
    return f"{draw(_GAP)}{{{gap}{text}{gap}}}{draw(_GAP)}", routes, default


@PROPERTY
@given(case=_routed_maps())
# Always, each rule of the ports: a miss like for like, unlike, and a spec naming both ways.
@example(case=('{"ws:81": "1h", "api": "1d"}', [("ws", 8080), ("ws", 80)], None))
@example(case=('{"ws:grpc": "1h"}', [("ws", "http")], ("ws", "h2c-1")))
@example(case=('{"ws:http": "1h", "web:81": "1h"}', [("ws", 8080)], ("web", 80)))
@example(case=('{"ws:grpc": "1h"}', [("ws", "http"), ("ws", 81)], None))
def test_the_apiserver_and_the_controller_agree_on_every_map(
    api: Api, case: tuple[str, list[Route], Route | None]
) -> None:
    # Every verdict and message, whatever the spec routes to: the Service check, the port
    # check (like for like) and the values, entry by entry in the controller's order.
    raw, routes, default = case
    body = ingress(f"m-{uuid.uuid4().hex[:8]}", {MAP_KEY: raw}, None, routes, default)

    agree(api, {MAP_KEY: raw}, body)


def test_the_policy_reads_the_map_with_the_controllers_own_grammar() -> None:
    policy = yaml.safe_load((DEPLOY / "admission" / "policy.yaml").read_text())
    texts = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}

    assert texts["mapGrammar"] == f"r'{MAP_GRAMMAR.pattern}'"
    assert texts["mapEntry"] == f"r'{MAP_ENTRY}'"
    assert texts["selector"] == f"r'{SELECTOR.pattern}'"


CHAT: list[Route] = [("ws", 8080), ("api", "http"), ("api", 81)]


def test_kubectl_annotate_with_a_bad_map_is_refused_with_the_event_words(api: Api) -> None:
    created = api.create(ingress("chat", {MAP_KEY: '{"ws": "1h"}'}, routes=CHAT))
    assert created.status_code == 201, created.text
    shown = []

    for bad in (
        '{"ws": 1h}',  # not JSON
        '{"ws": "1h", "api": 1.5}',  # JSON, not its grammar
        '{"ws": "1h", "ws": "2h"}',
        '{"ws": "1h", "api": "2d"}',  # out of range
        '{"ws": "1h", "wss": "30s"}',  # a typo: a Service it does not route to
        '{"ws:9090": "1h"}',  # a port it does not route ws to
        '{"Ws": "1h"}',  # not a Service name
    ):
        done = api.kubectl("annotate", "--overwrite", "ingress", "chat", f"{MAP_KEY}={bad}")

        assert done.returncode != 0, bad
        [words, *_] = controller_words(ingress("chat", {MAP_KEY: bad}, routes=CHAT))
        assert done.stderr.strip().endswith(DENIED + words), done.stderr
        shown.append(
            f"$ kubectl annotate --overwrite ingress chat {MAP_KEY}='{bad}'\n{done.stderr}"
        )
    print("".join(shown))
    kept = json.loads(api.kubectl("get", "ingress", "chat", "-o", "json").stdout)
    assert kept["metadata"]["annotations"][MAP_KEY] == '{"ws": "1h"}'

    for good in (
        '{"ws": "1h", "api": "30s"}',
        '{"ws:8080": 3600, "api:http": "30s", "api:81": "1m", "web": "90s"}',
        '{"api:grpc": "1h"}',  # the spec names api's ports both ways: only the Service knows
        "{}",
        json.dumps({"ws": "1h", "api": 30}, indent=2),
    ):
        done = api.kubectl("annotate", "--overwrite", "ingress", "chat", f"{MAP_KEY}={good}")
        assert done.returncode == 0, (good, done.stderr)


def test_the_largest_map_is_judged_to_its_last_entry(api: Api) -> None:
    # 64 entries in 16 KiB, on an Ingress routing to 64 Services over 2000 paths: judged
    # whole inside CEL's cost budget. An evaluation error would admit it (failurePolicy
    # Ignore), so a refusal with the last entry's words is what shows it was judged.
    services = [f"service-{i:02}-{'x' * 40}" for i in range(64)]
    routes: list[Route] = [(services[i % 64], 8000 + i % 7) for i in range(2000)]
    for last, admitted in (("1h", True), ("25h", False)):
        values = {s: "1h" for s in services} | {services[-1]: last}
        compact = json.dumps(values, separators=(",", ":"))
        pad = " " * ((16384 - len(compact)) // 64)  # after each colon
        raw = json.dumps(values, separators=(",", ":" + pad))
        assert 16300 < len(raw) <= 16384
        body = ingress(f"big-{last}", {MAP_KEY: raw}, routes=routes)
        assert len(json.dumps(body)) < 400_000

        assert api.verdict({MAP_KEY: raw}, body)[0] is admitted
        agree(api, {MAP_KEY: raw}, body)


@pytest.mark.parametrize(
    "raw",
    [
        '{"ws": "' + "1" * 250_000 + '"}',  # as long as the apiserver lets an annotation be
        "{" * 16_000,
        "[" * 16_000,
        '{"ws": ' + "1" * 16_000 + "}",
        '{"ws":' + " " * 16_000 + '"1d"}',
        '{"' + "a" * 16_000 + '": "1h"}',
        "{" + ",".join(f'"a{i}":1' for i in range(1700)) + "}",  # 1700 entries in 16 KiB
        "{" + ",".join(['"ws":1'] * 64) + "}",  # one key 64 times
        "{" + ",".join(['"ws":1'] * 2300) + "}",
        '{"ws": "' + "9h" * 8000 + '"}',
        '{"ws": "1h"' + ', "ws": "1h"' * 10 + " " * 16_000 + "}",
    ],
    ids=lambda raw: f"{raw[:12]}...{len(raw)}",
)
def test_a_huge_or_pathological_map_is_refused_never_admitted_by_error(api: Api, raw: str) -> None:
    admitted, message = api.verdict({MAP_KEY: raw}, ingress("huge", {MAP_KEY: raw}, routes=CHAT))

    assert not admitted
    assert message.endswith(DENIED + controller_words(ingress("h", {MAP_KEY: raw}, routes=CHAT))[0])


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
