"""What every agent shares: the table adapter, message routing, dead letters.

Kept out of ``streams/`` because it is the only code besides the agents that
knows Faust's table and topic objects.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from faust import streams as faust_streams
from faust.exceptions import ProducerSendError
from faust.streams import current_event
from faust.types import EventT, TableT

from streams import json_codec
from streams.app import XspApp
from streams.faust_router import partition_of
from streams.key_groups import GroupedDict
from streams.metrics import Metrics
from streams.pipeline import (
    RECORD_PREFIXES,
    Output,
    PipelineConfig,
    decode_or_dead_letter,
    prune_unless_floor,
    record_time,
    row_owner,
)
from streams.record_floor import RecordFloor
from streams.records import DeadLetter, Tick, encode, request_id_in

__all__ = [
    "Router",
    "TableStore",
    "dead_letter",
    "owned_by",
    "processing",
    "prune_on_tick",
    "publish",
]

log = logging.getLogger(__name__)


class TableStore:
    """A Faust table seen as the ``RowStore`` the pipeline handlers use (str keys, bytes values).

    Must only be used inside the agent's stream iteration: each change
    belongs to the changelog partition of the event being processed. A write
    changes the store at once (reads see it) and sends its changelog record
    when the agent awaits ``send_changelog``, inside the same event.

    Why not ``table[key] = value``: Faust sends each changelog record through
    its topic machinery (a FutureMessage, the producer buffer, a sender task,
    callbacks and sensors), 102-148 µs of CPU per write on session 18's box
    (``bench_pipeline``'s floor row) against 23-75 µs for this path; a
    decision writes about four. The records, their
    partitions and their order are the ones Faust would send, and each ack
    goes to the table's own ``_on_changelog_sent`` (a RocksDB store's
    persisted offset), as Faust's do.
    """

    def __init__(self, table: TableT) -> None:
        self.table = table
        self.record_floor = RecordFloor()
        self._changelog = table.changelog_topic.get_topic_name()
        self._unsent: list[tuple[int, bytes, bytes | None]] = []

    def generation(self) -> int:
        """The consumer generation: a rebalance (and so any restore of rows) starts a new one."""
        generation: int = self.table.app.consumer_generation_id
        return generation

    def get(self, key: str) -> bytes | None:
        value = self.table.get(key.encode())
        return None if value is None else bytes(value)

    def put(self, key: str, value: bytes) -> None:
        partition = _event_partition()
        encoded = key.encode()
        self.table.data[encoded] = value
        self._unsent.append((partition, encoded, value))
        if key.startswith(RECORD_PREFIXES):
            at = record_time(json_codec.loads(value))
            self.record_floor.written(partition, self.generation(), at)

    def delete(self, key: str) -> None:
        encoded = key.encode()
        if encoded in self.table.data:
            partition = _event_partition()
            del self.table.data[encoded]
            self._unsent.append((partition, encoded, None))  # a tombstone

    async def send_changelog(self) -> None:
        """Hand the changelog records of every change since the last call to the producer, in order.

        Agents await it inside the event that made the changes, before its
        outputs: an offset commit (which drains the producer first) then
        never passes a change of an event it commits, and under exactly-once
        the records join that event's transaction, as its outputs do.
        """
        if not self._unsent:
            return
        unsent, self._unsent = self._unsent, []
        # Faust's topics send through this one: the transaction manager under exactly-once.
        producer: Any = await self.table.app.maybe_start_producer()
        on_sent = self.table._on_changelog_sent  # type: ignore[attr-defined]
        try:
            for partition, key, value in unsent:
                sent = await producer.send(self._changelog, key, value, partition, None, None)
                sent.add_done_callback(on_sent)
        except ProducerSendError as exc:
            # Exactly-once only, as for outputs (Router.send): the event's
            # partition was revoked, its transaction will abort, and its new
            # owner processes the event again from the last committed offset.
            log.info("changelog writes of a revoked partition dropped: %s", exc)

    def scan(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        """Keys starting with ``prefix``, at least those of the event's partition.

        RocksDB keeps one database per partition: the scan seeks to ``prefix``
        in the database of the event being processed and stops after the
        prefix, lazily. Listing every assigned partition's table instead cost
        a pruning tick ~110 s and ~300 MB of RSS at 1M users. The memory store
        is one dict for all partitions: its ``p:`` keys are listed from their
        campaign's group (``streams.key_groups``), other prefixes filtered from
        the whole dict (a snapshot either way: a dict may not change while it
        is iterated), so callers that delete filter by partition themselves
        (``owned_by``).
        """
        wanted = prefix.encode()
        event = current_event()
        data: Any = self.table.data
        if event is not None and hasattr(data, "_db_for_partition"):
            db = data._db_for_partition(event.message.partition)
            for key, value in db.items(from_key=wanted):
                if not key.startswith(wanted):
                    break
                yield key.decode(), bytes(value)
            return
        index = getattr(data, "data", None)
        if isinstance(index, GroupedDict):
            for key in index.scan(wanted):
                value = index.get(key)
                if value is not None:
                    yield key.decode(), bytes(value)
            return
        items = [(k, v) for k, v in self.table.items() if bytes(k).startswith(wanted)]
        for key, value in items:
            yield bytes(key).decode(), bytes(value)


def _event_partition() -> int:
    """The partition of the event being processed: that of every change it makes."""
    event = current_event()
    if event is None:
        raise TypeError("a table changes only inside an agent's stream iteration")
    partition: int = event.message.partition
    return partition


@contextlib.contextmanager
def processing(event: EventT) -> Iterator[None]:
    """Make ``event`` Faust's current event for the block (an agent that takes batches).

    Faust sets the current event only while a stream yields events one at a
    time; a batch take (``Stream.take_ready``) hands over a list. A table write finds its
    changelog partition, and an exactly-once send its transaction, from the
    current event, so each event of a batch is processed inside this block.
    This sets faust-streaming's private context variable (pinned version).
    """
    token = faust_streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust_streams._current_event.reset(token)


def owned_by(partition: int, partitions: int) -> Callable[[str], bool]:
    """Whether a table key lives in ``partition`` (its row owner's source partition)."""

    def owns(key: str) -> bool:
        owner = row_owner(key)
        return owner is not None and partition_of(owner.encode(), partitions) == partition

    return owns


def prune_on_tick(
    store: TableStore,
    message: Any,
    config: PipelineConfig,
    partitions: int,
    metrics: Metrics,
    table: str,
) -> None:
    """A tick message: forget the tick partition's outcome records past the horizon.

    The tick's time is its broker timestamp, recorded with the message, so a
    replay prunes at the same place in the log. A tick that cannot find a
    record past the horizon (``streams.record_floor``) does not read the
    records; either way exactly the records past the horizon are deleted.
    """
    tick = decode_or_dead_letter(Tick, message.value)
    if not tick.prune:
        return
    scanned = prune_unless_floor(
        store,
        Tick(timestamp=int(message.timestamp * 1000), prune=True),
        config,
        store.record_floor,
        message.partition,
        store.generation(),
        owned_by(message.partition, partitions),
    )
    metrics.prune_tick(table, scanned=scanned)


def _request_id(raw: bytes | None) -> str | None:
    """The request id inside a message, if it has one (for the log line about it)."""
    try:
        return request_id_in(json_codec.loads(raw or b""))
    except ValueError:
        return None


async def publish(
    app: XspApp, topic: str, key: bytes | None, value: bytes, partition: int | None = None
) -> None:
    """Hand one message to the producer Faust's topics send through; returns once it is queued.

    That producer is the transaction manager under exactly-once, so the
    message joins the current event's transaction (``SourceTransactions``);
    ``partition=None`` leaves the choice to the producer's partitioner (Kafka's
    default: murmur2 of the key), as ``Topic.send`` does. Unlike
    ``Topic.send`` it makes no FutureMessage and calls no Faust sensors:
    ~50 µs less per message (``benchmarks.faust_floor``, session 18). A
    message the broker finally refuses is logged, as Faust logs it.
    """
    producer: Any = await app.maybe_start_producer()
    sent = await producer.send(topic, key, value, partition, None, None)
    sent.add_done_callback(_log_undelivered)


def _log_undelivered(sent: Any) -> None:
    if not sent.cancelled() and sent.exception() is not None:
        log.warning("a message was not delivered: %r", sent.exception())


class Router:
    """Sends pipeline ``Output``s to their topics (decisions to the request's reply topic).

    ``resolve`` outputs go to ``submit_resolve`` (the worker's resolve stage,
    no Kafka topic in between: agents/resolve.py says why). Counts what it
    sends in the worker's metrics (events out, decisions by status,
    request-to-decision latency).
    """

    def __init__(
        self, app: XspApp, agent: str, submit_resolve: Callable[[bytes], None] | None = None
    ) -> None:
        topics = app.xsp_topics
        self.app = app
        self.agent = agent
        self.metrics = app.xsp_metrics
        self.replay_mode = app.xsp_settings.replay_mode
        self.submit_resolve = submit_resolve
        self.routes: dict[str, str] = {
            "budget": topics.names.budget_requests,
            # Cap settles go back into the user's own input topic: one source
            # topic per table keeps replays in the live order (see agents/admit.py).
            "frequency": topics.names.ad_requests,
            "status": topics.names.campaign_status,
            "decision": topics.names.ad_responses,
        }

    async def _broadcast(self, output: Output) -> None:
        """One copy into every partition of ``ad-requests`` (admit reads campaign news in-log)."""
        topic = self.app.xsp_topics.names.ad_requests
        for partition in range(self.app.xsp_settings.partitions):
            await publish(self.app, topic, output.key.encode(), output.value, partition)

    def _topic(self, output: Output) -> str:
        if output.route == "decision" and output.topic:
            return output.topic
        return self.routes[output.route]

    async def send(self, outputs: Sequence[Output]) -> None:
        if self.replay_mode:
            return  # a replay rebuilds state; the live run already sent these
        try:
            await self._send_all(outputs)
        except ProducerSendError as exc:
            # Exactly-once only: the event's partition was revoked while it was
            # processed, so its transaction is gone and will abort. Its new owner
            # processes the event again from the last committed offset.
            log.info("outputs of a revoked partition dropped (its new owner redoes them): %s", exc)

    async def _send_all(self, outputs: Sequence[Output]) -> None:
        for output in outputs:
            if output.route == "broadcast":
                await self._broadcast(output)
                continue
            if output.route == "resolve":
                if self.submit_resolve is None:
                    raise RuntimeError(f"{self.agent} has no resolve stage to submit to")
                self.submit_resolve(output.value)
                continue
            topic = self._topic(output)
            await publish(self.app, topic, output.key.encode(), output.value)
            self.metrics.event_out(self.agent, topic)
            if output.status is not None:
                self.metrics.decision(output.status)
                if output.status == "filled" and output.campaign_id is not None:
                    self.metrics.spent(output.campaign_id, output.spend_micros)
                if output.event_time_ms:
                    age_s = time.time() - output.event_time_ms / 1000
                    self.metrics.observe_decision_latency(max(age_s, 0.0))


async def dead_letter(
    app: XspApp, event: EventT, stage: str, reason: str, *, original: bytes | None = None
) -> None:
    """Send the event's original bytes to the DLQ with the reason and where it came from.

    ``original`` replaces the message's bytes when only part of it is dead
    (one item of a batch message); the source topic, partition and offset
    still name the message.
    """
    if app.xsp_settings.replay_mode:
        return
    message: Any = event.message
    letter = DeadLetter.of(message, stage=stage, reason=reason, dead_at=int(time.time() * 1000))
    if original is not None:
        letter = dataclasses.replace(letter, original=original)
    log.info(
        "dead-lettered %s:%d@%d (%s): %s",
        message.topic,
        message.partition,
        message.offset,
        stage,
        reason,
        extra={"request_id": _request_id(message.value)},
    )
    await publish(app, app.xsp_topics.names.dlq, message.key, encode(letter))
    app.xsp_metrics.dead_letter(stage)
