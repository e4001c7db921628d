"""The controller asks glibc for two shared malloc arenas, unless the environment says."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

CALL = "import controller.__main__ as m; print(m.fewer_malloc_arenas())"


def _run(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", CALL], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_takes_the_arena_limit() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    assert _run(env) == "True"


def test_an_arena_limit_from_the_environment_is_left_as_it_is() -> None:
    assert _run({**os.environ, "MALLOC_ARENA_MAX": "4"}) == "False"
