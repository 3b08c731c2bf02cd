"""Faust's aiokafka transport: fetch wait, a commit rule without holes, re-keyed exactly-once.

faust-streaming hard-codes ``fetch_max_wait_ms=1500`` for worker consumers.
On a lightly loaded topic every hop then waits up to 1.5 s for a fetch to
fill, so a three-stage chain took seconds per request. We keep Faust's
consumer as it is and only lower that one number after it is built
(``XSP_CONSUMER_FETCH_MAX_WAIT_MS``, default 10 ms, read from the app's
``xsp_settings``).

Commits: Faust's rule commits past a one-message hole, its streams ack the
messages they skip when a rebalance starts, and it may commit offsets whose
outputs are still in its producer buffer. ``_Consumer`` commits only
contiguous processed offsets, refuses those acks and drains the producer
before each commit (``streams/commit_watch.py`` explains, with the numbers).
Offsets that hold no record (transaction markers, aborted or compacted
records), which a commit may pass, are read from how far aiokafka moves each
position during a fetch, not from Faust's fetch loop (``record_absent``).

Exactly-once: ``streams/faust_transactions.py`` (which transaction a send
joins, when transactions end, and what a lost one does to the worker).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from typing import Any, ClassVar

import aiokafka
from aiokafka.consumer import fetcher as fetcher_module
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import Message

from streams.commit_watch import commit_offset
from streams.faust_transactions import SourceTransactions, drain
from streams.prompt_fetch import prompt_fetches

__all__ = ["Transport"]

_FAUST_DEFAULT_FETCH_MAX_WAIT_MS = 1500


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer "thread", run as tasks on the worker's own event loop.

    faust-streaming drives aiokafka from a second OS thread with its own
    loop: every fetch, commit and position call crosses threads through a
    two-worker method queue, and both threads take turns on the GIL. Here
    the thread's loop *is* the worker's loop and ``call_thread`` simply
    awaits the call, so a fetched record reaches its agent in the same loop
    turn (see README, "Benchmarks", for what it moved).
    """

    def __init__(self, consumer: Any, **kwargs: Any) -> None:
        loop = kwargs.get("loop") or asyncio.get_event_loop()
        super().__init__(consumer, thread_loop=loop, **kwargs)
        # The loop keeps only a weak reference to a task: this one must outlive start().
        self._serving: asyncio.Future[None] | None = None

    async def start(self) -> None:
        # mode.ServiceThread.start runs _serve() in a new thread; here it is a task.
        assert not self._thread_started.is_set()
        self._thread_started.set()
        self._thread_running = self.parent_loop.create_future()
        try:
            self._serving = asyncio.ensure_future(self._serve())
            await self._thread_running
        finally:
            self._thread_running = None

    async def on_start(self) -> None:
        await super().on_start()
        prompt_fetches(self._ensure_consumer())

    async def _gather_remaining_tasks(self) -> None:
        # mode cancels every task left on the thread's loop when the thread
        # ends; that loop is the worker's, whose tasks are not ours to cancel.
        return

    async def call_thread(self, fun: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        result = fun(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _fetch_records(
        self,
        consumer: aiokafka.AIOKafkaConsumer,
        active_partitions: Any,
        timeout: float | None = None,
        max_records: int | None = None,
    ) -> Any:
        # The offsets aiokafka moved past without returning a record (markers,
        # aborted or compacted records) are facts about the log: collect them
        # while it hands out this batch (no await between its drain and here).
        spans: dict[Any, list[int]] = {}
        token = _position_moves.set(spans)
        try:
            records = await super()._fetch_records(
                consumer, active_partitions, timeout=timeout, max_records=max_records
            )
        finally:
            _position_moves.reset(token)
        for tp, (before, after) in spans.items():
            returned = records.get(tp, ())
            if after - before == len(returned):
                continue  # every offset moved past was handed out: nothing absent
            offsets = [record.offset for record in returned]
            for start, end in absent_offsets(before, after, offsets):
                self.consumer.record_absent(tp, start, end)
        return records

    async def _highwaters(self, partitions: Any) -> Any:
        # Under exactly-once Faust asks aiokafka for ``last_stable_offset``, which
        # aiokafka only knows from a fetch response: for a changelog partition not
        # fetched yet in this assignment it is None, which Faust's recovery takes
        # as an empty changelog (highwater -1). A worker that had already read
        # that changelog then crashed with ``ConsistencyError`` ("persisted
        # offset ... higher than ... highwater (2341 > -1)"), 1 to 3 workers per
        # exactly-once chaos run; a fresh one would have skipped restoring it.
        # ``end_offsets`` asks the broker, at the consumer's isolation level (the
        # last stable offset under read-committed).
        return await self._ensure_consumer().end_offsets(list(partitions))

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this attribute when it builds its Fetcher in start().
        settings = getattr(self.app, "xsp_settings", None)
        consumer._fetch_max_wait_ms = (
            settings.consumer_fetch_max_wait_ms
            if settings is not None
            else _FAUST_DEFAULT_FETCH_MAX_WAIT_MS
        )
        return consumer


class _UnreportedReadOffsets(dict[TP, int | None]):
    """Faust's per-partition read offsets, kept but never reported to its fetch loop.

    Faust's fetch loop drops a fetched message whose offset is below the
    partition's read offset ("DROPPED MESSAGE ROFF"), and it records a
    message as read once its hand-over to the streams *ended*, also when a
    rebalance stopping the flow cancelled the hand-over. A message whose
    hand-over was cancelled, fetched again after the seek back to the
    committed offset, was then dropped once more whenever the read offset was
    recorded after that seek. In a chaos run a commit guard diagnostic listed
    38 offsets of one partition each fetched twice and never acked or
    refused, while every later offset was processed; the guard's rebalances
    (3-10 per exactly-once run) were what re-read such holes. With no read
    offset reported every fetched message reaches the streams: the guard
    fired once in 12 chaos runs since. A message is read twice only after a
    seek back, which Faust's own seeks already allow, and every handler is
    idempotent.
    """

    def __getitem__(self, tp: TP) -> None:
        return None


class _Consumer(faust_aiokafka.Consumer):
    """Faust's consumer with a commit rule that never commits past an unprocessed message."""

    _revoking = False  # between the start of a revocation and the next assignment

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_offset = _UnreportedReadOffsets()

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def perform_seek(self) -> None:
        # Faust seeks here after every rebalance, and also whenever it drops a
        # fetch made while its flow was stopped. aiokafka's ``seek_to_committed``
        # does not seek a partition whose group has no commit (or commits 0),
        # and Faust then left its committed offset unknown and committed from
        # the lowest processed offset, whatever lay below it (4,086 requests of
        # one partition in a rocksdb chaos run). Taking "where the consumer
        # stands" as the start was no better: a dropped fetch has already moved
        # the position, so the first offsets of a partition nobody had
        # committed yet were never processed (chaos runs lost requests at
        # offsets 0-5 while admit's commit reached the log end). So every
        # source partition ends at its committed offset, as the method
        # promises: the group's commit, else the start this consumer already
        # fixed for it, else the log start (the app's reset policy).
        await super().perform_seek()
        acks_enabled_for = self.app.topics.acks_enabled_for
        sources = [tp for tp in self.assignment() if acks_enabled_for(tp.topic)]
        unknown = [tp for tp in sources if self._committed_offset.get(tp) is None]
        if unknown:
            self._committed_offset.update(await self._reset_offsets(unknown))
        for tp in sources:
            start = self._committed_offset[tp]
            if await self.position(tp) != start:
                await self.seek(tp, start)

    async def _reset_offsets(self, partitions: list[TP]) -> dict[TP, int]:
        """Where a group without a commit starts reading each partition: the log start.

        xsp's app resets to "earliest" (``streams/app.py``): a request sent
        before its group's first commit is still a request to answer.
        """
        offsets = await self.earliest_offsets(*partitions)
        return {TP(tp.topic, tp.partition): offset for tp, offset in offsets.items()}

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # Faust forgets the revoked partitions' committed offsets first and
        # stops the flow only later: an ack in between was recorded against
        # "never committed", and the revocation's own commit then passed
        # every offset below it (7 requests lost in one chaos run).
        self._revoking = True
        if self.in_transaction:
            # Commit the processed offsets with their transactions while Faust
            # still knows them (it forgets them next); see faust_transactions.
            await self.commit()
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Any, generation_id: int = 0) -> None:
        self._revoking = False  # the flow stays stopped until recovery has sought
        await super().on_partitions_assigned(assigned, generation_id)

    def ack(self, message: Message) -> bool:
        # A stream acks the messages it skips when a rebalance starts (flow
        # stopped, or fetched in the previous generation) although it never
        # processed them. Left unacked, they keep the commit below them and
        # Faust's recovery re-reads them from the committed offset.
        # The message still counts as done for ``wait_empty`` (which waits for
        # in-flight events before partitions are revoked), but its offset is
        # not recorded as processed.
        refused = self._ack_refusal(message)
        if refused is not None:
            message.acked = True
            self._unacked_messages.discard(message)
            metrics = getattr(self.app, "xsp_metrics", None)
            if metrics is not None:
                metrics.ack_refused(refused)
            return False
        acked: bool = super().ack(message)
        return acked

    def _ack_refusal(self, message: Message) -> str | None:
        """Why ``message`` must not count as processed (None: it may)."""
        app = self.app
        if self._revoking:
            return "revoking"
        if message.generation_id != app.consumer_generation_id:
            return "old_generation"
        if not app.flow_control.is_active():
            return "flow_stopped"
        return None

    def _new_offset(self, tp: TP) -> int | None:
        acked = self._acked[tp]
        if not acked:
            return None
        self._absorb_gaps(tp, acked)
        acked.sort()
        offset, used = commit_offset(self._committed_offset[tp], acked)
        self._acked_index[tp].difference_update(acked[:used])
        del acked[:used]
        return offset

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        # Faust reports gaps from its fetch loop's read offset, which is not a
        # fact about the log: a seek sets it to the committed offset (the next
        # record, not the last one read), so a transaction marker right at the
        # commit was never reported and every rebalance under exactly-once left
        # such a partition's commit stuck for good (the commit guard fired 15
        # times per partition in one chaos run); and a record fetched before a
        # seek can move it, so real records looked like a gap. The gaps come
        # from aiokafka's positions instead (``record_absent``).
        return

    def record_absent(self, tp: Any, offset_from: int, offset_to: int) -> None:
        """Count offsets in [offset_from, offset_to), which hold no record, as processed.

        Only for source topics whose logs really have such offsets: compacted
        ones, and every topic under exactly-once (transaction markers, aborted
        records). Clipped at the committed offset.
        """
        # Only source topics: nothing ever commits (and so trims) a changelog's gaps.
        if not self.app.topics.acks_enabled_for(tp.topic):
            return
        # Elsewhere the log has no such offsets: counting any as processed could
        # only hide a record that Faust dropped (43 requests lost in one chaos
        # run before these rules), which the commit guard has re-read instead.
        if not self._log_may_skip_offsets(tp.topic):
            return
        committed = self._committed_offset.get(tp)
        if committed is not None:
            offset_from = max(offset_from, committed)
        if offset_from < offset_to:
            gaps = self._gap[TP(tp.topic, tp.partition)]
            gaps.addi(offset_from, offset_to)
            gaps.merge_overlaps()

    def _log_may_skip_offsets(self, topic: str) -> bool:
        settings = getattr(self.app, "xsp_settings", None)
        if settings is None or settings.exactly_once:
            return True
        compacted: set[str] = self.app.xsp_topics.names.compacted()  # type: ignore[attr-defined]
        return topic in compacted

    def _absorb_gaps(self, tp: TP, acked: list[int]) -> None:
        """Count offsets the log does not hold (compaction, transaction markers) as processed.

        Only those at or just above the processed offsets: a gap further up
        waits until the messages below it are processed.
        """
        gaps = self._gap[tp]
        if not gaps:
            return
        top = max(acked) + 1
        absent = sorted(gaps.overlap(0, top + 1), key=lambda interval: interval.begin)
        if absent:
            for interval in absent:
                acked.extend(range(interval.begin, interval.end))
            gaps.chop(0, max(top, absent[-1].end))


class _Producer(faust_aiokafka.Producer):
    async def flush(self) -> None:
        """Every message handed over before the call is acked (``drain``).

        Faust flushes before each offset commit and on revocation. Its flush
        gives up on the buffer after 0.1 s without a send: under load the
        outputs of processed messages could still sit in the buffer when
        their offsets were committed, and a SIGKILL then lost them (43
        requests in one chaos run). And while sends go on it waits for an
        empty buffer, which a sustained burst never leaves (commits 10-18 s).
        """
        await drain(self)

    async def flush_handed_over(self) -> None:
        """Wait for the batches aiokafka holds now (what Faust's flush does after the buffer)."""
        if self._producer is not None:
            await self._producer.flush()
        for transaction_producer in self._transaction_producers.values():
            await transaction_producer.flush()


class Transport(faust_aiokafka.Transport):
    """The aiokafka transport: short fetch wait, source-partition transactions."""

    Consumer: ClassVar[Any] = _Consumer
    Producer: ClassVar[Any] = _Producer
    TransactionManager: ClassVar[Any] = SourceTransactions


# Per fetch of Faust's consumer: topic-partition -> [position before, after].
_position_moves: ContextVar[dict[Any, list[int]] | None] = ContextVar(
    "xsp_position_moves", default=None
)


def _track_position_moves() -> None:
    """Make aiokafka report, inside a fetch of Faust's consumer, how far each position moved.

    aiokafka hands out a partition's fetched records and then moves its
    position to the fetch's next offset, past any transaction markers,
    aborted records and compacted-away offsets it skipped. The move and the
    records returned together say exactly which offsets hold no record.
    Other consumers in the process (the campaign directory's) run outside such a
    fetch and are not tracked. Reads aiokafka's ``FetchResult`` internals,
    pinned with the rest.
    """
    original = fetcher_module.FetchResult._update_position
    if getattr(original, "xsp_tracked", False):
        return

    def update_position(self: Any) -> None:
        moves = _position_moves.get()
        if moves is not None and self._partition_records is not None:
            state = self._assignment.state_value(self._topic_partition)
            after = self._partition_records.next_fetch_offset
            move = moves.setdefault(self._topic_partition, [state.position, after])
            move[1] = after
        original(self)

    update_position.xsp_tracked = True  # type: ignore[attr-defined]
    fetcher_module.FetchResult._update_position = update_position  # type: ignore[method-assign]


def absent_offsets(before: int, after: int, offsets: Iterable[int]) -> list[tuple[int, int]]:
    """The runs of [before, after) that are not in ``offsets`` (records returned), as
    half-open intervals in order."""
    runs = []
    expected = before
    for offset in sorted(offsets):
        if offset > expected:
            runs.append((expected, offset))
        expected = max(expected, offset + 1)
    if after > expected:
        runs.append((expected, after))
    return runs


_track_position_moves()
