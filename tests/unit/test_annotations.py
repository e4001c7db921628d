"""Parsing what users and ingress-gce write: every accepted and refused form."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from controller.annotations import (
    CLASS_ANNOTATION as CLASS,
)
from controller.annotations import (
    Invalid,
    is_gce,
    parse_backends,
    parse_timeout,
    scope,
)
from controller.ingress import Ingress, from_object
from controller.model import BackendRef, Settings

KEY = "ingress-timeout.dev/timeout"
SETTINGS = Settings(timeout_key=KEY, cluster_uid="0e20ca25204f6195", region="europe-west1")


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("3600", 3600),
        ("1", 1),
        ("86400", 86400),
        ("90s", 90),
        ("15m", 900),
        ("1h", 3600),
        ("1h30m", 5400),
        ("1h0m5s", 3605),
        ("24h", 86400),
        ("0090", 90),
    ],
)
def test_accepted_timeouts_become_seconds(raw, seconds):
    assert parse_timeout(raw, key=KEY, max_timeout=86400) == seconds


@pytest.mark.parametrize(
    "raw",
    [
        "",
        " ",
        "-5",
        "0",
        "0s",
        "1.5",
        "abc",
        "99999999999",
        '{"timeout": 5}',
        "\u0661\u0662",
        "\uff11\uff12",
        "1h 30m",
        "30m1h",
        "3600 ",
        " 3600",
        "1d",
        "86401",
        "24h1s",
        "+5",
        "5S",
        "1e3",
        "0x10",
        "h",
        "ms",
    ],
)
def test_refused_timeouts_say_what_is_accepted(raw):
    with pytest.raises(Invalid) as refused:
        parse_timeout(raw, key=KEY, max_timeout=86400)
    message = str(refused.value)
    assert KEY in message
    assert '"3600"' in message and "1h30m" in message and "86400s" in message


def test_max_timeout_is_the_admins_bound():
    assert parse_timeout("600", key=KEY, max_timeout=600) == 600
    with pytest.raises(Invalid, match="from 1s to 600s"):
        parse_timeout("601", key=KEY, max_timeout=600)


def test_refusal_message_quotes_long_values_briefly():
    with pytest.raises(Invalid) as refused:
        parse_timeout("x" * 5000, key=KEY, max_timeout=86400)
    assert len(str(refused.value)) < 300


def test_backends_are_the_keys_of_ingress_gce_json():
    raw = (
        '{"k8s-be-30480--0e20ca25204f6195":"HEALTHY",'
        '"k8s1-8076ec74-default-web-80-fcd32a34":"Unknown"}'
    )
    assert parse_backends(raw, max_backends=64) == (
        "k8s-be-30480--0e20ca25204f6195",
        "k8s1-8076ec74-default-web-80-fcd32a34",
    )


@pytest.mark.parametrize("raw", ["", "Unknown", "{}"])
def test_backends_not_built_yet_are_no_names(raw):
    assert parse_backends(raw, max_backends=64) == ()


@pytest.mark.parametrize(
    "raw",
    ["not json", '["a","b"]', '"k8s-be-1"', "{", '{"Bad_Name":"HEALTHY"}', '{"a/b":"x"}', "42"],
)
def test_malformed_backends_are_refused(raw):
    with pytest.raises(Invalid, match=r"ingress\.kubernetes\.io/backends"):
        parse_backends(raw, max_backends=64)


@pytest.mark.parametrize(
    ("annotation", "class_name", "gce"),
    [
        ("gce", None, True),
        ("gce-internal", None, True),
        ("gce-regional-external", None, True),
        (None, None, True),
        ("", None, True),
        (None, "nginx", False),
        ("", "gce", False),
        ("nginx", None, False),
        ("traefik", "gce", False),
    ],
)
def test_only_gce_classes_count(annotation, class_name, gce):
    assert is_gce(annotation, class_name) is gce


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        ("gce", "global"),
        (None, "global"),
        ("gce-internal", "europe-west1"),
        ("gce-regional-external", "europe-west1"),
    ],
)
def test_internal_and_regional_external_classes_are_regional(annotation, expected):
    assert scope(annotation, "europe-west1") == expected


def test_ingress_keeps_only_what_decisions_need():
    web = "k8s1-0e20ca25-shop-web-80-1111"
    obj = {
        "metadata": {
            "namespace": "shop",
            "name": "chat",
            "uid": "u-1",
            "resourceVersion": "17",
            "annotations": {
                KEY: "1h",
                "ingress.kubernetes.io/backends": json.dumps({web: "HEALTHY"}),
                "other": "x",
            },
            "managedFields": [{"manager": "kubectl"}],
        },
        "spec": {
            "defaultBackend": {"service": {"name": "web", "port": {"number": 80}}},
            "rules": [
                {
                    "http": {
                        "paths": [
                            {"backend": {"service": {"name": "chat"}}},
                            {"backend": {"resource": {"kind": "Bucket"}}},
                        ]
                    }
                },
                {"host": "no-http.example"},
            ],
        },
    }
    ingress = from_object(obj, SETTINGS)
    assert ingress == Ingress(
        "shop", "chat", "u-1", frozenset({"web", "chat"}), (BackendRef("global", web),), 3600
    )


def test_an_ingress_of_another_class_or_namespace_is_not_kept():
    nginx = {"metadata": {"namespace": "shop", "name": "a", "annotations": {CLASS: "nginx"}}}
    assert from_object(nginx, SETTINGS) is None
    elsewhere = {"metadata": {"namespace": "bank", "name": "a"}}
    assert from_object(elsewhere, replace(SETTINGS, namespaces=frozenset({"shop"}))) is None


def test_an_ingress_asking_nothing_keeps_its_identity_only():
    plain = {"metadata": {"namespace": "shop", "name": "a", "uid": "u"}, "spec": {"rules": []}}
    assert from_object(plain, SETTINGS) == Ingress("shop", "a", "u")


def _with(timeout: str, backends: str) -> dict[str, object]:
    annotations = {KEY: timeout, "ingress.kubernetes.io/backends": backends}
    return {"metadata": {"namespace": "shop", "name": "a", "annotations": annotations}}


@pytest.mark.parametrize(
    ("backends", "says"),
    [
        ("[" * 100_000, "characters long"),  # the nesting bomb of the issue
        ("[" * 16_000, "not the JSON object"),  # one that fits the size bound
        ("{" * 16384, "not the JSON object"),
        (json.dumps({f"k8s1-0e20ca25-b{i}": "HEALTHY" for i in range(65)}), "65 backend"),
        (json.dumps({f"k8s1-0e20ca25-b{i}": "x" * 200 for i in range(100)}), "characters long"),
        ('{"' + "a" * 250_000 + '": 1}', "characters long"),
    ],
)
def test_hostile_backends_annotation_is_a_problem_not_an_exception(backends, says):
    ingress = from_object(_with("1h", backends), SETTINGS)
    assert ingress is not None and ingress.problem is not None
    assert ingress.problem.reason == "InvalidBackends" and says in ingress.problem.message
    assert ingress.refs == () and len(ingress.problem.message) < 300


def test_hostile_timeout_annotation_is_a_short_problem():
    ingress = from_object(_with("9" * 250_000, "{}"), SETTINGS)
    assert ingress is not None and ingress.problem is not None
    assert ingress.problem.reason == "InvalidTimeout" and len(ingress.problem.message) < 300


def test_a_regional_ingress_without_a_region_is_a_problem():
    obj = _with("1h", "{}")
    obj["metadata"]["annotations"][CLASS] = "gce-internal"  # type: ignore[index]
    ingress = from_object(obj, replace(SETTINGS, region=""))
    assert ingress is not None and ingress.problem is not None
    assert ingress.problem.reason == "RegionUnknown"


def test_an_ingress_routing_to_thousands_of_services_is_a_problem_not_kept_whole():
    # A tenant's spec may name thousands of Services (up to the 1.5 MB object limit);
    # keeping them all for each such Ingress would grow memory without bound.
    paths = [{"backend": {"service": {"name": f"svc-{i:05d}"}}} for i in range(5000)]
    obj = _with("1h", "{}")
    obj["spec"] = {"rules": [{"http": {"paths": paths}}]}
    ingress = from_object(obj, SETTINGS)
    assert ingress is not None and ingress.problem is not None
    assert ingress.problem.reason == "InvalidSpec" and "5000 Services" in ingress.problem.message
    assert ingress.services == frozenset()
