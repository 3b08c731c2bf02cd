"""Exactly-once transactions end at a rebalance, and a lost one stops the worker.

faust-streaming commits a partition's transaction only with its next offset
commit, so a transaction stayed open across every rebalance and through the
recovery after it; and when the broker fenced a worker's producer, Faust
went on with table rows that the aborted transaction had written. See
``streams/faust_transactions.py``. Both tests run a real Faust app in this
process against the real broker, with periodic commits off.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from streams.faust_transactions import TransactionLost
from streams.kafka_io import read_topic
from streams.settings import Settings
from tests.integration.inprocess_app import InProcessApp, running_app, send, until


async def _outputs(settings: Settings, running: InProcessApp) -> list[bytes | None]:
    assert running.output is not None
    committed = await read_topic(
        settings.bootstrap_servers, running.output, isolation_level="read_committed", timeout_s=5
    )
    return [message.value for message in committed]


async def _committed_offset(settings: Settings, running: InProcessApp) -> int | None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(settings.app_id)
    finally:
        await admin.close()
    for tp, meta in offsets.items():
        if tp.topic == running.source and tp.partition == 0 and meta.offset >= 0:
            return int(meta.offset)
    return None


async def _rebalance_commits_the_open_transaction(settings: Settings) -> None:
    async with running_app(settings, forward=True) as running:
        app = running.app
        await send(settings, running.source, [b"first"])
        await until(lambda: 0 in app.consumer._acked_index[running.tp], 60, "the first ack")
        assert await _outputs(settings, running) == [], "visible before any commit: nothing tested"
        generation = app.consumer_generation_id
        app.consumer._thread._consumer._coordinator.request_rejoin()
        await until(lambda: app.consumer_generation_id > generation, 30, "the rebalance")
        assert await _outputs(settings, running) == [b"first"]
        assert await _committed_offset(settings, running) == 1


async def _fenced_transaction_stops_the_worker(settings: Settings) -> None:
    async with running_app(settings, forward=True) as running:
        app = running.app
        await send(settings, running.source, [b"first"])
        await until(lambda: 0 in app.consumer._acked_index[running.tp], 60, "the first ack")
        await app.consumer.commit()
        assert await _outputs(settings, running) == [b"first"]
        await send(settings, running.source, [b"second"])
        await until(lambda: running.processed == [0, 1], 30, "the second record")
        # A newer producer with the worker's transactional id: what the next owner of
        # the partition does after a rebalance, and what the broker does on a timeout.
        transaction = app.consumer.transactions._transaction_of(running.tp)
        fencer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers, transactional_id=transaction
        )
        await fencer.start()
        await fencer.stop()
        with pytest.raises(TransactionLost, match=str(transaction)):
            await app.consumer.commit()
        assert isinstance(app._crash_reason, TransactionLost), "the worker was not stopped"
        assert await _outputs(settings, running) == [b"first"]
        assert await _committed_offset(settings, running) == 1


def test_a_rebalance_commits_the_open_transaction(xsp_settings: Settings) -> None:
    settings = xsp_settings.with_overrides(processing_guarantee="exactly_once")
    asyncio.run(_rebalance_commits_the_open_transaction(settings))


def test_a_fenced_transaction_stops_the_worker(xsp_settings: Settings) -> None:
    settings = xsp_settings.with_overrides(processing_guarantee="exactly_once")
    asyncio.run(_fenced_transaction_stops_the_worker(settings))
