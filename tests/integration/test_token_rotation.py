"""Bound service-account tokens rotate: the in-cluster client re-reads its token file.

The kubelet rewrites the projected token before it expires; a client still
holding a token that the apiserver refuses (401) must read the file again at
once rather than at its next periodic re-read, and carry on with no restart.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.kube.client import KubeClient, KubeError
from tests.ground.controlplane import ControlPlane


def _admin(plane: ControlPlane) -> KubeClient:
    return KubeClient.from_kubeconfig(plane.kubeconfig)


def _service_account_that_lists_ingresses(plane: ControlPlane, ns: str) -> None:
    admin = _admin(plane)
    admin.post(f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": "ctl"}})
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}"
    admin.post(
        f"{rbac}/roles",
        {
            "metadata": {"name": "read"},
            "rules": [
                {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses"], "verbs": ["list"]}
            ],
        },
    )
    admin.post(
        f"{rbac}/rolebindings",
        {
            "metadata": {"name": "read"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read"},
            "subjects": [{"kind": "ServiceAccount", "name": "ctl", "namespace": ns}],
        },
    )


def test_after_a_401_the_client_reads_the_token_file_again(
    apiserver: ControlPlane, namespace: str, tmp_path: Path
):
    _service_account_that_lists_ingresses(apiserver, namespace)
    env = apiserver.pod_service_account(namespace, "ctl", tmp_path)
    good = (tmp_path / "token").read_text()
    (tmp_path / "token").write_text("a-token-that-expired")
    pod = KubeClient.in_cluster(root=str(tmp_path), env=env)
    ingresses = f"/apis/networking.k8s.io/v1/namespaces/{namespace}/ingresses"
    with pytest.raises(KubeError) as refused:
        pod.get(ingresses)
    assert refused.value.status == 401

    # The kubelet rewrites the file; the client, holding the dead token (and
    # not due to re-read it by age for a minute), must pick it up on the 401.
    (tmp_path / "token").write_text(good)
    assert pod.get(ingresses)["items"] == []
