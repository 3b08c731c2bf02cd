"""Faust's aiokafka transport: configurable fetch wait, and exactly-once that survives re-keying.

faust-streaming hard-codes ``fetch_max_wait_ms=1500`` for worker consumers.
On a lightly loaded topic every hop then waits up to 1.5 s for a fetch to
fill, so a three-stage chain took seconds per request. We keep Faust's
consumer as it is and only lower that one number after it is built
(``XSP_CONSUMER_FETCH_MAX_WAIT_MS``, default 10 ms, read from the app's
``xsp_settings``).

Exactly-once: faust-streaming 0.15.3 picks the transactional producer of a
send by the *destination* partition (``{app}-{group}-{partition}``), and a
worker only has producers for partitions assigned to it. Every re-keyed send
(admit -> budget by campaign, budget -> ad-requests by user) to a partition
owned by another worker then failed with ``ProducerSendError: No transaction
producer found`` and crashed the agent: with two workers the chaos test got
29 decisions out of 20,000; with one worker, all 20,000. And sends to topics
outside Faust's groups (reply topics, resolve-requests, the DLQ) went out of
any transaction. ``_SourceTransactions`` uses the Kafka Streams rule instead:
everything sent while processing an event goes into the transaction of the
event's *source* partition, the one that also commits that event's offset,
so outputs and offset commit together or not at all. Sends outside an event
(Faust's changelog buffer, which is co-partitioned with the source) keep
Faust's rule when this worker owns the destination, else go out plain.
"""

from __future__ import annotations

from typing import Any, ClassVar

import aiokafka
from faust.streams import current_event
from faust.transport.consumer import TransactionManager
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import RecordMetadata

__all__ = ["Transport"]

_FAUST_DEFAULT_FETCH_MAX_WAIT_MS = 1500


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
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


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _SourceTransactions(TransactionManager):
    """Exactly-once with one transaction per *source* partition (see the module docstring)."""

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
        elif destination is not None:
            transaction = self._transaction_of(TP(topic, destination))
            if transaction not in self.producer._transaction_producers:  # type: ignore[attr-defined]
                transaction = None
        else:
            transaction = None
        sent: RecordMetadata = await self.producer.send(
            topic, key, value, destination, timestamp, headers, transactional_id=transaction
        )
        return sent


class Transport(faust_aiokafka.Transport):
    """The aiokafka transport: short fetch wait, source-partition transactions."""

    Consumer: ClassVar[Any] = _Consumer
    TransactionManager: ClassVar[Any] = _SourceTransactions
