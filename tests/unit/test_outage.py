"""Outage episodes: one WARNING when failures begin, one INFO with the count when they end."""

from __future__ import annotations

import logging
import random

import pytest
import requests

from controller.kube.client import KubeClient, StaticTokenAuth
from controller.outage import Outage
from tests.ground.controlplane import free_port


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


def test_an_episode_is_one_warning_and_one_info_with_the_count(caplog):
    clock = Clock()
    outage = Outage("the apiserver", quiet=10, clock=clock)
    caplog.set_level(logging.DEBUG, logger="controller.outage")
    outage.answered()  # all well: nothing said
    for _ in range(20):
        outage.failed("GET /x: ConnectionError")
        clock.now += 0.5
    assert outage.ongoing
    clock.now += 10
    outage.answered()
    assert not outage.ongoing
    assert records(caplog, logging.WARNING) == [
        "the apiserver is failing: GET /x: ConnectionError; retrying with backoff "
        "(further failures are counted, not logged)"
    ]
    assert records(caplog, logging.INFO) == [
        "the apiserver answers again: 20 failed calls over 9.5 s"
    ]
    assert len(records(caplog, logging.DEBUG)) == 19


def test_failures_mixed_with_successes_stay_one_episode(caplog):
    clock, rng = Clock(), random.Random(7)
    outage = Outage("Compute", quiet=10, clock=clock)
    caplog.set_level(logging.INFO, logger="controller.outage")
    failures = 0
    for _ in range(600):  # a minute of calls, 30 % failing
        if rng.random() < 0.3:
            outage.failed("503")
            failures += 1
        else:
            outage.answered()
        clock.now += 0.1
    assert outage.ongoing and outage.episodes == 1
    clock.now += 10
    outage.answered()
    assert len(records(caplog, logging.WARNING)) == 1
    [info] = records(caplog, logging.INFO)
    assert info.startswith(f"Compute answers again: {failures} failed calls over ")


def test_a_later_outage_is_a_new_episode(caplog):
    clock = Clock()
    outage = Outage("Compute", quiet=5, clock=clock)
    caplog.set_level(logging.INFO, logger="controller.outage")
    outage.failed("first")
    clock.now += 6
    outage.answered()
    outage.failed("second")
    assert outage.episodes == 2
    assert [m.split(":")[0] for m in records(caplog, logging.WARNING)] == [
        "Compute is failing",
        "Compute is failing",
    ]
    assert records(caplog, logging.INFO) == ["Compute answers again: 1 failed call over 0.0 s"]


def test_the_kube_client_tells_its_outage_of_refused_calls(caplog):
    kube = KubeClient(
        f"http://127.0.0.1:{free_port()}", auth=StaticTokenAuth("t"), timeout=(0.5, 0.5)
    )
    caplog.set_level(logging.DEBUG)
    for _ in range(3):
        with pytest.raises(requests.ConnectionError):
            kube.get("/api")
    assert kube.outage.ongoing
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].getMessage().startswith("the apiserver is failing")


def test_a_failure_long_after_the_last_one_is_a_new_episode_even_with_no_call_between(caplog):
    # One failure, one success soon after (too soon to end the episode), then an idle
    # hour: the next failure is a new outage, and must be said, not counted in silence.
    clock = Clock()
    outage = Outage("Compute", quiet=10, clock=clock)
    caplog.set_level(logging.INFO, logger="controller.outage")
    outage.failed("first")
    clock.now += 2
    outage.answered()
    clock.now += 3600
    outage.failed("second")
    assert outage.episodes == 2
    assert len(records(caplog, logging.WARNING)) == 2
    assert records(caplog, logging.INFO) == ["Compute answers again: 1 failed call over 0.0 s"]


def test_failures_with_no_success_between_stay_one_episode_however_far_apart(caplog):
    clock = Clock()
    outage = Outage("Compute", quiet=10, clock=clock)
    caplog.set_level(logging.INFO, logger="controller.outage")
    outage.failed("first")
    clock.now += 1
    outage.answered()  # too soon to end it
    clock.now += 1
    outage.failed("again")  # so the success above no longer counts
    clock.now += 60
    outage.failed("still")
    assert outage.episodes == 1 and len(records(caplog, logging.WARNING)) == 1
