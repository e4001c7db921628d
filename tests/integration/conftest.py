"""The ``world`` fixture: real apiserver + Compute fake + the controller, torn down after."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.compute import ComputeFake
from tests.ground.controlplane import ControlPlane
from tests.integration.world import World


@pytest.fixture
def world(apiserver: ControlPlane, namespace: str) -> Iterator[World]:
    with ComputeFake() as fake:
        w = World(apiserver, namespace, fake)
        try:
            yield w
        finally:
            w.stop()
