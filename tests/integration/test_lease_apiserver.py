"""Leader election against the real kube-apiserver: one leader, release, failed renewals.

Durations are short (lease 3 s, renew deadline 2 s, retry 0.5 s). A failing
network is a Session that raises ConnectionError, not a fake apiserver.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
import requests

from controller.kube.client import KubeClient, StaticTokenAuth
from controller.kube.lease import LeaderElector, LeaseConfig, claim, micro_time
from tests.ground.controlplane import ControlPlane
from tests.wait import eventually

pytestmark = pytest.mark.apiserver

LEASE = "gke-ingress-timeout"


class Network(requests.Session):
    """A Session whose requests fail once `down` is set; counts GETs of the Lease.

    While `renewals` is clear, a PUT of the Lease is held back before it is
    sent: a slow renewal that still succeeds once let through.
    """

    def __init__(self) -> None:
        super().__init__()
        self.down = threading.Event()
        self.renewals = threading.Event()
        self.renewals.set()
        self.held_renewals = 0
        self.lease_reads = 0

    def request(  # type: ignore[override]
        self, method: str, url: str, *args: Any, **kwargs: Any
    ) -> requests.Response:
        if self.down.is_set():
            raise requests.ConnectionError("network down (test)")
        if method == "GET" and url.endswith(f"/leases/{LEASE}"):
            self.lease_reads += 1
        if method == "PUT" and url.endswith(f"/leases/{LEASE}") and not self.renewals.is_set():
            self.held_renewals += 1
            self.renewals.wait()
        return super().request(method, url, *args, **kwargs)


class Candidate:
    """One replica: an elector running in a thread, and what its leader work saw."""

    def __init__(
        self,
        apiserver: ControlPlane,
        namespace: str,
        identity: str,
        lease_duration: float,
        renew_deadline: float,
    ) -> None:
        self.identity = identity
        self.network = Network()
        kube = KubeClient(
            apiserver.url,
            auth=StaticTokenAuth(apiserver.admin_token),
            verify=apiserver.ca_file,
            session=self.network,
        )
        config = LeaseConfig(
            namespace=namespace,
            name=LEASE,
            identity=identity,
            lease_duration=lease_duration,
            renew_deadline=renew_deadline,
            retry_period=0.5,
        )
        self.elector = LeaderElector(kube, config)
        self.stop = threading.Event()
        self.started = threading.Event()  # on_started_leading was called
        self.finished = threading.Event()  # ... and has returned
        self.lost: threading.Event | None = None
        self.others_leading_at_start: list[str] = []
        self.rivals: list[Candidate] = []
        self.thread = threading.Thread(target=self.elector.run, args=(self.stop, self._lead))
        self.thread.start()

    def _lead(self, lost: threading.Event) -> None:
        self.lost = lost
        self.others_leading_at_start = [
            r.identity for r in self.rivals if r.elector.is_leader.is_set()
        ]
        self.started.set()
        lost.wait()
        self.finished.set()

    def observe(self, times: int) -> None:
        """Wait until this replica has read the Lease `times` more times."""
        mark = self.network.lease_reads
        eventually(lambda: self.network.lease_reads - mark >= times, what=f"{self.identity} reads")

    def halt(self) -> None:
        self.stop.set()
        self.thread.join(timeout=15)
        assert not self.thread.is_alive(), f"{self.elector} did not stop"


Start = Callable[..., Candidate]


@pytest.fixture
def campaign(apiserver: ControlPlane, namespace: str) -> Iterator[Start]:
    """start(identity, lease_duration=3, renew_deadline=2) -> a running Candidate.

    All are halted afterwards.
    """
    running: list[Candidate] = []

    def start(identity: str, lease_duration: float = 3.0, renew_deadline: float = 2.0) -> Candidate:
        candidate = Candidate(apiserver, namespace, identity, lease_duration, renew_deadline)
        for other in running:
            other.rivals.append(candidate)
            candidate.rivals.append(other)
        running.append(candidate)
        return candidate

    yield start
    for candidate in running:
        candidate.network.down.clear()
        candidate.network.renewals.set()
        candidate.halt()


def admin(apiserver: ControlPlane) -> KubeClient:
    return KubeClient(
        apiserver.url, auth=StaticTokenAuth(apiserver.admin_token), verify=apiserver.ca_file
    )


def lease_spec(apiserver: ControlPlane, namespace: str) -> dict[str, Any]:
    lease = admin(apiserver).get(
        f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{LEASE}"
    )
    spec: dict[str, Any] = lease["spec"]
    return spec


def test_one_of_two_electors_leads_and_the_lease_names_it(
    apiserver: ControlPlane, namespace: str, campaign: Start
) -> None:
    a, b = campaign("replica-a"), campaign("replica-b")

    eventually(lambda: a.started.is_set() or b.started.is_set(), what="a leader")
    leader, follower = (a, b) if a.started.is_set() else (b, a)
    # the follower keeps reading the lease, renewed each time, and never takes it
    follower.observe(6)

    assert leader.elector.is_leader.is_set()
    assert not follower.elector.is_leader.is_set()
    assert not follower.started.is_set()
    assert lease_spec(apiserver, namespace)["holderIdentity"] == leader.identity


def test_stopped_leader_releases_and_the_other_takes_over_before_expiry(
    apiserver: ControlPlane, namespace: str, campaign: Start
) -> None:
    # A lease of 60 s: the successor taking over within the 20 s below shows the
    # lease was handed over, not left to expire.
    a = campaign("replica-a", lease_duration=60.0)
    eventually(a.started.is_set, what="a leads")
    b = campaign("replica-b", lease_duration=60.0)
    b.observe(2)
    assert not b.started.is_set()

    a.halt()

    assert a.finished.is_set(), "a's leader work returned before run() did"
    assert a.lost is not None and a.lost.is_set()
    assert not a.elector.is_leader.is_set()
    eventually(b.started.is_set, timeout=20, what="b leads after a released the lease")
    assert b.elector.is_leader.is_set()
    assert b.others_leading_at_start == []
    spec = lease_spec(apiserver, namespace)
    assert spec["holderIdentity"] == "replica-b"
    assert spec["leaseTransitions"] == 1


def test_leader_that_cannot_renew_stops_and_the_other_takes_over_after_expiry(
    apiserver: ControlPlane, namespace: str, campaign: Start
) -> None:
    a = campaign("replica-a")
    eventually(a.started.is_set, what="a leads")
    b = campaign("replica-b")
    b.observe(2)

    a.network.down.set()

    eventually(lambda: a.lost is not None and a.lost.is_set(), what="a notices it lost")
    assert not a.elector.is_leader.is_set()
    eventually(lambda: not a.thread.is_alive(), what="a's run() returns")
    assert a.finished.is_set()
    eventually(b.started.is_set, what="b leads after a's lease expired")
    assert b.others_leading_at_start == [], "a still led when b started"
    spec = lease_spec(apiserver, namespace)
    assert spec["holderIdentity"] == "replica-b"
    assert spec["leaseTransitions"] == 1


def test_leader_whose_lease_was_taken_stops_at_once(
    apiserver: ControlPlane, namespace: str, campaign: Start
) -> None:
    # renew deadline 30 s: noticing within the 10 s below is the holder check,
    # not failed renewals running out
    a = campaign("replica-a", lease_duration=60.0, renew_deadline=30.0)
    eventually(a.started.is_set, what="a leads")

    kube = admin(apiserver)
    path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{LEASE}"
    lease = kube.get(path)
    lease["spec"] = claim(lease["spec"], "other", 60.0, datetime.now(timezone.utc))
    kube.put(path, lease)

    eventually(lambda: a.lost is not None and a.lost.is_set(), timeout=10, what="a notices it lost")
    assert not a.elector.is_leader.is_set()
    eventually(lambda: not a.thread.is_alive(), what="a's run() returns")
    assert lease_spec(apiserver, namespace)["holderIdentity"] == "other"


def test_lease_kept_renewed_by_another_holder_is_never_taken(
    apiserver: ControlPlane, namespace: str, campaign: Start
) -> None:
    kube = admin(apiserver)
    path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    # renewTime long past: only our own observation of changes may count
    stale = datetime(2000, 1, 1, tzinfo=timezone.utc)
    lease = kube.post(
        path,
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": LEASE},
            "spec": claim(None, "other", 3.0, stale),
        },
    )
    a = campaign("replica-a")

    # "other" renews (spec changes) between a's reads for well over a lease duration
    for _ in range(8):
        a.observe(1)
        lease["spec"]["renewTime"] = micro_time(datetime.now(timezone.utc))
        lease = kube.put(f"{path}/{LEASE}", lease)
        assert not a.elector.is_leader.is_set()
    assert not a.started.is_set()
    assert lease_spec(apiserver, namespace)["holderIdentity"] == "other"

    # once "other" stops renewing, the lease expires by a's observation and a takes it
    eventually(a.started.is_set, what="a leads after other's lease expired")
    spec = lease_spec(apiserver, namespace)
    assert spec["holderIdentity"] == "replica-a"
    assert spec["leaseTransitions"] == 1


def test_a_renewal_that_comes_back_late_does_not_revive_the_term(
    apiserver: ControlPlane, namespace: str
) -> None:
    network = Network()
    kube = KubeClient(
        apiserver.url,
        auth=StaticTokenAuth(apiserver.admin_token),
        verify=apiserver.ca_file,
        session=network,
    )
    config = LeaseConfig(
        namespace=namespace,
        name=LEASE,
        identity="replica-a",
        lease_duration=3.0,
        renew_deadline=2.0,
        retry_period=0.5,
    )
    elector = LeaderElector(kube, config)
    terms: list[threading.Event] = []
    reopened: list[int] = []  # terms in which the fence opened again after it had shut

    def lead(lost: threading.Event) -> None:
        terms.append(lost)
        shut = False
        while not lost.wait(0.01):
            holding = elector.holding()
            if shut and holding:
                reopened.append(len(terms))
            shut = shut or not holding

    stop = threading.Event()

    def campaign() -> None:
        while not stop.is_set():
            elector.run(stop, lead)

    thread = threading.Thread(target=campaign)
    thread.start()
    try:
        eventually(lambda: terms and elector.holding(), what="a leads")
        network.renewals.clear()
        eventually(lambda: network.held_renewals, what="a renewal is held back")
        eventually(lambda: not elector.holding(), what="the renew deadline passes")

        network.renewals.set()  # the renewal now succeeds, after its deadline

        eventually(terms[0].is_set, what="the first term ends")
        eventually(lambda: len(terms) == 2 and elector.holding(), what="a second term")
        assert reopened == []
        # No one else wanted it: the same replica holds the Lease in its next term.
        assert lease_spec(apiserver, namespace)["holderIdentity"] == "replica-a"
    finally:
        network.renewals.set()
        stop.set()
        thread.join(timeout=15)
    assert not thread.is_alive()
