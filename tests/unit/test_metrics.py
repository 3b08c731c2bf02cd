"""streams.metrics: names follow Prometheus conventions, exposition parses, values move."""

from __future__ import annotations

import re
import urllib.request

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from streams.lag import PartitionLag
from streams.metrics import Metrics, exposition, start_metrics_server

EXPECTED_FAMILIES = {
    "xsp_events_in": ("counter", {"agent", "topic"}),
    "xsp_events_out": ("counter", {"agent", "topic"}),
    "xsp_decisions": ("counter", {"status"}),
    "xsp_vast_errors": ("counter", {"code"}),
    "xsp_dead_letters": ("counter", {"stage"}),
    "xsp_http_hop_duration_seconds": ("histogram", {"hop"}),
    "xsp_decision_latency_seconds": ("histogram", set()),
    "xsp_commit_gate_seconds": ("histogram", {"phase"}),
    "xsp_batch_events": ("histogram", {"stage"}),
    "xsp_reservations_open": ("gauge", {"table"}),
    "xsp_reservations_expired": ("counter", {"table"}),
    "xsp_resolve_queue": ("gauge", {"state"}),
    "xsp_resolve_skipped": ("counter", {"reason"}),
    "xsp_prune_ticks": ("counter", {"table", "result"}),
    "xsp_table_keys": ("gauge", {"table"}),
    "xsp_consumer_lag": ("gauge", {"group", "topic", "partition"}),
    "xsp_consumer_committed_offset": ("gauge", {"group", "topic", "partition"}),
    "xsp_log_end_offset": ("gauge", {"topic", "partition"}),
    "xsp_lag_refresh_errors": ("counter", set()),
    "xsp_commit_holes_repaired": ("counter", {"topic"}),
    "xsp_acks_refused": ("counter", {"reason"}),
    "xsp_spend_micros": ("counter", {"campaign"}),
    "xsp_budget_micros": ("gauge", {"campaign"}),
    "xsp_budget_spent_micros": ("gauge", {"campaign"}),
}


def families(metrics: Metrics) -> dict[str, object]:
    content_type, body = exposition(metrics)
    assert content_type.startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


def test_every_expected_metric_is_registered_with_its_type_and_labels() -> None:
    metrics = Metrics()
    found = {f.name: f for f in metrics.registry.collect()}
    assert set(found) == set(EXPECTED_FAMILIES)
    for name, (kind, labels) in EXPECTED_FAMILIES.items():
        assert found[name].type == kind, name
        # Declared label names live on the metric object, not on an empty family.
        metric = metrics.registry._names_to_collectors[
            name + ("_total" if kind == "counter" else "")
        ]
        assert set(metric._labelnames) == labels, name


def test_names_follow_prometheus_conventions() -> None:
    metrics = Metrics()
    for family in metrics.registry.collect():
        assert re.fullmatch(r"xsp_[a-z][a-z0-9_]*", family.name), family.name
        assert family.documentation, f"{family.name} has no help text"
        if family.type == "histogram":
            # Durations in seconds, or sizes counted in events (their unit).
            assert family.name.endswith(("_seconds", "_events")), f"{family.name}: no unit"
        # Non-base units must not sneak in.
        assert not re.search(r"_(ms|milliseconds|minutes|hours|bytes_kb)$", family.name)
    names = metrics.sample_names()
    assert "xsp_events_in_total" in names
    assert "xsp_http_hop_duration_seconds_bucket" in names
    assert "xsp_consumer_lag" in names
    # A counter without `_total` in the exposition would break `rate()` queries.
    assert "xsp_decisions" not in names


def test_a_private_registry_leaves_the_global_one_alone_and_allows_many_instances() -> None:
    before = {f.name for f in REGISTRY.collect()}
    Metrics()
    Metrics()
    after = {f.name for f in REGISTRY.collect()}
    assert before == after
    assert not any(name.startswith("xsp_") for name in after)


def test_counters_increase_and_exposition_parses() -> None:
    metrics = Metrics()
    metrics.event_in("admit", "xsp.ad-requests")
    metrics.event_in("admit", "xsp.ad-requests", 4)
    metrics.event_out("admit", "xsp.budget-requests", 3)
    metrics.decision("filled")
    metrics.decision("filled")
    metrics.decision("no_fill")
    metrics.vast_error(303)
    metrics.dead_letter("admit")
    metrics.spent("c-1", 1_500_000)
    metrics.set_budget("c-1", 10_000_000)
    metrics.set_budget_spent("c-1", 2_500_000)
    metrics.reservations_expired_inc("budget", 2)
    metrics.set_reservations_open("frequency", 7)
    metrics.set_table_keys("frequency", 42)
    metrics.set_resolve_queue(waiting=3, resolving=2)
    metrics.ack_refused("revoking")
    metrics.ack_refused("revoking")
    metrics.ack_refused("old_generation")

    assert sample(metrics, "xsp_events_in_total", agent="admit", topic="xsp.ad-requests") == 5
    assert sample(metrics, "xsp_resolve_queue", state="waiting") == 3
    assert sample(metrics, "xsp_resolve_queue", state="resolving") == 2
    assert sample(metrics, "xsp_events_out_total", agent="admit", topic="xsp.budget-requests") == 3
    assert sample(metrics, "xsp_decisions_total", status="filled") == 2
    assert sample(metrics, "xsp_decisions_total", status="no_fill") == 1
    assert sample(metrics, "xsp_vast_errors_total", code="303") == 1
    assert sample(metrics, "xsp_dead_letters_total", stage="admit") == 1
    assert sample(metrics, "xsp_spend_micros_total", campaign="c-1") == 1_500_000
    assert sample(metrics, "xsp_budget_micros", campaign="c-1") == 10_000_000
    assert sample(metrics, "xsp_budget_spent_micros", campaign="c-1") == 2_500_000
    assert sample(metrics, "xsp_reservations_expired_total", table="budget") == 2
    assert sample(metrics, "xsp_reservations_open", table="frequency") == 7
    assert sample(metrics, "xsp_table_keys", table="frequency") == 42
    assert sample(metrics, "xsp_acks_refused_total", reason="revoking") == 2
    assert sample(metrics, "xsp_acks_refused_total", reason="old_generation") == 1
    parsed = families(metrics)
    assert parsed["xsp_decisions"].type == "counter"

    with pytest.raises(ValueError):
        metrics.spent("c-1", -1)  # spend is a counter: refunds are not negative spend


def test_histograms_count_observations_into_buckets() -> None:
    metrics = Metrics()
    metrics.observe_hop(0, 0.02)
    metrics.observe_hop(0, 3.0)
    with metrics.time_hop(1):
        pass
    with pytest.raises(RuntimeError), metrics.time_hop(1):
        raise RuntimeError("timed out")  # a failed hop is still a hop that took time
    metrics.observe_decision_latency(0.2)
    metrics.observe_decision_latency(-5)  # clock skew: clamps to 0 instead of vanishing

    assert sample(metrics, "xsp_http_hop_duration_seconds_count", hop="0") == 2
    assert sample(metrics, "xsp_http_hop_duration_seconds_bucket", hop="0", le="0.025") == 1
    assert sample(metrics, "xsp_http_hop_duration_seconds_bucket", hop="0", le="+Inf") == 2
    assert sample(metrics, "xsp_http_hop_duration_seconds_sum", hop="0") == pytest.approx(3.02)
    assert sample(metrics, "xsp_http_hop_duration_seconds_count", hop="1") == 2
    assert sample(metrics, "xsp_decision_latency_seconds_count") == 2
    assert sample(metrics, "xsp_decision_latency_seconds_bucket", le="0.01") == 1


def test_set_lag_replaces_the_groups_series_and_leaves_other_groups() -> None:
    metrics = Metrics()
    metrics.set_lag(
        "g1",
        [PartitionLag("t", 0, 10, 4, 6), PartitionLag("t", 1, 3, None, 3)],
    )
    metrics.set_lag("g2", [PartitionLag("t", 0, 10, 10, 0)])
    assert sample(metrics, "xsp_consumer_lag", group="g1", topic="t", partition="0") == 6
    assert sample(metrics, "xsp_consumer_lag", group="g1", topic="t", partition="1") == 3
    assert (
        sample(metrics, "xsp_consumer_committed_offset", group="g1", topic="t", partition="0") == 4
    )
    # No committed offset: no committed series rather than a made-up 0.
    assert (
        sample(metrics, "xsp_consumer_committed_offset", group="g1", topic="t", partition="1")
        is None
    )
    assert sample(metrics, "xsp_log_end_offset", topic="t", partition="0") == 10

    metrics.set_lag("g1", [PartitionLag("t", 0, 12, 12, 0)])
    assert sample(metrics, "xsp_consumer_lag", group="g1", topic="t", partition="0") == 0
    assert sample(metrics, "xsp_consumer_lag", group="g1", topic="t", partition="1") is None
    assert sample(metrics, "xsp_consumer_lag", group="g2", topic="t", partition="0") == 0


def test_metrics_server_serves_the_exposition_on_loopback() -> None:
    metrics = Metrics()
    metrics.decision("filled")
    server = start_metrics_server(metrics)
    try:
        assert server.host == "127.0.0.1"
        assert server.port > 0
        url = f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
            assert response.headers["Content-Type"].startswith("text/plain")
    finally:
        server.close()
    parsed = {f.name: f for f in text_string_to_metric_families(body)}
    assert parsed["xsp_decisions"].samples[0].value == 1


def test_commit_gate_phases_are_observed_separately() -> None:
    metrics = Metrics()
    metrics.observe_commit_gate(0.004, 0.012)
    metrics.observe_commit_gate(0.0, 0.003)
    assert sample(metrics, "xsp_commit_gate_seconds_count", phase="wait") == 2
    assert sample(metrics, "xsp_commit_gate_seconds_sum", phase="held") == 0.015
    assert sample(metrics, "xsp_commit_gate_seconds_bucket", phase="wait", le="0.005") == 2
    assert sample(metrics, "xsp_commit_gate_seconds_bucket", phase="held", le="0.005") == 1


def test_batch_sizes_are_observed_by_stage() -> None:
    metrics = Metrics()
    metrics.observe_batch("admit", 1)
    metrics.observe_batch("admit", 37)
    metrics.observe_batch("budget", 200)
    assert sample(metrics, "xsp_batch_events_count", stage="admit") == 2
    assert sample(metrics, "xsp_batch_events_sum", stage="admit") == 38
    assert sample(metrics, "xsp_batch_events_bucket", stage="admit", le="1.0") == 1
    assert sample(metrics, "xsp_batch_events_bucket", stage="admit", le="50.0") == 2
    assert sample(metrics, "xsp_batch_events_bucket", stage="budget", le="100.0") == 0
