"""deploy/'s NetworkPolicy as the real kube-apiserver stores it: it isolates the controller's
pods both ways, admits only the http port, and lets out no port to everywhere but DNS and 443.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import deployed
from tests.ground.controlplane import ControlPlane

pytestmark = pytest.mark.apiserver

ROOT = Path(__file__).resolve().parents[2]
NS = "gke-ingress-timeout"
NAME = "gke-ingress-timeout"
METADATA_SERVER = ipaddress.ip_network("169.254.169.254/32")
GKE_METADATA_SERVER = ipaddress.ip_network("169.254.169.252/32")
# The only ports open to any address: DNS (kube-dns, NodeLocal DNSCache or Cloud DNS) and
# 443 (the apiserver and Google's APIs, whose addresses differ per cluster and change).
OPEN_TO_ANY = {("UDP", 53), ("TCP", 53), ("TCP", 443)}

Port = tuple[str, int | str]


@pytest.fixture(scope="module")
def installed(apiserver: ControlPlane) -> Iterator[dict[str, dict[str, Any]]]:
    """``kubectl apply -k deploy/``, then the NetworkPolicy and the Deployment read back."""
    with deployed(apiserver):
        read = {}
        for kind in ("networkpolicy", "deployment"):
            read[kind] = json.loads(apiserver.kubectl("get", kind, NAME, "-n", NS, "-o", "json"))
        yield read


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels and matchExpressions) matches ``labels``."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        held = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }
        if not held[operator]:
            return False
    return True


def ports(rule: dict[str, Any]) -> set[Port]:
    return {(p.get("protocol", "TCP"), p["port"]) for p in rule.get("ports", [])}


def test_policy_selects_the_controller_pods_and_isolates_them_both_ways(
    installed: dict[str, dict[str, Any]],
) -> None:
    policy, deployment = installed["networkpolicy"], installed["deployment"]
    assert policy["metadata"]["namespace"] == deployment["metadata"]["namespace"] == NS
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(policy["spec"]["podSelector"], pod_labels)
    assert not selects(policy["spec"]["podSelector"], {"app": "something-else"})
    assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"]


def test_ingress_admits_only_the_http_port_and_only_from_listed_sources(
    installed: dict[str, dict[str, Any]],
) -> None:
    policy, deployment = installed["networkpolicy"], installed["deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    http = {(p.get("protocol", "TCP"), p["containerPort"]) for p in container["ports"]}
    assert http == {("TCP", 8080)}

    rules = policy["spec"]["ingress"]
    assert rules, "no ingress rule: nothing could scrape the metrics"
    for rule in rules:
        assert ports(rule) == {("TCP", 8080)}, rule
        # An empty or missing `from` would admit every source on that port.
        assert rule.get("from"), rule
        for peer in rule["from"]:
            assert "ipBlock" not in peer, rule
            assert peer.get("namespaceSelector") or peer.get("podSelector"), rule


def test_egress_opens_nothing_to_everything_and_the_rest_only_to_named_addresses(
    installed: dict[str, dict[str, Any]],
) -> None:
    rules = installed["networkpolicy"]["spec"]["egress"]
    allowed: set[Port] = set()
    for rule in rules:
        # A rule without ports lets every port out; an empty rule, everything.
        assert rule.get("ports"), f"egress rule open on every port: {rule}"
        allowed |= ports(rule)
        if not rule.get("to"):
            assert ports(rule) <= OPEN_TO_ANY, f"open to any address: {rule}"
            continue
        for peer in rule["to"]:
            block = ipaddress.ip_network(peer["ipBlock"]["cidr"])
            assert block in (METADATA_SERVER, GKE_METADATA_SERVER), rule

    assert allowed == OPEN_TO_ANY | {("TCP", 80), ("TCP", 988)}
    metadata = [r for r in rules if ("TCP", 80) in ports(r)]
    assert [r["to"] for r in metadata] == [[{"ipBlock": {"cidr": "169.254.169.254/32"}}]]
