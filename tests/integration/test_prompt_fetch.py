"""prompt_fetches: untaken records hold back a broker's next fetch only for the fetch wait.

Checked on a real broker through the state aiokafka's fetcher keeps for the
records it fetched and the application did not take yet: that state says
how long the next fetch to their broker is held back. (A latency assertion
would be a timed test; the measured effect is in streams/prompt_fetch.py.)
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.kafka_io import create_topics
from streams.prompt_fetch import prompt_fetches

pytestmark = pytest.mark.kafka

FETCH_WAIT_MS = 10


async def _untaken_hold_s(bootstrap: str, topic: str, prompt: bool) -> float:
    """Fetch records of both partitions, take only partition 1's; return partition 0's hold."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=FETCH_WAIT_MS
    )
    await producer.start()
    await consumer.start()
    try:
        if prompt:
            prompt_fetches(consumer)
        tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
        consumer.assign([tp0, tp1])
        await consumer.seek_to_beginning(tp0, tp1)
        for partition in (0, 1):
            await producer.send_and_wait(topic, b"x", partition=partition)
        fetcher = consumer._fetcher
        for _ in range(100):
            if tp0 in fetcher._records:
                break
            await consumer.getmany(tp1, timeout_ms=100)  # takes partition 1 only
        else:
            raise AssertionError("partition 0's record was never fetched")
        return float(fetcher._records[tp0]._backoff)
    finally:
        await consumer.stop()
        await producer.stop()


def test_untaken_records_hold_fetches_only_for_the_fetch_wait(
    kafka_bootstrap: str, unique: str
) -> None:
    topic = f"{unique}.prompt"
    asyncio.run(create_topics(kafka_bootstrap, [topic], partitions=2))

    default = asyncio.run(_untaken_hold_s(kafka_bootstrap, topic, prompt=False))
    prompt = asyncio.run(_untaken_hold_s(kafka_bootstrap, topic, prompt=True))

    assert default == pytest.approx(0.1)  # aiokafka's own pause, which the fix bounds
    assert prompt == pytest.approx(FETCH_WAIT_MS / 1000)


def test_an_unstarted_consumer_is_refused() -> None:
    async def unstarted() -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9")
        try:
            prompt_fetches(consumer)
        finally:
            await consumer.stop()

    with pytest.raises(RuntimeError, match="started consumer"):
        asyncio.run(unstarted())
