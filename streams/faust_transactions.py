"""Exactly-once for Faust: one transaction per source partition, none across a rebalance,
and a worker that stops when a transaction is lost.

Which transaction a send joins: faust-streaming 0.15.3 picks the
transactional producer by the *destination* partition
(``{app}-{group}-{partition}``), and a worker only has producers for
partitions assigned to it. Every re-keyed send (admit -> budget by campaign,
budget -> ad-requests by user) to a partition owned by another worker then
failed with ``ProducerSendError: No transaction producer found`` and crashed
the agent: with two workers the chaos test got 29 decisions out of 20,000;
with one worker, all 20,000. And sends to topics outside Faust's groups
(reply topics, the DLQ) went out of any transaction.
``SourceTransactions`` uses the Kafka Streams rule instead: everything sent
while processing an event goes into the transaction of the event's *source*
partition, the one that also commits that event's offset, so outputs and
offset commit together or not at all. Sends outside an event (Faust's
changelog buffer, which is co-partitioned with the source) keep Faust's rule
when this worker owns the destination, else go out plain.

When a transaction ends: Faust commits a partition's transaction only with
its next offset commit. It leaves transactions open across a rebalance (its
``begin_transaction`` on an open one only logs ``IN_TRANSACTION ->
IN_TRANSACTION``) and through the recovery that follows, which took 10-20 s
in chaos runs; a transaction open longer than the broker's
``transaction.timeout.ms`` is aborted and its producer fenced. Here the
transactions of every partition are committed when a rebalance starts: the
processed offsets first (while Faust still knows them), then, once the
agents are idle, whatever was sent after them. Messages processed in between
are read again by the partition's next owner, as under at-least-once; every
handler is idempotent by request id.

When a transaction commits: between events, never inside one
(``streams/commit_gate.py``: an event's table rows and outputs are in one
transaction or none).

When a transaction is lost: Faust swallowed a fenced producer (it logged the
fence, dropped the producer, and then warned "Commit invoked for unknown
transaction" while counting the offsets as committed) and kept running on
table rows that an aborted transaction had written: rows that exist in no
changelog. One chaos run then gave a request two different decisions. Kafka
Streams discards a task's state when its transaction is lost; here the
worker stops (``TransactionLost``), its supervisor restarts it, and recovery
rebuilds every table from the committed changelogs (a ``rocksdb://`` store
left by a crash is discarded first: ``streams.local_state``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any, NoReturn

from aiokafka.errors import KafkaError
from aiokafka.producer.transaction_manager import TransactionState
from faust.streams import current_event
from faust.transport.consumer import TransactionManager
from faust.transport.producer import ProducerBuffer
from faust.types import TP
from faust.types.tuples import RecordMetadata

__all__ = ["SourceTransactions", "TransactionLost", "drain"]

log = logging.getLogger(__name__)


class TransactionLost(RuntimeError):
    """A transaction of this worker could not commit: the worker must not go on with its state."""


async def drain(producer: Any) -> None:
    """Return once every message handed to Faust's producer before the call is acked.

    Messages handed over while the drain waits are not waited for.
    ``producer`` is xsp's (``streams.faust_transport``), whose ``flush`` is this.

    The buffer's sender pops a message before it hands it to aiokafka, and
    the hand-over can take several loop turns (a loaded worker, a metadata
    wait): a drain that only waited for an empty buffer, and then one loop
    turn, let a commit pass table writes that were still on their way. In a
    session 13 exactly-once chaos run a request's Admitted was committed
    while its two frequency-changelog writes, produced 30 ms later, went into
    the next transaction, which the SIGKILL aborted: the request was admitted
    again and got a second, different decision. Under at-least-once the same
    gap let an offset commit pass writes that a SIGKILL then lost.
    ``_count_buffer_sends`` makes the buffer count those hand-overs.

    The buffer hands messages over one at a time in the order they came, so
    the drain waits for as many hand-overs as there were messages buffered or
    on their way when it was called. Until session 17 it waited for an empty
    buffer instead; the agents refill it as fast as it empties under a
    sustained burst, and a commit then waited 10-18 s, long enough for the
    commit guard to take the partitions for stuck and ask for a rebalance
    that re-processed every message since the last commit.

    Since session 18 xsp's agents hand their table writes and outputs to
    the producer themselves (``agents/wiring.py``), so the buffer is
    normally empty; what they handed over sits in aiokafka's batches, which
    ``flush_handed_over`` waits for.
    """
    buffer = producer.buffer
    target = buffer.xsp_handed_over + buffer.size + buffer.xsp_sending
    while buffer.xsp_handed_over < target:
        if buffer.should_stop:
            # Its sender is gone: what it still holds will never be sent, and a
            # commit must not pass it (Faust's flush raised here too).
            raise RuntimeError("cannot drain: the producer buffer has stopped")
        await asyncio.sleep(0.001)
    await producer.flush_handed_over()


def _count_buffer_sends() -> None:
    """Make Faust's producer buffer count its hand-overs: those begun and those finished."""
    original = ProducerBuffer._send_pending
    if getattr(original, "xsp_counted", False):
        return

    async def send_pending(self: Any, fut: Any) -> None:
        self.xsp_sending += 1
        try:
            await original(self, fut)
        finally:
            self.xsp_sending -= 1
            self.xsp_handed_over += 1

    send_pending.xsp_counted = True  # type: ignore[attr-defined]
    # Class-level zeros: each buffer's first increment makes its own counter.
    ProducerBuffer.xsp_sending = 0  # type: ignore[attr-defined]
    ProducerBuffer.xsp_handed_over = 0  # type: ignore[attr-defined]
    ProducerBuffer._send_pending = send_pending  # type: ignore[method-assign]


_count_buffer_sends()


class SourceTransactions(TransactionManager):
    """Exactly-once with one transaction per *source* partition (see the module docstring)."""

    async def commit(self, offsets: Any, start_new_transaction: bool = True) -> bool:
        """Commit ``offsets`` with the outputs sent for them, one transaction per partition group.

        Guarantees: returns only once every transaction involved has
        committed; otherwise the worker is crashed and ``TransactionLost``
        raised, so no offset is counted as committed that is not.
        """
        by_transaction: dict[str, dict[TP, int]] = defaultdict(dict)
        for tp, offset in offsets.items():
            transaction = self._transaction_of(tp)
            if transaction is None:  # Faust commits only its groups' topics
                await self._lose(str(tp), "its topic is in no partition group")
            by_transaction[transaction][tp] = offset
        # Faust chose ``offsets`` before the gate closed, so events finished in
        # between commit whole but without their offsets; their next delivery
        # finds their rows and re-sends the same outputs (every handler is
        # idempotent by request id).
        await self._commit_between_events(by_transaction, start_new_transaction)
        return True

    async def commit_open(self) -> None:
        """Commit every transaction of this worker that holds sends, without offsets."""
        await self._commit_between_events({t: {} for t in self._producers()}, begin_next=True)

    async def _commit_between_events(
        self, by_transaction: dict[str, dict[TP, int]], begin_next: bool
    ) -> None:
        # No event may be half sent (outputs in this transaction, its table
        # rows still in the buffer for the next one): streams/commit_gate.py.
        async with self.app.xsp_commit_gate.commit():
            # Outputs still in Faust's producer buffer would miss the transaction
            # being committed and be sent after it ended ("Can't send messages
            # while not in transaction").
            await drain(self.producer)
            # Each transaction has its own producer: committing them together
            # keeps the gate closed for one round trip instead of one per partition.
            await asyncio.gather(
                *(
                    self._commit_transaction(transaction, its_offsets, begin_next)
                    for transaction, its_offsets in by_transaction.items()
                )
            )

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # Called once the agents are idle and before any producer is stopped:
        # nothing sent so far may wait in an open transaction for the next
        # owner's producer to fence and abort it.
        await self.commit_open()

    async def _start_transactions(self, tids: Any) -> None:
        # A transaction committed at the revocation has already begun its successor.
        producers = self._producers()
        for transaction in tids:
            producer = producers.get(transaction)
            if producer is None or not producer._txn_manager.is_in_transaction():
                await self.producer.maybe_begin_transaction(transaction)

    async def _commit_transaction(
        self, transaction: str, offsets: dict[TP, int], begin_next: bool
    ) -> None:
        producer = self._producers().get(transaction)
        if producer is None:
            await self._lose(transaction, "this worker has no producer for it (fenced earlier)")
        async with self.producer._trn_locks[transaction]:
            manager = producer._txn_manager
            idle = manager.state is TransactionState.READY or (
                manager.is_in_transaction() and manager.is_empty_transaction()
            )
            if idle and not offsets:
                return
            try:
                if offsets:
                    await producer.send_offsets_to_transaction(offsets, self.app.conf.id)
                await producer.commit_transaction()
                if begin_next:
                    await producer.begin_transaction()
            except KafkaError as exc:
                await self._lose(transaction, f"{type(exc).__name__}: {exc}")

    async def _lose(self, transaction: str, why: str) -> NoReturn:
        error = TransactionLost(
            f"transaction {transaction} cannot commit ({why}); stopping the worker so that its "
            "tables are rebuilt from the committed changelogs"
        )
        log.error("%s", error)
        await self.app.crash(error)
        raise error

    def _producers(self) -> dict[str, Any]:
        producers: dict[str, Any] = self.producer._transaction_producers
        return producers

    def _transaction_of(self, tp: TP) -> str | None:
        try:
            return next(iter(self._tps_to_transactional_ids({tp})), None)
        except KeyError:  # a topic outside Faust's co-partitioned groups
            return None

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
        *,
        transactional_id: str | None = None,
    ) -> Any:
        destination = self.consumer.key_partition(topic, key, partition)
        event = current_event()
        if event is not None:
            transaction = self._transaction_of(event.message.tp)
            if transaction is not None and transaction not in self._producers():
                await self._lose(transaction, "its producer was fenced")
        elif destination is not None:
            transaction = self._transaction_of(TP(topic, destination))
            if transaction not in self._producers():
                transaction = None
        else:
            transaction = None
        sent: RecordMetadata = await self.producer.send(
            topic, key, value, destination, timestamp, headers, transactional_id=transaction
        )
        return sent
