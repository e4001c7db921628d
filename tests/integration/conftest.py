"""The ``world`` fixture: real apiserver + Compute fake + the controller, torn down after.

The fake is ``strict_fake()``, as strict as GCP. A test marked ``anonymous_compute``
gets it without a token requirement: only for a controller run as ``python -m
controller`` (or through its ``main``), which sends no token to a loopback endpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ground.controlplane import ControlPlane
from tests.integration.render import Helm
from tests.integration.world import TOKEN, World, strict_fake

ANONYMOUS = "anonymous_compute"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{ANONYMOUS}: the world's Compute fake takes requests without a token "
        "(the controller runs from its command line, which sends none to a loopback endpoint)",
    )


@pytest.fixture
def world(
    apiserver: ControlPlane, namespace: str, request: pytest.FixtureRequest
) -> Iterator[World]:
    anonymous = request.node.get_closest_marker(ANONYMOUS) is not None
    with strict_fake(token=None if anonymous else TOKEN) as fake:
        w = World(apiserver, namespace, fake)
        try:
            yield w
        finally:
            w.stop()


@pytest.fixture
def helm(operator_tools: dict[str, Path], tmp_path: Path) -> Helm:
    """The real helm (tests/ground/operator-tools.sh), its own settings in the test's folder."""
    return Helm(operator_tools["helm"], tmp_path)
