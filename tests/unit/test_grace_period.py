"""The Deployment's grace period adds up the time bounds of a stopping replica's work."""

from __future__ import annotations

import inspect
from pathlib import Path

import yaml

from controller.gcp import backends
from controller.kube.client import KubeClient
from controller.kube.lease import LeaseConfig

DEPLOYMENT = Path(__file__).resolve().parents[2] / "deploy" / "deployment.yaml"


def test_grace_period_outlasts_the_longest_reconcile_and_the_release():
    connect, read = inspect.signature(KubeClient.__init__).parameters["timeout"].default
    request = connect + read  # one apiserver request
    reconcile = backends.DEADLINE + max(
        backends.READ_TIMEOUT, backends.WRITE_TIMEOUT, backends.WAIT_TIMEOUT
    )
    record = 2 * request  # the outcome's write, and the read after a 409
    events = request  # the queued Events go out until one fails
    release = LeaseConfig("ns", "lease", "me").renew_deadline
    deployment = yaml.safe_load(DEPLOYMENT.read_text())

    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]

    assert grace >= reconcile + record + events + release
    # The operation wait fits in a reconcile's deadline, with room for a read and a write.
    assert backends.OPERATION_TIMEOUT + backends.READ_TIMEOUT + backends.WRITE_TIMEOUT <= (
        backends.DEADLINE
    )
