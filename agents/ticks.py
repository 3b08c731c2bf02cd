"""ticks: a clock for idle partitions, written into the stages' own input topics.

Every ``XSP_TICK_INTERVAL_S`` each worker sends a Tick to every partition of
``budget-requests`` (so reservations of campaigns with no traffic still
expire and their requests get a ``timeout`` decision) and, first and then once a
minute, a pruning Tick to every partition of ``budget-requests`` and ``ad-requests``
(so outcome records older than the dedupe horizon are forgotten). Ticks
travel through Kafka rather than being handled in the timer because a table
may only be written while processing an event of its partition; and because
they are in the topic, a replay sees them too.

Ticks go through a plain aiokafka producer of their own, not Faust's: under
``exactly_once`` Faust only has transactional producers for the partitions a
worker is processing, and a send from a timer (no current event) failed with
``ProducerSendError: No transaction producer found`` and stopped the worker.
A tick is not part of any transaction: read-committed consumers see it at
once, and a duplicate or lost tick changes nothing but timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from streams.app import XspApp
from streams.records import Tick, encode
from streams.topics import TopicNames

__all__ = ["register"]

log = logging.getLogger(__name__)
PRUNE_EVERY_S = 60.0


def register(app: XspApp) -> None:
    """Run the tick clock (with its own producer) for the lifetime of ``app``'s worker."""
    settings = app.xsp_settings
    names = app.xsp_topics.names

    @app.task
    async def ticks() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5)
        await producer.start()
        # The first tick prunes: a pruning tick reads a partition's records only
        # until it knows their oldest (streams/record_floor.py), and that first read
        # is cheapest now, before traffic, instead of a minute into it.
        last_prune = time.monotonic() - PRUNE_EVERY_S
        try:
            while True:
                await asyncio.sleep(settings.tick_interval_s)
                prune = time.monotonic() - last_prune >= PRUNE_EVERY_S
                if prune:
                    last_prune = time.monotonic()
                await _send_ticks(producer, names, settings.partitions, prune)
        finally:
            with contextlib.suppress(KafkaError, asyncio.CancelledError):
                await producer.stop()


async def _send_ticks(
    producer: AIOKafkaProducer, names: TopicNames, partitions: int, prune: bool
) -> None:
    value = encode(Tick(timestamp=int(time.time() * 1000), prune=prune))
    targets = [names.budget_requests] + ([names.ad_requests] if prune else [])
    try:
        sent = [
            await producer.send(topic, value=value, partition=partition)
            for topic in targets
            for partition in range(partitions)
        ]
        for delivery in sent:
            await delivery
    except KafkaError as exc:  # a missed tick only delays expiry; the next one comes
        log.warning("tick not sent: %s", exc)
