"""Kafka transactions work on the broker the tests use (needed for exactly-once later)."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer

from streams.kafka_io import create_topics, read_topic


def test_read_committed_sees_committed_not_aborted(kafka_bootstrap: str, unique: str) -> None:
    topic = f"tx-{unique}"

    async def scenario() -> tuple[list[bytes | None], list[bytes | None]]:
        await create_topics(kafka_bootstrap, [topic], partitions=1)
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka_bootstrap, transactional_id=f"tx-{unique}"
        )
        await producer.start()
        try:
            async with producer.transaction():
                await producer.send_and_wait(topic, b"committed-1")
                await producer.send_and_wait(topic, b"committed-2")
            await producer.begin_transaction()
            await producer.send_and_wait(topic, b"aborted")
            await producer.abort_transaction()
            async with producer.transaction():
                await producer.send_and_wait(topic, b"committed-3")
        finally:
            await producer.stop()
        committed = await read_topic(
            kafka_bootstrap, topic, isolation_level="read_committed", timeout_s=10
        )
        everything = await read_topic(
            kafka_bootstrap, topic, isolation_level="read_uncommitted", timeout_s=10
        )
        return [m.value for m in committed], [m.value for m in everything]

    committed, everything = asyncio.run(scenario())
    assert committed == [b"committed-1", b"committed-2", b"committed-3"]
    # The aborted record is in the log; only read_committed hides it.
    assert b"aborted" in everything
