"""The test ground itself: the real apiserver stores Ingresses and enforces RBAC."""

from __future__ import annotations

import requests

from tests.ground.controlplane import ControlPlane


def _api(plane: ControlPlane, method: str, path: str, token: str | None = None, **kw):
    headers = {"Authorization": f"Bearer {token or plane.admin_token}"}
    return requests.request(
        method, plane.url + path, headers=headers, verify=plane.ca_file, timeout=10, **kw
    )


def test_ingress_round_trips_through_the_real_apiserver(apiserver, namespace):
    ingress = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "chat", "annotations": {"kubernetes.io/ingress.class": "gce"}},
        "spec": {"defaultBackend": {"service": {"name": "chat", "port": {"number": 80}}}},
    }
    path = f"/apis/networking.k8s.io/v1/namespaces/{namespace}/ingresses"
    created = _api(apiserver, "POST", path, json=ingress)
    assert created.status_code == 201, created.text

    got = _api(apiserver, "GET", f"{path}/chat").json()
    assert got["metadata"]["annotations"]["kubernetes.io/ingress.class"] == "gce"
    assert got["spec"]["defaultBackend"]["service"]["name"] == "chat"
    assert got["metadata"]["uid"]  # assigned by the server, not by us


def test_bound_service_account_token_is_refused_what_rbac_did_not_grant(apiserver, namespace):
    sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}}
    assert _api(apiserver, "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts", json=sa).ok
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "read-ingresses"},
        "rules": [
            {
                "apiGroups": ["networking.k8s.io"],
                "resources": ["ingresses"],
                "verbs": ["get", "list"],
            }
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "reader"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "read-ingresses",
        },
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
    }
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
    assert _api(apiserver, "POST", f"{rbac}/roles", json=role).ok
    assert _api(apiserver, "POST", f"{rbac}/rolebindings", json=binding).ok

    issued = _api(
        apiserver,
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/reader/token",
        json={
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 600},
        },
    )
    assert issued.status_code == 201, issued.text
    token = issued.json()["status"]["token"]

    allowed = _api(
        apiserver,
        "GET",
        f"/apis/networking.k8s.io/v1/namespaces/{namespace}/ingresses",
        token=token,
    )
    assert allowed.status_code == 200, allowed.text
    refused = _api(apiserver, "GET", f"/api/v1/namespaces/{namespace}/secrets", token=token)
    assert refused.status_code == 403
    assert refused.json()["reason"] == "Forbidden"
    assert f"system:serviceaccount:{namespace}:reader" in refused.json()["message"]
