"""The edge's Kafka side: one producer and one reply consumer per edge process.

Request-reply over Kafka
------------------------
:meth:`EdgeClient.decide` produces an ``AdRequest`` to ``<prefix>ad-requests``
(key ``user_id``, so every request of a user lands on the partition that owns
the user's frequency row) with ``reply_to`` set to this instance's reply
topic, then waits for the one ``Decision`` the pipeline publishes there
(key ``request_id``). A request that gets no answer within its timeout gets a
synthetic ``Decision(status=timeout)`` instead: the seed's "timeout → fallback".

Why one reply topic per edge instance (``<prefix>replies.<instance_id>``,
1 partition, short retention):

* an instance reads only its own replies: with a shared reply topic every
  edge would fetch and discard every other edge's bytes, so read traffic
  would grow with the square of the fleet;
* no consumer group: the reply partition is *assigned*, never subscribed, so
  edges joining or leaving never trigger a rebalance that would pause reply
  delivery for every instance;
* a shared topic with one partition per instance would need static partition
  assignment and a fixed instance count known to the pipeline; a topic per
  instance needs neither (the pipeline just writes to ``reply_to``).

The consumer starts at the end offset captured *before* the first request is
sent, so a restarted instance with a stable id never mistakes an old reply
for a new one, and no reply to a request of this incarnation is skipped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
import uuid
from types import TracebackType
from typing import Any, Self

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from streams.edge.queries import EdgeConfig, EdgeError, WorkerQueries
from streams.money import check_micros
from streams.records import (
    AdRequest,
    ContractError,
    Decision,
    DecisionStatus,
    SpendEvent,
    decode,
    encode,
)
from streams.topics import TopicNames

__all__ = ["EdgeClient", "UpstreamError", "percentile"]

log = logging.getLogger("xsp.edge.client")

# Ids of timed-out requests kept to recognise their late replies; bounded so a
# broker outage that times out everything cannot grow memory without limit.
_TIMED_OUT_MEMORY = 10_000
# Latency samples kept for p50/p99: a sliding window of the latest answers.
_LATENCY_SAMPLES = 10_000


class UpstreamError(EdgeError):
    """The pipeline could not be reached: producing failed, or the client is not running.

    Retryable: :func:`streams.edge.retry_with_backoff` retries it (re-sending
    the same ``request_id`` is safe, the pipeline dedupes by it).
    """


def percentile(samples: list[float], q: float) -> float | None:
    """Nearest-rank percentile ``q`` (0-100) of ``samples``; ``None`` if empty."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


class EdgeClient:
    """One edge process's connection to the pipeline (an async context manager).

    Owns exactly one aiokafka producer, one reply consumer (assigned, no
    group) and one :class:`~streams.edge.queries.WorkerQueries` HTTP client;
    share one instance across all sessions of a process.
    """

    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        self.topics = TopicNames.from_prefix(config.topic_prefix)
        self.reply_topic = config.reply_topic
        self.queries = WorkerQueries(config)
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[Decision]] = {}
        self._timed_out: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._latencies_ms: collections.deque[float] = collections.deque(maxlen=_LATENCY_SAMPLES)
        self._started = False
        self._closed = False
        self._start_lock = asyncio.Lock()
        self.start_offset: int | None = None
        self.counters: collections.Counter[str] = collections.Counter()
        self.decisions_by_status: collections.Counter[str] = collections.Counter()

    @property
    def instance_id(self) -> str:
        """This instance's id (the suffix of its reply topic)."""
        return self.config.instance_id

    @property
    def running(self) -> bool:
        """True between a successful :meth:`start` and :meth:`close`."""
        return self._started and not self._closed

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            # __aexit__ does not run when __aenter__ fails: release the HTTP pool here.
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Create the reply topic, start producer and consumer; idempotent.

        On return the reply consumer is positioned at the end offset of the
        reply topic as it was *before* any request of this client was sent.
        Raises :class:`UpstreamError` if Kafka is unreachable (nothing is left
        running in that case).
        """
        async with self._start_lock:
            if self._closed:
                raise UpstreamError("the edge client is closed")
            if self._started:
                return
            try:
                await self._create_reply_topic()
                self._producer = AIOKafkaProducer(
                    bootstrap_servers=self.config.bootstrap_servers,
                    client_id=f"xsp-edge-{self.instance_id}",
                    # acks=all + idempotence: a spend event acknowledged here
                    # is never lost or duplicated by the producer's own retries.
                    acks="all",
                    enable_idempotence=True,
                    linger_ms=self.config.linger_ms,
                )
                await self._producer.start()
                self._consumer = AIOKafkaConsumer(
                    bootstrap_servers=self.config.bootstrap_servers,
                    client_id=f"xsp-edge-{self.instance_id}-replies",
                    group_id=None,  # assigned, never subscribed: no group, no rebalances
                    enable_auto_commit=False,
                    auto_offset_reset="latest",
                    # Replies are latency-critical; the broker default (500 ms)
                    # would dominate a decision that takes tens of milliseconds.
                    fetch_max_wait_ms=10,
                )
                await self._consumer.start()
                tp = TopicPartition(self.reply_topic, 0)
                self._consumer.assign([tp])
                end = (await self._consumer.end_offsets([tp]))[tp]
                self._consumer.seek(tp, end)
                self.start_offset = end
            except (KafkaError, OSError, TimeoutError) as exc:
                await self._stop_kafka()
                raise UpstreamError(f"cannot start the edge client: {exc!r}") from exc
            self._reader = asyncio.create_task(self._read_replies(), name="xsp-edge-replies")
            self._started = True
            log.info(
                "edge %s started: reply topic %s from offset %d",
                self.instance_id,
                self.reply_topic,
                self.start_offset,
            )

    async def _create_reply_topic(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.config.bootstrap_servers)
        await admin.start()
        try:
            topic = NewTopic(
                self.reply_topic,
                num_partitions=1,
                replication_factor=1,
                # Replies are useful for seconds; the retention only bounds disk.
                topic_configs={
                    "retention.ms": str(self.config.reply_retention_ms),
                    "cleanup.policy": "delete",
                },
            )
            # A restart with a stable instance id finds its topic already there.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([topic])
            deadline = time.monotonic() + 30
            while True:
                described = await admin.describe_topics([self.reply_topic])
                parts = described[0].get("partitions") if described else None
                if (
                    described
                    and described[0].get("error_code", 0) == 0
                    and parts
                    and all(p.get("leader", -1) >= 0 for p in parts)
                ):
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"reply topic {self.reply_topic} has no leader")
                await asyncio.sleep(0.05)
        finally:
            await admin.close()

    async def decide(self, request: AdRequest, timeout_s: float | None = None) -> Decision:
        """Send ``request`` to the pipeline and return its Decision.

        Guarantees: returns within ``timeout_s`` (default
        ``config.request_timeout_s``) plus scheduling noise; the result is
        the pipeline's Decision for ``request.request_id`` or, if none arrived
        in time, ``Decision(status=timeout, reason="no decision within X s")``.
        ``reply_to`` is always overwritten with this instance's reply topic.
        Raises :class:`UpstreamError` if producing failed (the request may be
        retried with the same id) and ``ValueError`` if the same request id
        is already in flight on this client.
        """
        if not self.running or self._producer is None:
            raise UpstreamError("the edge client is not running (use `async with EdgeClient(...)`)")
        timeout = self.config.request_timeout_s if timeout_s is None else timeout_s
        request_id = request.request_id
        if request_id in self._pending:
            raise ValueError(f"request {request_id!r} is already in flight")
        if request.reply_to != self.reply_topic:
            request = dataclasses.replace(request, reply_to=self.reply_topic)
        # Register before producing: the reply can beat the produce ack.
        future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._timed_out.pop(request_id, None)
        self.counters["requests"] += 1
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                try:
                    ack = await self._producer.send(
                        self.topics.ad_requests,
                        key=request.user_id.encode(),
                        value=encode(request),
                    )
                    await ack
                except KafkaError as exc:
                    self.counters["produce_errors"] += 1
                    raise UpstreamError(f"producing request {request_id}: {exc!r}") from exc
                decision = await future
        except TimeoutError:
            self._remember_timed_out(request_id)
            self.counters["timeouts"] += 1
            self.decisions_by_status[DecisionStatus.TIMEOUT.value] += 1
            return Decision(
                request_id=request_id,
                status=DecisionStatus.TIMEOUT,
                user_id=request.user_id,
                reason=f"no decision within {timeout:g} s",
                decided_at=int(time.time() * 1000),
            )
        finally:
            self._pending.pop(request_id, None)
        self._latencies_ms.append((time.monotonic() - started) * 1000)
        self.decisions_by_status[decision.status.value] += 1
        return decision

    async def track_spend(
        self,
        campaign_id: str,
        amount_micros: int,
        event_id: str | None = None,
        *,
        reason: str = "",
        timestamp_ms: int | None = None,
    ) -> SpendEvent:
        """Produce a SpendEvent to ``<prefix>spend`` (key ``campaign_id``) and return it.

        Guarantees: on return the broker has acknowledged the event (acks=all).
        ``event_id`` defaults to a fresh uuid4; the pipeline applies each
        event id at most once, so re-sending the returned event after an
        error is safe. Negative amounts are refused here (the pipeline
        would dead-letter them). Raises
        :class:`UpstreamError` if producing failed and ``MoneyError`` for an
        amount that is not integer micros in the 64-bit range.
        """
        if not self.running or self._producer is None:
            raise UpstreamError("the edge client is not running (use `async with EdgeClient(...)`)")
        amount = check_micros(amount_micros, field="amount_micros")
        event = SpendEvent(
            event_id=event_id or str(uuid.uuid4()),
            campaign_id=campaign_id,
            amount_micros=amount,
            timestamp=timestamp_ms if timestamp_ms is not None else int(time.time() * 1000),
            reason=reason,
        )
        # Validate the way the consumer will, before it reaches the topic.
        SpendEvent.from_dict(event.to_dict())
        try:
            ack = await self._producer.send(
                self.topics.spend, key=campaign_id.encode(), value=encode(event)
            )
            await ack
        except KafkaError as exc:
            self.counters["produce_errors"] += 1
            raise UpstreamError(f"producing spend event {event.event_id}: {exc!r}") from exc
        self.counters["spend_events"] += 1
        return event

    async def flush(self) -> None:
        """Wait until every message produced so far is acknowledged."""
        if self._producer is not None and self.running:
            await self._producer.flush()

    def stats(self) -> dict[str, Any]:
        """Counters of this client: a fresh dict, safe to serialise.

        Keys: requests, decisions (by status, synthetic timeouts included),
        timeouts, late_replies (answers to timed-out requests, dropped),
        unknown_replies (answers to ids never sent or already answered),
        bad_replies (undecodable), reply_messages / reply_bytes (everything
        the reply consumer read), spend_events, produce_errors, in_flight,
        latency_ms {count, p50, p99} over the latest answered requests, and
        the query client's counters under ``queries``.
        """
        samples = list(self._latencies_ms)
        names = (
            "requests",
            "timeouts",
            "late_replies",
            "unknown_replies",
            "bad_replies",
            "reply_messages",
            "reply_bytes",
            "spend_events",
            "produce_errors",
        )
        return {
            "instance_id": self.instance_id,
            "reply_topic": self.reply_topic,
            **{name: self.counters[name] for name in names},
            "decisions": dict(self.decisions_by_status),
            "in_flight": len(self._pending),
            "latency_ms": {
                "count": len(samples),
                "p50": percentile(samples, 50),
                "p99": percentile(samples, 99),
            },
            "queries": self.queries.stats(),
        }

    async def close(self) -> None:
        """Stop reading replies, flush and stop the producer, close HTTP; idempotent.

        Requests still waiting get :class:`UpstreamError`. Logs the stats.
        """
        if self._closed:
            return
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        for request_id, future in list(self._pending.items()):
            if not future.done():
                future.set_exception(UpstreamError(f"client closed before {request_id} answered"))
        await self._stop_kafka()
        await self.queries.close()
        if self._started and self.config.delete_reply_topic_on_close:
            await self._delete_reply_topic()
        if self._started:
            log.info("edge %s closed: %s", self.instance_id, self.stats())

    async def _stop_kafka(self) -> None:
        # stop() flushes pending sends first, so acknowledged-or-not is settled.
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
            self._producer = None
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
            self._consumer = None

    async def _delete_reply_topic(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.config.bootstrap_servers)
        try:
            await admin.start()
            await admin.delete_topics([self.reply_topic])
        except Exception as exc:  # cleanup is best effort; retention bounds the leftovers
            log.warning("could not delete reply topic %s: %r", self.reply_topic, exc)
        finally:
            with contextlib.suppress(Exception):
                await admin.close()

    def _remember_timed_out(self, request_id: str) -> None:
        self._timed_out[request_id] = None
        while len(self._timed_out) > _TIMED_OUT_MEMORY:
            self._timed_out.popitem(last=False)

    async def _read_replies(self) -> None:
        """Route each reply to the request waiting for it; count what is dropped."""
        assert self._consumer is not None
        consumer = self._consumer
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=200, max_records=500)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep serving: the next fetch may succeed
                log.warning("reply consumer error: %r", exc)
                await asyncio.sleep(0.1)
                continue
            for records in batches.values():
                for record in records:
                    self._route(record.value or b"")

    def _route(self, raw: bytes) -> None:
        self.counters["reply_messages"] += 1
        self.counters["reply_bytes"] += len(raw)
        try:
            decision = decode(Decision, raw)
        except ContractError as exc:
            self.counters["bad_replies"] += 1
            log.warning("undecodable reply on %s: %s", self.reply_topic, exc)
            return
        future = self._pending.get(decision.request_id)
        if future is not None and not future.done():
            future.set_result(decision)
        elif decision.request_id in self._timed_out:
            # The caller already served its fallback; the answer is only counted.
            self.counters["late_replies"] += 1
            del self._timed_out[decision.request_id]
        else:
            self.counters["unknown_replies"] += 1
