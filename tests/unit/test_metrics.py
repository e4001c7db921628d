"""Metrics: what each call puts in the text exposition, and that instances are separate."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from controller.gcp.ratelimit import WriteLimiter
from controller.metrics import PREFIX, Metrics


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample in render(), keyed by (name without prefix, labels)."""
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name.removeprefix(PREFIX), frozenset(s.labels.items()))] = s.value
    return out


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, frozenset(labels.items())))


def test_every_result_is_exposed_at_zero_before_any_reconcile():
    m = Metrics()
    for result in ("ok", "error", "retry"):
        assert value(m, "reconciles_total", result=result) == 0


def test_reconciles_are_counted_by_result():
    m = Metrics()
    m.observe_reconcile("ok")
    m.observe_reconcile("ok")
    m.observe_reconcile("retry", "transient")
    assert value(m, "reconciles_total", result="ok") == 2
    assert value(m, "reconciles_total", result="retry") == 1
    assert value(m, "reconciles_total", result="error") == 0


def test_reconcile_errors_are_counted_by_kind():
    m = Metrics()
    m.observe_reconcile("retry", "transient")
    m.observe_reconcile("error", "permission")
    m.observe_reconcile("error", "permission")
    m.observe_reconcile("ok")
    assert value(m, "reconcile_errors_total", kind="transient") == 1
    assert value(m, "reconcile_errors_total", kind="permission") == 2
    assert not any(name == "reconcile_errors_total" and not labels for name, labels in samples(m))


def test_gcp_calls_are_counted_by_method_and_code_with_zero_for_no_response():
    m = Metrics()
    m.gcp_call("backendServices.get", 200)
    m.gcp_call("backendServices.get", 200)
    m.gcp_call("backendServices.patch", 412)
    m.gcp_call("backendServices.patch", 0)
    assert value(m, "gcp_calls_total", method="backendServices.get", code="200") == 2
    assert value(m, "gcp_calls_total", method="backendServices.patch", code="412") == 1
    assert value(m, "gcp_calls_total", method="backendServices.patch", code="0") == 1


def test_bound_gauges_are_read_at_each_render():
    m = Metrics()
    depth, restarts = [3], [1]
    m.bind(queue_depth=lambda: depth[0], watch_restarts=lambda: restarts[0])
    assert value(m, "queue_depth") == 3
    assert value(m, "watch_restarts_total") == 1
    depth[0], restarts[0] = 0, 5
    assert value(m, "queue_depth") == 0
    assert value(m, "watch_restarts_total") == 5


def test_watch_restarts_is_a_counter_and_zero_until_bound():
    m = Metrics()
    text = m.render().decode()
    assert f"# TYPE {PREFIX}watch_restarts_total counter" in text
    assert f"{PREFIX}watch_restarts_total 0.0" in text.splitlines()


def test_synced_sets_the_last_sync_timestamp():
    m = Metrics()
    assert value(m, "last_sync_timestamp_seconds") == 0
    m.synced(1_700_000_000.5)
    assert value(m, "last_sync_timestamp_seconds") == 1_700_000_000.5


def test_two_instances_do_not_share_values():
    a, b = Metrics(), Metrics()
    a.observe_reconcile("error", "invalid")
    a.gcp_call("backendServices.get", 200)
    a.synced(42.0)
    a.bind(queue_depth=lambda: 7, watch_restarts=lambda: 2)
    assert value(a, "reconciles_total", result="error") == 1
    assert value(b, "reconciles_total", result="error") == 0
    assert value(b, "reconcile_errors_total", kind="invalid") is None
    assert value(b, "gcp_calls_total", method="backendServices.get", code="200") is None
    assert value(b, "last_sync_timestamp_seconds") == 0
    assert value(b, "queue_depth") == 0
    assert value(b, "watch_restarts_total") == 0


def test_compute_budgets_and_the_time_waited_for_them_are_exposed():
    m = Metrics()
    now, slept = [0.0], list[float]()
    limiter = WriteLimiter(
        2.0, clock=lambda: now[0], sleep=slept.append, on_wait=m.budget("write", 2.0)
    )
    m.budget("read", 10.0)
    for _ in range(3):
        limiter.acquire()
    assert value(m, "compute_budget_per_second", kind="write") == 2.0
    assert value(m, "compute_budget_per_second", kind="read") == 10.0
    assert value(m, "compute_budget_wait_seconds_total", kind="write") == sum(slept) == 1.5


def test_the_informer_counts_go_on_across_leadership_terms():
    m = Metrics()
    m.bind(queue_depth=lambda: 0, watch_restarts=lambda: 3, lists=lambda: 2)
    m.bind(queue_depth=lambda: 0, watch_restarts=lambda: 1, lists=lambda: 1)  # a new term
    text = m.render().decode()
    assert "gke_ingress_timeout_watch_restarts_total 4.0" in text
    assert "gke_ingress_timeout_ingress_lists_total 3.0" in text


def test_leader_is_read_from_the_elector_at_each_render():
    m = Metrics()
    assert value(m, "leader") == 0
    holding = [True]
    m.leading(lambda: holding[0])
    assert value(m, "leader") == 1
    holding[0] = False
    assert value(m, "leader") == 0


def test_events_are_counted_by_type_and_reason():
    m = Metrics()
    m.event("Warning", "TimeoutOverridden")
    m.event("Warning", "TimeoutOverridden")
    m.event("Normal", "TimeoutApplied")
    assert value(m, "events_total", type="Warning", reason="TimeoutOverridden") == 2
    assert value(m, "events_total", type="Normal", reason="TimeoutApplied") == 1


def test_events_dropped_is_a_counter_by_reason():
    m = Metrics()
    m.events_dropped_total.labels(reason="queue_full").inc()
    assert value(m, "events_dropped_total", reason="queue_full") == 1
