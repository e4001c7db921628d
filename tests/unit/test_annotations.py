"""Parsing what users and ingress-gce write: every accepted and refused form."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.annotations import (
    CLASS_ANNOTATION as CLASS,
)
from controller.annotations import (
    MAP_GRAMMAR,
    MAX_MAP_BYTES,
    Invalid,
    is_gce,
    parse_backends,
    parse_duration,
    parse_per_service,
    parse_timeout,
    scope,
)
from controller.fields import DRAINING, TIMEOUT
from controller.ingress import KEEP, Ask, Ingress, Problem, from_object
from controller.model import BackendRef, Settings
from tests.conftest import IN_CI

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


def test_refusal_message_escapes_as_json_but_keeps_characters_beyond_ascii():
    # As the admission policy quotes them, which cannot tell a character's code point.
    with pytest.raises(Invalid) as refused:
        parse_timeout('\uff11\u00e9"\n\x00', key=KEY, max_timeout=86400)
    assert str(refused.value).startswith(f'{KEY}="\uff11\u00e9\\"\\n\\u0000" is not')


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
        "shop",
        "chat",
        "u-1",
        frozenset({"web", "chat"}),
        (BackendRef("global", web),),
        (("timeout", Ask(3600)),),
    )


def test_what_many_ingresses_hold_alike_is_one_object_and_no_fact_has_a_dict():
    # The facts of every Ingress stay in memory: the default backend that ingress-gce
    # names on each, the value they ask, their namespace, each held once.
    default = "k8s1-0e20ca25-kube-system-default-http-backend-80-ad87bb28"

    def obj(name: str) -> dict[str, object]:
        own = f"k8s1-0e20ca25-shop-{name}-80-1111"
        backends = json.dumps({default: "HEALTHY", own: "HEALTHY"})
        annotations = {KEY: "1h", "ingress.kubernetes.io/backends": backends}
        namespace = "".join(["sh", "op"])  # a string of its own, as each parsed one is
        return {"metadata": {"namespace": namespace, "name": name, "annotations": annotations}}

    a, b = from_object(obj("a"), SETTINGS), from_object(obj("b"), SETTINGS)
    assert a is not None and b is not None
    assert a.refs[0] == b.refs[0] == BackendRef("global", default) and a.refs[0] is b.refs[0]
    assert a.refs[1] != b.refs[1]
    assert a.ask("timeout") == Ask(3600) and a.ask("timeout") is b.ask("timeout")
    assert a.namespace is b.namespace
    for fact in (a, a.refs[0], a.ask("timeout")):
        assert not hasattr(fact, "__dict__"), type(fact)


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


def test_hostile_timeout_annotation_is_a_short_warning_and_keeps_what_was_asked():
    ingress = from_object(_with("9" * 250_000, "{}"), SETTINGS)
    assert ingress is not None and ingress.problem is None
    (warning,) = ingress.warnings
    assert warning.reason == "InvalidTimeout" and len(warning.message) < 300
    assert ingress.ask("timeout") == Ask(kept=frozenset({""}))


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


# --- per-Service timeouts and connection draining (issue 17) ----------------------------

MAP_KEY = "ingress-timeout.dev/timeouts"
DRAINING_KEY = "ingress-timeout.dev/draining-timeout"
ROUTES = {"ws": frozenset({"8080"}), "api": frozenset({"80"}), "named": frozenset({"http"})}


def per_service(raw: str, routes=ROUTES, maximum: int = 86400):
    return parse_per_service(raw, key=MAP_KEY, minimum=1, maximum=maximum, routes=routes)


def test_a_per_service_map_becomes_seconds_by_service_or_port():
    parsed = per_service('{"ws": "1h", "api": "30s", "ws:8080": 7200, "named:http": "90"}')
    assert dict(parsed.values) == {"ws": 3600, "api": 30, "ws:8080": 7200, "named:http": 90}
    assert parsed.invalid == frozenset() and parsed.refused == ()


NOT_A_MAP = (
    f'{MAP_KEY} is not a JSON object of Service (or "name:port") to timeout, such as '
    '{"ws": "1h", "api:8080": 30}, in printable ASCII without escapes; what it asked before '
    "stays"
)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("not json", NOT_A_MAP),
        ("", NOT_A_MAP),
        ('["ws"]', NOT_A_MAP),
        ('"1h"', NOT_A_MAP),
        ("[" * 10_000, NOT_A_MAP),
        ('{"ws": "1h",}', NOT_A_MAP),
        # JSON, but outside the grammar both sides read alike (CEL cannot decode JSON):
        ('{"ws": 1.5}', NOT_A_MAP),
        ('{"ws": 1e3}', NOT_A_MAP),
        ('{"ws": true}', NOT_A_MAP),
        ('{"ws": null}', NOT_A_MAP),
        ('{"ws": [1]}', NOT_A_MAP),
        ('{"ws": {"h": 1}}', NOT_A_MAP),
        ('{"ws": 0090}', NOT_A_MAP),
        ('{"w\\u0073": "1h"}', NOT_A_MAP),
        ('{"ws": "1\\u0068"}', NOT_A_MAP),
        ('{"w\u00e9": "1h"}', NOT_A_MAP),
        ('{"ws": "1h\t"}', NOT_A_MAP),
        ('\u00a0{"ws": "1h"}', NOT_A_MAP),
        (json.dumps({f"s{i}": "1h" for i in range(65)}), f"{MAP_KEY} has 65 entries, more than"),
        (json.dumps({"ws": "x" * MAX_MAP_BYTES}), f"{MAP_KEY} is 16394 characters long"),
        ('{"ws": "1h", "api": 30, "ws": "2h"}', f'{MAP_KEY} names "ws" more than once; what'),
        ('{"b": 1, "a": 1, "a": 2, "b": 2}', f'{MAP_KEY} names "b" more than once'),
    ],
)
def test_a_per_service_map_that_is_not_one_is_refused_whole(raw, says):
    with pytest.raises(Invalid) as refused:
        per_service(raw)
    assert str(refused.value).startswith(says) and len(str(refused.value)) < 300


@pytest.mark.parametrize(
    "raw",
    [
        '{"ws": "1h", "api": 30}',
        ' \t\r\n{ \n"ws"\t:\r"1h" ,\n"api":30}\n',
        "{}",
        "{ }",
        '{"ws": "1h"}',
        json.dumps({"ws": "1h", "api": 30}, indent=2),
        json.dumps({"ws": "1h", "api": 30}, separators=(",", ":")),
    ],
)
def test_a_map_in_any_json_layout_is_read(raw):
    assert per_service(raw).refused == ()


@given(
    entries=st.dictionaries(
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\')),
        st.one_of(
            st.text(
                st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\')
            ),
            st.integers(min_value=-(10**30), max_value=10**30),
        ),
        max_size=8,
    ),
    indent=st.sampled_from([None, 0, 2, "\t"]),
)
@settings(deadline=None, derandomize=IN_CI)
def test_every_plain_json_object_is_in_the_grammar(entries, indent):
    raw = json.dumps(entries, indent=indent)
    assert MAP_GRAMMAR.fullmatch(raw)
    per_service(raw)  # never anything but its own refusals


@given(raw=st.from_regex(MAP_GRAMMAR, fullmatch=True))
@settings(max_examples=40, deadline=None, derandomize=IN_CI)  # slow to generate
def test_every_value_of_the_grammar_is_json_and_read_as_written(raw):
    pairs = json.loads(raw, object_pairs_hook=list, parse_int=str)
    assert all(f'"{k}"' in raw and (f'"{v}"' in raw or v in raw) for k, v in pairs)
    try:
        per_service(raw)
    except Invalid as e:
        assert "more than once" in str(e) or "entries, more than" in str(e)


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("other", "names a Service this Ingress does not route to"),
        ("ws:9090", "names port 9090 of Service ws, which this Ingress routes to by 8080"),
        ("named:grpc", "names port grpc of Service named"),
        ("Bad Name", 'is not a Service name or "name:port"'),
        ("ws:8080:1", 'is not a Service name or "name:port"'),
        ("ws:0", 'is not a Service name or "name:port"'),
        ("ws:65536", 'is not a Service name or "name:port"'),
        ("ws:80a-", 'is not a Service name or "name:port"'),
        ("ws:080", 'is not a Service name or "name:port"'),
        ("ws:8-0", 'is not a Service name or "name:port"'),
        ("ws:123456", 'is not a Service name or "name:port"'),
        ("ws:", 'is not a Service name or "name:port"'),
        ("", 'is not a Service name or "name:port"'),
        ("a" * 64, 'is not a Service name or "name:port"'),
        ("ws:http-too-long-name", 'is not a Service name or "name:port"'),
    ],
)
def test_an_entry_naming_what_the_ingress_does_not_route_to_is_refused_alone(entry, says):
    parsed = per_service(json.dumps({entry: "1h", "api": "30s"}))
    assert dict(parsed.values) == {"api": 30}  # the other entries still apply
    assert parsed.invalid == frozenset()  # nothing of it was ever asked: nothing to keep
    (message,) = parsed.refused
    assert json.dumps(entry) in message and says in message and MAP_KEY in message


def test_a_port_named_the_other_way_than_the_spec_cannot_be_checked_and_is_kept():
    # The spec names ws's port by number, the entry by name: only the Service knows both.
    parsed = per_service('{"ws:http": "1h"}')
    assert dict(parsed.values) == {"ws:http": 3600} and parsed.refused == ()


@pytest.mark.parametrize(
    "bad",
    ['"abc"', '"0"', '"-5"', '"1.5"', '""', '"99999999"', "0", "-5", "-0", "1" + "0" * 5000],
)
def test_an_entry_with_an_invalid_value_keeps_what_it_asked_before(bad):
    parsed = per_service('{"ws": ' + bad + ', "api": "30s"}')
    assert dict(parsed.values) == {"api": 30}
    assert parsed.invalid == frozenset({"ws"})
    (message,) = parsed.refused
    written = bad.strip('"')  # a number is shown as written, like a string
    shown = written if len(written) <= 40 else written[:40] + "..."
    assert message == (
        f'{MAP_KEY}["ws"]="{shown}" is not a valid timeout: use whole seconds ("3600") or a '
        'duration ("90s", "15m", "1h", "1h30m") from 1s to 86400s; what it asked before stays'
    )


def test_an_entry_in_whole_seconds_is_read_as_written():
    assert dict(per_service('{"ws": 7200, "api": 30}').values) == {"ws": 7200, "api": 30}


def test_an_entry_above_the_max_is_refused_with_the_bounds():
    parsed = per_service('{"ws": "2h"}', maximum=3600)
    assert parsed.invalid == frozenset({"ws"}) and "from 1s to 3600s" in parsed.refused[0]


@pytest.mark.parametrize(("raw", "seconds"), [("0", 0), ("0s", 0), ("300", 300), ("1h", 3600)])
def test_draining_accepts_zero_to_an_hour(raw, seconds):
    assert parse_duration(raw, key=DRAINING_KEY, minimum=0, maximum=3600) == seconds


@pytest.mark.parametrize("raw", ["-1", "3601", "1h1s", "abc", "", "1.5"])
def test_draining_outside_zero_to_an_hour_is_refused(raw):
    with pytest.raises(Invalid, match="from 0s to 3600s") as refused:
        parse_duration(raw, key=DRAINING_KEY, minimum=0, maximum=3600, noun=DRAINING.noun)
    assert DRAINING_KEY in str(refused.value)


def test_each_field_names_its_value_in_its_warning_as_the_admission_policy_does():
    # The policy's noun is the key after the prefix, its dashes spaces.
    assert (TIMEOUT.noun, DRAINING.noun) == ("timeout", "draining timeout")
    obj = _routing({KEY: "0", DRAINING_KEY: "2h"}, ws="8080")
    ingress = from_object(obj, SETTINGS)
    assert ingress is not None
    assert [w.message for w in ingress.warnings] == [
        f'{KEY}="0" is not a valid timeout: use whole seconds ("3600") or a duration '
        '("90s", "15m", "1h", "1h30m") from 1s to 86400s',
        f'{DRAINING_KEY}="2h" is not a valid draining timeout: use whole seconds ("3600") '
        'or a duration ("90s", "15m", "1h", "1h30m") from 0s to 3600s',
    ]


def _routing(annotations: dict[str, str], **ports: str) -> dict[str, object]:
    paths = [
        {"backend": {"service": {"name": name, "port": {"number": int(port)}}}}
        for name, port in ports.items()
    ]
    backends = {"ingress.kubernetes.io/backends": json.dumps({"k8s1-0e20ca25-x": "HEALTHY"})}
    return {
        "metadata": {"namespace": "shop", "name": "a", "annotations": {**annotations, **backends}},
        "spec": {"rules": [{"http": {"paths": paths}}]},
    }


def test_ingress_facts_say_what_each_field_asks_per_service():
    obj = _routing(
        {KEY: "10m", MAP_KEY: '{"ws": "1h", "api:80": "30s"}', DRAINING_KEY: "300"},
        ws="8080",
        api="80",
    )
    ingress = from_object(obj, SETTINGS)
    assert ingress is not None and ingress.problem is None and ingress.warnings == ()
    timeout, draining = ingress.ask("timeout"), ingress.ask("draining")
    assert timeout == Ask(600, (("api:80", 30), ("ws", 3600)))
    assert (timeout.of("ws", "8080"), timeout.of("api", "80"), timeout.of("web", "80")) == (
        3600,
        30,
        600,
    )
    assert timeout.of("api", "81") == 600  # name:port names that port only
    assert draining == Ask(300) and draining.of("ws", "8080") == 300


def test_only_a_draining_timeout_asks_no_timeout():
    ingress = from_object(_routing({DRAINING_KEY: "0"}, web="80"), SETTINGS)
    assert ingress is not None and ingress.ask("timeout") is None
    assert ingress.ask("draining") == Ask(0) and ingress.claims(ingress.refs[0])


def test_a_refused_entry_is_a_warning_the_rest_applies():
    obj = _routing({MAP_KEY: '{"ws": "1h", "nope": "30s", "api": "abc"}'}, ws="8080", api="80")
    ingress = from_object(obj, SETTINGS)
    assert ingress is not None and ingress.problem is None
    assert [w.reason for w in ingress.warnings] == ["InvalidTimeout", "InvalidTimeout"]
    assert any('"nope"' in w.message for w in ingress.warnings)
    ask = ingress.ask("timeout")
    assert ask is not None and ask.of("ws", "8080") == 3600
    assert ask.of("api", "80") == KEEP  # its value was refused: what it asked before stays


def test_an_invalid_map_keeps_the_whole_field_and_leaves_draining_alone():
    obj = _routing({KEY: "1h", MAP_KEY: "{", DRAINING_KEY: "300"}, ws="8080")
    ingress = from_object(obj, SETTINGS)
    assert ingress is not None
    assert ingress.warnings == (Problem("InvalidTimeout", ingress.warnings[0].message),)
    timeout = ingress.ask("timeout")
    assert timeout is not None and timeout.of("ws", "8080") == KEEP
    assert ingress.ask("draining") == Ask(300)


def test_an_invalid_draining_timeout_keeps_draining_only():
    ingress = from_object(_routing({KEY: "1h", DRAINING_KEY: "2h"}, ws="8080"), SETTINGS)
    assert ingress is not None and ingress.ask("timeout") == Ask(3600)
    assert ingress.ask("draining") == Ask(kept=frozenset({""}))
    (warning,) = ingress.warnings
    assert DRAINING_KEY in warning.message and "from 0s to 3600s" in warning.message
