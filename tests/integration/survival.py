"""Ground for the survival scenarios: a fleet of Ingresses sharing backends, churn on
their annotations, the controller as the process a pod runs, and the one check every
scenario ends with.

The check: every backend service in the Compute fake has what the annotations ask (the
largest claim, or the default once nobody claims it), every record matches GCP and is
settled, the process never died, and removing every annotation brings every backend
back to the default with no record left.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

from controller.kube.client import KubeError
from tests.ground.controlplane import free_port
from tests.integration.world import KEY, World, applied
from tests.wait import eventually

DEFAULT = 30  # every backend's timeout before the controller, and after it lets go
_VALUE = re.compile(r"([0-9]+)s")


@dataclass
class Row:
    """One line of the table the scenarios print."""

    scenario: str
    faults: str
    converge_s: float = 0.0
    patches: int = 0  # PATCHes GCP accepted
    attempts: int = 0  # PATCHes sent, refused ones too
    needed: int | None = 0  # changes of a backend's wanted value, restores included
    warnings: int = 0  # controller log lines at WARNING and above
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"{self.scenario:<34} | {self.faults:<44} | {self.converge_s:6.1f} s | "
            f"{self.patches:>5} ({self.attempts:>5} sent) / "
            f"{'?' if self.needed is None else self.needed:>5} | "
            f"{self.warnings:>3} | {'; '.join(self.notes)}"
        )


class Fleet:
    """``ingresses`` Ingresses over ``services`` Services, every fourth Ingress routing
    to a second Service too, so some backend services have several claimants."""

    def __init__(self, world: World, ingresses: int = 32, services: int = 16) -> None:
        self.world = world
        self.backend_of = {f"svc{s}": world.backend(f"svc{s}") for s in range(services)}
        self.routes: dict[str, tuple[str, ...]] = {}
        for i in range(ingresses):
            svcs = [f"svc{i % services}"]
            if i % 4 == 0:
                svcs.append(f"svc{(i * 5 + 3) % services}")
            name = f"ing{i}"
            self.routes[name] = tuple(dict.fromkeys(svcs))
            world.ingress(
                name, services=self.routes[name], backends=[self.backend_of[s] for s in svcs]
            )
        self.values: dict[str, int | None] = dict.fromkeys(self.routes)
        self.needed: int | None = 0  # None once raw values were written: not counted
        self.writes = 0

    # --- what the annotations ask --------------------------------------------------------
    def expected(self) -> dict[str, int]:
        want = dict.fromkeys(self.backend_of.values(), DEFAULT)
        claimed: dict[str, int] = {}
        for name, seconds in self.values.items():
            if seconds is None:
                continue
            for svc in self.routes[name]:
                backend = self.backend_of[svc]
                claimed[backend] = max(claimed.get(backend, 0), seconds)
        want.update(claimed)
        return want

    def claimed(self) -> set[str]:
        return {
            self.backend_of[s]
            for name, v in self.values.items()
            if v is not None
            for s in self.routes[name]
        }

    # --- writing annotations -------------------------------------------------------------
    def set(self, name: str, value: int | str | None, *, deadline: float = 60.0) -> None:
        """Annotate ``name`` (seconds, a raw string, or None to remove), riding out an
        apiserver that is restarting; the fleet's idea of the values follows."""
        raw = f"{value}s" if isinstance(value, int) else value
        before = self.expected()
        end = time.monotonic() + deadline
        while True:
            try:
                self.world.annotate(name, raw)
                break
            except (requests.RequestException, KubeError) as exc:
                if isinstance(exc, KubeError) and exc.status < 500 and exc.status != 429:
                    raise
                if time.monotonic() > end:
                    raise
                threading.Event().wait(0.2)
        self.writes += 1
        if isinstance(value, str):
            self.needed = None  # raw values are for scenarios that keep their own books
            return
        self.values[name] = value
        if self.needed is not None:
            after = self.expected()
            self.needed += sum(after[b] != before[b] for b in after)

    def reread(self) -> None:
        """Take the values from the apiserver: a write whose answer was lost may have landed."""
        for name in self.routes:
            raw = self.raw(name)
            if raw is None:
                self.values[name] = None
            elif m := _VALUE.fullmatch(raw):
                self.values[name] = int(m.group(1))
            # else a value the controller refuses: the claim it had stands

    def raw(self, name: str) -> str | None:
        """The timeout annotation of ``name`` as the apiserver has it."""
        path = f"/apis/networking.k8s.io/v1/namespaces/{self.world.ns}/ingresses/{name}"
        annotations = self.world.kube.get(path)["metadata"].get("annotations") or {}
        value = annotations.get(KEY)
        return None if value is None else str(value)

    def churn(self, stop: threading.Event, rng: random.Random, pause: float = 0.05) -> None:
        """Change a random Ingress's timeout until ``stop``: a new value, or none."""
        names = sorted(self.routes)
        while not stop.is_set():
            name = rng.choice(names)
            value = None if rng.random() < 0.2 else rng.randrange(31, 7200)
            self.set(name, value)
            stop.wait(pause)

    # --- the check -----------------------------------------------------------------------
    def differences(self) -> list[str]:
        """What keeps the world from being settled; empty when it is."""
        want = self.expected()
        have = {b: self.world.timeout_of(b) for b in want}
        problems = [
            f"{b}: GCP {have[b]}, annotations ask {want[b]}" for b in want if have[b] != want[b]
        ]
        records = self.world.records()
        claimed = self.claimed()
        for backend in want:
            rec = records.get(backend)
            if backend in claimed:
                if rec is None:
                    problems.append(f"{backend}: claimed but no record")
                elif applied(rec) != have[backend] or rec.get("intent") is not None:
                    problems.append(f"{backend}: record {rec} but GCP {have[backend]}")
            elif rec is not None:
                problems.append(f"{backend}: nobody claims it, yet a record is left: {rec}")
        return problems

    def converge(self, timeout: float = 120.0) -> float:
        """Seconds until the world is settled, from now; fails with what is not."""
        start = time.monotonic()
        last: list[str] = []

        def settled() -> bool:
            nonlocal last
            last = self.differences()
            return not last

        try:
            eventually(settled, timeout=timeout, what="converged")
        except AssertionError:
            raise AssertionError(f"not converged within {timeout}s: {last[:8]}") from None
        return time.monotonic() - start

    def clear_all(self, timeout: float = 120.0) -> None:
        """Remove every annotation; every backend must go back to the default."""
        for name in self.routes:
            if self.values[name] is not None:
                self.set(name, None)
        self.converge(timeout)
        assert all(self.world.timeout_of(b) == DEFAULT for b in self.backend_of.values())
        assert self.world.records() == {}

    def patches(self) -> tuple[int, int]:
        """PATCHes accepted and PATCHes sent, so far."""
        sent = [c for c in self.world.fake.calls if c.method == "PATCH"]
        return sum(c.status == 200 for c in sent), len(sent)


class Controller:
    """``python -m controller`` as the Deployment runs it, logging JSON lines to a list."""

    def __init__(
        self,
        world: World,
        *,
        name: str = "ctl-a",
        kubeconfig: str | None = None,
        compute: str | None = None,
        leader_elect: bool = True,
        extra: Iterable[str] = (),
    ) -> None:
        self.name, self.port = name, free_port()
        argv = [
            sys.executable, "-m", "controller",
            f"--kubeconfig={kubeconfig or world.plane.kubeconfig}", "--project=demo-project",
            f"--compute-endpoint={compute or world.fake.url}", f"--namespaces={world.ns}",
            f"--state-namespace={world.ns}", f"--listen=127.0.0.1:{self.port}",
            "--log-format=json", *([] if leader_elect else ["--no-leader-elect"]), *extra,
        ]  # fmt: skip
        env = {**os.environ, "POD_NAME": name}
        self.proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for text in self.proc.stderr:
            try:
                line = json.loads(text)
            except ValueError:
                line = {"level": "RAW", "message": text.rstrip()}
            line["_at"] = time.monotonic()
            self.lines.append(line)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ready(self) -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).ok
        except requests.RequestException:
            return False

    def loud(self) -> list[str]:
        """Log lines at WARNING and above, and anything that is not a log line."""
        return [
            f"{line['level']} {line['message']}" + (" [traceback]" if "error" in line else "")
            for line in list(self.lines)
            if line.get("level") in ("WARNING", "ERROR", "CRITICAL", "RAW")
        ]

    def said(self, text: str) -> float | None:
        """When (monotonic, as seen here) a line containing ``text`` was first read."""
        return next((line["_at"] for line in list(self.lines) if text in line["message"]), None)

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+([0-9]+) kB", status).group(1))  # type: ignore[union-attr]

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        return self.proc.returncode


def kubeconfig_via(world: World, port: int, folder: Path) -> str:
    """A copy of the admin kubeconfig whose server is ``127.0.0.1:port`` (a proxy)."""
    config = yaml.safe_load(Path(world.plane.kubeconfig).read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{port}"
    path = folder / f"via-{port}.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def running(target: Callable[[threading.Event], None]) -> tuple[threading.Event, threading.Thread]:
    """Start ``target(stop)`` on a thread; set the event and join the thread to end it."""
    stop = threading.Event()
    thread = threading.Thread(target=target, args=(stop,), daemon=True)
    thread.start()
    return stop, thread
