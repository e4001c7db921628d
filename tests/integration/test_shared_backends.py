"""One work item per backend service, against the real apiserver and the Compute fake.

Races between workers on a shared backend, the restore rule across resyncs and
restarts, a kill between the PATCH and its record, and a leader cut off from
the apiserver in the middle of a write.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from controller.gcp.backends import Compute
from controller.kube.client import KubeClient, StaticTokenAuth
from controller.kube.lease import LeaderElector, LeaseConfig
from controller.manager import Manager
from controller.model import Settings
from tests.fakes.compute import instance_group_backend_name
from tests.ground.proxy import Proxy
from tests.integration.world import KEY, UID, World, applied
from tests.wait import eventually


def settled(world: World, manager: Manager) -> bool:
    return len(manager.queue) == 0 and manager.queue.delayed() == 0


def test_concurrent_edits_on_a_shared_backend_end_at_the_largest_final_claim(world: World):
    shared = instance_group_backend_name(30480, UID)
    world.fake.add_backend(shared, service=f"{world.ns}/web", timeout=30)
    world.ingress("a", timeout="60", backends=[shared])
    world.ingress("b", timeout="60", backends=[shared])
    manager = world.start(workers=8)
    eventually(lambda: world.timeout_of(shared) == 60)

    final: dict[str, int] = {}
    deadline = time.monotonic() + 30

    def edit(name: str, seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < deadline:
            value = rng.randint(1, 900)
            world.annotate(name, str(value))
            final[name] = value

    threads = [
        threading.Thread(target=edit, args=(name, seed))
        for seed, name in enumerate(["a", "b", "a", "b"])
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # the last write of each Ingress is what the apiserver has
    for name in ("a", "b"):
        stored = world.kube.get(
            f"/apis/networking.k8s.io/v1/namespaces/{world.ns}/ingresses/{name}"
        )
        final[name] = int(stored["metadata"]["annotations"][KEY])
    want = max(final.values())
    claims = {f"{world.ns}/{n}": s for n, s in final.items()}
    eventually(lambda: world.timeout_of(shared) == want, timeout=60, what=f"max claim {want}")
    # GCP can show the largest final claim before the other Ingress's last edit has come
    # through the watch (which lags under load), and a key in process does not count in
    # the queue: the record is waited for, both final claims in it and no write pending.
    eventually(
        lambda: (
            world.records()[shared]["fields"]["timeout"]["claims"] == claims
            and world.records()[shared]["intent"] is None
        ),
        timeout=60,
        what=f"the final claims {claims} recorded",
    )
    eventually(lambda: settled(world, manager))
    record = world.records()[shared]
    state = record["fields"]["timeout"]
    assert state["applied"] == want == world.timeout_of(shared)
    assert state["claims"] == claims
    assert record["intent"] is None

    world.annotate("a", None)
    world.annotate("b", None)
    eventually(lambda: world.timeout_of(shared) == 30, what="both removed: default restored")
    eventually(lambda: shared not in world.records(), what="record deleted")


def test_a_value_set_by_a_backendconfig_survives_resyncs_a_restart_and_the_removal(world: World):
    web = world.backend("web", timeout=3600)  # a BackendConfig's timeoutSec: 3600
    world.ingress("app", timeout="1h", backends=[web])
    manager = world.start()
    for _ in range(3):
        manager.resync()
        eventually(lambda: settled(world, manager))
    world.stop()
    manager = world.start()
    eventually(lambda: settled(world, manager))
    assert world.records()[web]["fields"]["timeout"]["applied"] is None  # never taken as its own
    world.annotate("app", None)
    eventually(lambda: web not in world.records(), what="record forgotten")
    assert world.timeout_of(web) == 3600
    assert world.patches() == []


def test_a_console_change_listed_while_our_write_is_confirmed_is_not_missed(world: World):
    web = world.backend("web")
    world.ingress("app", timeout="1h", backends=[web])
    manager = world.start()
    eventually(lambda: world.fake.count("PATCH") == 1, what="the PATCH was sent")
    world.fake.latency = 0.5  # answers land late: the wait's DONE among them
    eventually(lambda: world.timeout_of(web) == 3600, what="the operation DONE in GCP")
    world.fake.set_timeout_out_of_band(web, 120)  # the console, once GCP applied 3600
    manager.resync()  # its list begins before the controller hears DONE, and shows 120
    world.fake.latency = 0.0
    eventually(lambda: world.patches(web) == [3600, 3600], what="the console change reverted")
    eventually(
        lambda: world.records()[web]["fields"]["timeout"]["overridden"] == 1,
        what="counted as an override",
    )


def test_a_console_change_racing_a_restore_is_decided_again_not_overwritten(world: World):
    web = world.backend("web")
    world.ingress("app", timeout="1h", backends=[web])
    manager = world.start()
    eventually(lambda: world.timeout_of(web) == 3600)
    # GCP shows 3600 once the operation is done; the controller is through with it only
    # when it has recorded so (a key in process does not count in the queue).
    eventually(lambda: world.records()[web]["intent"] is None, what="the write recorded")
    eventually(lambda: settled(world, manager))
    manager.resync()  # the list gives the controller the fingerprint of 3600
    eventually(lambda: settled(world, manager))
    world.fake.set_timeout_out_of_band(web, 120)  # the console; the cache still says 3600
    world.delete("app")
    eventually(lambda: web not in world.records(), what="record forgotten")
    assert world.timeout_of(web) == 120
    statuses = [c.status for c in world.fake.calls if c.method == "PATCH"]
    assert statuses == [200, 412]  # the restore met the new fingerprint, and stopped there


class Process:
    """``python -m controller`` as a pod runs it, without leader election."""

    def __init__(self, world: World) -> None:
        argv = [
            sys.executable, "-m", "controller",
            f"--kubeconfig={world.plane.kubeconfig}", "--project=demo-project",
            f"--compute-endpoint={world.fake.url}", f"--namespaces={world.ns}",
            f"--state-namespace={world.ns}", "--no-leader-elect", "--listen=",
        ]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


@pytest.mark.anonymous_compute  # `python -m controller` sends no token to a loopback endpoint
def test_sigkill_between_the_patch_and_its_record_loses_nothing(world: World):
    web = world.backend("web")
    world.fake.op_delay = 3.0  # the kill lands while the operation runs
    world.ingress("app", timeout="1h", backends=[web])
    first = Process(world)
    try:
        eventually(lambda: world.fake.count("PATCH") == 1, what="the PATCH was sent")
        first.kill()
    finally:
        first.stop()
    intent = world.records()[web]["intent"]
    assert (
        intent is not None and intent["values"]["timeout"]["value"] == 3600
    )  # recorded before the PATCH
    eventually(lambda: world.timeout_of(web) == 3600, what="the operation finished anyway")

    world.annotate("app", None)
    second = Process(world)
    try:
        eventually(lambda: world.timeout_of(web) == 30, what="restored after the restart")
        eventually(lambda: web not in world.records(), what="record forgotten")
    finally:
        second.stop()
    assert world.patches(web) == [3600, 30]


def test_a_leader_cut_off_from_the_apiserver_stops_writing_at_once(world: World):
    web = world.backend("web")
    world.ingress("app", timeout="1h", backends=[web])
    world.fake.inject("PATCH", web, 503, times=10_000)  # A's write will keep failing
    lease = LeaseConfig(
        world.ns, "lease", "a", lease_duration=3, renew_deadline=2, retry_period=0.5
    )
    port = int(world.plane.url.rsplit(":", 1)[1])
    sent: list[tuple[float, str]] = []  # A's Compute calls: (when, method)
    with Proxy(port) as proxy:
        a_kube = KubeClient(
            f"https://127.0.0.1:{proxy.port}",
            auth=StaticTokenAuth(world.plane.admin_token),
            verify=world.plane.ca_file,
        )
        a = _replica(world, a_kube, lease, sent)
        stop_a = threading.Event()
        thread_a = threading.Thread(target=a.run, args=(stop_a,))
        thread_a.start()
        try:
            eventually(lambda: any(m.endswith(".patch") for _, m in sent), what="A writes")
            proxy.cut("silent")  # A can no longer reach the apiserver, nor renew
            cut = time.monotonic()
            eventually(lambda: not a.elector.holding(), timeout=10, what="A's fence closes")
            fenced = time.monotonic()
            print(f"fence closed {fenced - cut:.1f}s after the cut (renew deadline 2 s)")
            world.fake.clear_calls()
            b = _replica(world, world.kube, LeaseConfig(**{**lease.__dict__, "identity": "b"}), [])
            stop_b = threading.Event()
            thread_b = threading.Thread(target=b.run, args=(stop_b,))
            world.fake.clear_faults()
            thread_b.start()
            try:
                eventually(lambda: world.timeout_of(web) == 3600, timeout=90, what="B applied")
                record = eventually(lambda: applied(world.records().get(web)))
                assert record == 3600
            finally:
                stop_b.set()
                thread_b.join(timeout=30)
        finally:
            stop_a.set()
            thread_a.join(timeout=30)
    late = [m for when, m in sent if when > fenced and m.endswith(".patch")]
    assert late == [], f"A wrote after its fence closed: {late}"


class _Replica:
    def __init__(self, elector: LeaderElector, manager: Manager) -> None:
        self.elector, self.manager = elector, manager

    def run(self, stop: threading.Event) -> None:
        self.elector.run(stop, lambda lost: self.manager.run(lost, may_write=self.elector.holding))


def _replica(
    world: World, kube: KubeClient, lease: LeaseConfig, sent: list[tuple[float, str]]
) -> _Replica:
    def on_call(method: str, status: int) -> None:
        sent.append((time.monotonic(), method))

    compute = Compute(
        "demo-project",
        endpoint=world.fake.url,
        credentials=world.credentials(),
        base_delay=0.01,
        max_delay=0.05,
        on_call=on_call,
    )
    settings = Settings(timeout_key=KEY, cluster_uid=UID, namespaces=frozenset({world.ns}))
    manager = Manager(
        kube=kube, compute=compute, settings=settings, namespace=world.ns, instance=lease.identity
    )
    return _Replica(LeaderElector(kube, lease), manager)
