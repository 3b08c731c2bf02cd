"""Prometheus metrics of one xsp worker, on a private registry.

``Metrics`` owns a ``CollectorRegistry`` of its own (not prometheus_client's
global one), so every worker, test and CLI process can build as many as it
likes without "duplicated timeseries" errors, and the exposition contains
only xsp's metrics.

Names follow the Prometheus conventions: prefix ``xsp_``, base units in the
name (``_seconds``, ``_micros`` for money in micro-units of the currency),
counters end in ``_total``. Label values are bounded sets (agent, topic,
status, VAST error code, hop, table, campaign, partition), never request or
user ids.

Two ways to serve them: ``exposition(metrics)`` returns ``(content_type,
body)`` for any web framework (e.g. a Faust web view at ``/metrics``), and
``start_metrics_server`` runs prometheus_client's own HTTP server in a thread.

Plain module: no Faust import.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from threading import Thread
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

from streams.lag import PartitionLag, consumer_lag

__all__ = [
    "DECISION_BUCKETS",
    "HTTP_BUCKETS",
    "Metrics",
    "MetricsServer",
    "exposition",
    "refresh_lag",
    "start_metrics_server",
]

# One VAST hop is an HTTP request to an ad server: most answer in tens of
# milliseconds, timeouts sit at a few seconds.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Exactly-once commits hold the commit gate: milliseconds when healthy.
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
# Events handled together: admit takes up to 500, a batch message holds up to 200.
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500)
# A decision spans several Kafka hops plus the VAST chain.
DECISION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """Every metric an xsp worker exports, registered on ``self.registry``.

    The metric objects are public attributes (prometheus_client's API); the
    small methods below are the calls agents are expected to make, so label
    names are spelled in one place.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events_in = Counter(
            "xsp_events_in_total",
            "Records an agent consumed, by agent and source topic.",
            ["agent", "topic"],
            registry=r,
        )
        self.events_out = Counter(
            "xsp_events_out_total",
            "Records an agent produced, by agent and destination topic.",
            ["agent", "topic"],
            registry=r,
        )
        self.decisions = Counter(
            "xsp_decisions_total",
            "Decisions published, by status (e.g. filled, no_fill, capped, error).",
            ["status"],
            registry=r,
        )
        self.vast_errors = Counter(
            "xsp_vast_errors_total",
            "VAST error codes met while resolving wrapper chains, by code (IAB VAST codes).",
            ["code"],
            registry=r,
        )
        self.dead_letters = Counter(
            "xsp_dead_letters_total",
            "Records sent to the dead-letter topic, by the stage that rejected them.",
            ["stage"],
            registry=r,
        )
        self.http_hop_duration = Histogram(
            "xsp_http_hop_duration_seconds",
            "Duration of one HTTP request of a VAST chain, by hop (0 = first ad server).",
            ["hop"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.decision_latency = Histogram(
            "xsp_decision_latency_seconds",
            "Time from an ad request's timestamp to its published decision.",
            buckets=DECISION_BUCKETS,
            registry=r,
        )
        self.commit_gate = Histogram(
            "xsp_commit_gate_seconds",
            "Exactly-once commits: how long each waited for events in progress (phase=wait) "
            "and how long it held new events back (phase=held, the wait included).",
            ["phase"],
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.batch_events = Histogram(
            "xsp_batch_events",
            "Events an agent handled together: admit's takes (stage=admit) and the items "
            "of the budget agent's batch messages (stage=budget). Small batches under "
            "load mean a Kafka message and a Faust event per request.",
            ["stage"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.reservations_open = Gauge(
            "xsp_reservations_open",
            "Reservations (frequency or budget) held and not yet settled, by table.",
            ["table"],
            registry=r,
        )
        self.reservations_expired = Counter(
            "xsp_reservations_expired_total",
            "Reservations released because they expired unsettled, by table.",
            ["table"],
            registry=r,
        )
        self.resolve_queue = Gauge(
            "xsp_resolve_queue",
            "Reserved requests in this worker's resolve stage: waiting for a free "
            "resolver, or resolving (HTTP chain and delivery of the Resolution).",
            ["state"],
            registry=r,
        )
        self._resolve_waiting = self.resolve_queue.labels(state="waiting")
        self._resolve_resolving = self.resolve_queue.labels(state="resolving")
        self.resolve_skips = Counter(
            "xsp_resolve_skipped_total",
            "Reserved requests the resolve stage dropped without asking an ad server, "
            "by reason (stale: queued past the reservation TTL, so expiry decides them).",
            ["reason"],
            registry=r,
        )
        self.prune_ticks = Counter(
            "xsp_prune_ticks_total",
            "Pruning ticks by table and result (scanned: outcome records read to find "
            "those past the dedupe horizon; skipped: none could be, so none were read).",
            ["table", "result"],
            registry=r,
        )
        self.table_keys = Gauge(
            "xsp_table_keys",
            "Keys in a table on this worker's assigned partitions, by table.",
            ["table"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "xsp_consumer_lag",
            "Messages between a consumer group's committed offset and the end offset.",
            ["group", "topic", "partition"],
            registry=r,
        )
        self.consumer_committed_offset = Gauge(
            "xsp_consumer_committed_offset",
            "A consumer group's committed offset (absent where it committed none).",
            ["group", "topic", "partition"],
            registry=r,
        )
        self.log_end_offset = Gauge(
            "xsp_log_end_offset",
            "End offset (offset of the next message) of a topic-partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.commit_holes_repaired = Counter(
            "xsp_commit_holes_repaired_total",
            "Source partitions re-read from their committed offset because it was stuck "
            "below processed messages (faust-streaming#318), by topic.",
            ["topic"],
            registry=r,
        )
        self.acks_refused = Counter(
            "xsp_acks_refused",
            "Source messages processed but not counted as done, because a rebalance had "
            "started (revoking), they were fetched in an earlier group generation "
            "(old_generation) or the flow was stopped (flow_stopped): they are read again "
            "from the committed offset.",
            ["reason"],
            registry=r,
        )
        self.lag_refresh_errors = Counter(
            "xsp_lag_refresh_errors_total",
            "Failed attempts to read consumer lag from the brokers.",
            registry=r,
        )
        self.spend = Counter(
            "xsp_spend_micros_total",
            "Money spent (settled), in micro-units of the campaign currency, by campaign.",
            ["campaign"],
            registry=r,
        )
        self.budget = Gauge(
            "xsp_budget_micros",
            "Campaign budget, in micro-units of the campaign currency, by campaign.",
            ["campaign"],
            registry=r,
        )
        self.budget_spent = Gauge(
            "xsp_budget_spent_micros",
            "Spend recorded in the budget table, in micro-units, by campaign "
            "(survives worker restarts, unlike xsp_spend_micros_total).",
            ["campaign"],
            registry=r,
        )
        # Label sets last written per group, so a refresh can drop partitions
        # that disappeared (topic deleted) instead of exporting stale lag forever.
        self._lag_labels: dict[str, set[tuple[str, str]]] = {}
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}

    def _child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)`` (values in label order), looked up once.

        For the metrics counted per message and per decision, whose series are
        never removed: ``labels()`` costs ~1.6 µs, a cached child ~0.4 µs.
        """
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    # -- calls made by agents -------------------------------------------------

    def event_in(self, agent: str, topic: str, count: int = 1) -> None:
        """Count ``count`` records consumed by ``agent`` from ``topic``."""
        self._child(self.events_in, agent, topic).inc(count)

    def event_out(self, agent: str, topic: str, count: int = 1) -> None:
        """Count ``count`` records produced by ``agent`` to ``topic``."""
        self._child(self.events_out, agent, topic).inc(count)

    def decision(self, status: str) -> None:
        """Count one published decision with ``status``."""
        self._child(self.decisions, status).inc()

    def vast_error(self, code: int | str) -> None:
        """Count one VAST error ``code`` (e.g. 301 wrapper timeout, 303 no ads)."""
        self.vast_errors.labels(code=str(code)).inc()

    def dead_letter(self, stage: str) -> None:
        """Count one record dead-lettered by ``stage``."""
        self.dead_letters.labels(stage=stage).inc()

    def observe_hop(self, hop: int | str, seconds: float) -> None:
        """Record one HTTP hop of ``seconds``."""
        self._child(self.http_hop_duration, str(hop)).observe(seconds)

    @contextlib.contextmanager
    def time_hop(self, hop: int | str) -> Iterator[None]:
        """Time the body as one HTTP hop (recorded also when the body raises)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.observe_hop(hop, time.perf_counter() - start)

    def observe_commit_gate(self, waited_s: float, held_s: float) -> None:
        """Record one exactly-once commit's wait for events and how long it held the gate."""
        self.commit_gate.labels(phase="wait").observe(waited_s)
        self.commit_gate.labels(phase="held").observe(held_s)

    def observe_batch(self, stage: str, events: int) -> None:
        """Record how many events ``stage`` handled together in one batch."""
        self._child(self.batch_events, stage).observe(events)

    def observe_decision_latency(self, seconds: float) -> None:
        """Record the request-to-decision latency of one request (negative clamps to 0)."""
        self.decision_latency.observe(max(0.0, seconds))

    def set_reservations_open(self, table: str, count: int) -> None:
        """Set the number of unsettled reservations in ``table``."""
        self.reservations_open.labels(table=table).set(count)

    def commit_hole_repaired(self, topic: str) -> None:
        """Count one partition of ``topic`` re-read because its commit was stuck."""
        self.commit_holes_repaired.labels(topic=topic).inc()

    def ack_refused(self, reason: str) -> None:
        """Count one processed message whose ack was refused (``reason``: see the counter)."""
        self.acks_refused.labels(reason=reason).inc()

    def reservations_expired_inc(self, table: str, count: int = 1) -> None:
        """Count ``count`` reservations of ``table`` released on expiry."""
        self.reservations_expired.labels(table=table).inc(count)

    def set_resolve_queue(self, waiting: int, resolving: int) -> None:
        """Set how many requests the resolve stage holds, waiting and resolving."""
        # Set per request: the children are looked up once (labels() costs microseconds).
        self._resolve_waiting.set(waiting)
        self._resolve_resolving.set(resolving)

    def resolve_skipped(self, reason: str) -> None:
        """Count one request the resolve stage dropped unresolved (``stale``: past the TTL)."""
        self.resolve_skips.labels(reason=reason).inc()

    def prune_tick(self, table: str, scanned: bool) -> None:
        """Count one pruning tick of ``table``: whether it read the partition's records."""
        self.prune_ticks.labels(table=table, result="scanned" if scanned else "skipped").inc()

    def set_table_keys(self, table: str, count: int) -> None:
        """Set the number of keys of ``table`` held by this worker."""
        self.table_keys.labels(table=table).set(count)

    def spent(self, campaign: str, micros: int) -> None:
        """Add ``micros`` of settled spend to ``campaign`` (negative amounts are refused)."""
        self._child(self.spend, campaign).inc(micros)

    def set_budget(self, campaign: str, micros: int) -> None:
        """Set the budget of ``campaign`` in micros."""
        self.budget.labels(campaign=campaign).set(micros)

    def set_budget_spent(self, campaign: str, micros: int) -> None:
        """Set the spend of ``campaign`` as the budget table records it, in micros."""
        self.budget_spent.labels(campaign=campaign).set(micros)

    def set_lag(self, group: str, rows: list[PartitionLag]) -> None:
        """Replace the lag gauges of ``group`` by ``rows``.

        Guarantees: after the call the group's lag series are exactly the
        partitions in ``rows``; series of other groups are untouched.
        """
        fresh: set[tuple[str, str]] = set()
        for row in rows:
            partition = str(row.partition)
            fresh.add((row.topic, partition))
            self.consumer_lag.labels(group, row.topic, partition).set(row.lag)
            self.log_end_offset.labels(row.topic, partition).set(row.end_offset)
            if row.committed is None:
                with contextlib.suppress(KeyError):
                    self.consumer_committed_offset.remove(group, row.topic, partition)
            else:
                self.consumer_committed_offset.labels(group, row.topic, partition).set(
                    row.committed
                )
        for topic, partition in self._lag_labels.get(group, set()) - fresh:
            for gauge in (self.consumer_lag, self.consumer_committed_offset):
                with contextlib.suppress(KeyError):
                    gauge.remove(group, topic, partition)
        self._lag_labels[group] = fresh

    # -- introspection --------------------------------------------------------

    def render(self) -> bytes:
        """The text exposition format of every metric (what ``/metrics`` serves)."""
        return generate_latest(self.registry)

    def sample_names(self) -> set[str]:
        """Every sample name this registry can export, labelled children or not.

        Counters give ``<name>_total`` and ``<name>_created``; histograms
        ``_bucket``, ``_sum``, ``_count`` and ``_created``; gauges their name.
        Used by tests to check that dashboards only query existing series.
        """
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": ("",),
        }
        names: set[str] = set()
        for family in self.registry.collect():
            names.update(family.name + suffix for suffix in suffixes[family.type])
        return names


def exposition(metrics: Metrics) -> tuple[str, bytes]:
    """``(content_type, body)`` of the Prometheus text format, to serve from any web server."""
    return CONTENT_TYPE_LATEST, metrics.render()


async def refresh_lag(metrics: Metrics, bootstrap: str, group_id: str) -> list[PartitionLag]:
    """Read the lag of ``group_id`` on every topic it committed to and set the lag gauges.

    Returns the rows read. On failure (broker unreachable, ...) it counts
    ``xsp_lag_refresh_errors_total``, keeps the previous values and re-raises,
    so a periodic caller can log and carry on.
    """
    try:
        rows = await consumer_lag(bootstrap, group_id)
    except Exception:
        metrics.lag_refresh_errors.inc()
        raise
    metrics.set_lag(group_id, rows)
    return rows


@dataclass(slots=True)
class MetricsServer:
    """A running prometheus_client HTTP server (``/metrics`` and any other path)."""

    host: str
    port: int
    _server: Any
    _thread: Thread

    def close(self) -> None:
        """Stop serving and free the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(metrics: Metrics, host: str = "127.0.0.1", port: int = 0) -> MetricsServer:
    """Serve ``metrics`` over HTTP from a daemon thread; ``port=0`` picks a free port.

    Binds to loopback unless told otherwise (a container sets ``0.0.0.0``).
    The returned ``MetricsServer.port`` is the port actually bound.
    """
    server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    return MetricsServer(host=host, port=server.server_port, _server=server, _thread=thread)
