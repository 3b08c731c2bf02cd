"""Small aiokafka helpers shared by the CLI, the demo and the tests.

They are deliberately plain: create topics, produce a batch, read a topic
from the beginning until a count or a deadline. The worker itself never uses
them (Faust owns its consumers and producers).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from streams.topics import TopicNames

__all__ = ["ReadMessage", "at_end", "create_topics", "create_xsp_topics", "produce", "read_topic"]


@dataclass(frozen=True, slots=True)
class ReadMessage:
    """One record read back from a topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int


async def create_topics(
    bootstrap: str, names: Iterable[str], *, partitions: int, compacted: set[str] | None = None
) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    compacted = compacted or set()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(
                name,
                num_partitions=partitions,
                replication_factor=1,
                topic_configs={"cleanup.policy": "compact"} if name in compacted else {},
            )
            for name in names
            if name not in existing
        ]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(wanted)
            await _wait_for_leaders(admin, [topic.name for topic in wanted])
        return [topic.name for topic in wanted]
    finally:
        await admin.close()


async def create_xsp_topics(bootstrap: str, names: TopicNames, *, partitions: int) -> list[str]:
    """Create every topic of the topology (campaigns compacted)."""
    return await create_topics(
        bootstrap, names.all(), partitions=partitions, compacted=names.compacted()
    )


async def _wait_for_leaders(
    admin: AIOKafkaAdminClient, names: list[str], timeout_s: float = 30.0
) -> None:
    """Return once every partition of ``names`` has a leader (producers then get no retries)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        described = await admin.describe_topics(names)
        if all(
            t.get("error_code", 0) == 0
            and t.get("partitions")
            and all(p.get("leader", -1) >= 0 for p in t["partitions"])
            for t in described
        ):
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"topics {names} have no leader after {timeout_s:.0f} s")


async def produce(
    bootstrap: str, topic: str, items: Sequence[tuple[bytes | None, bytes | None]]
) -> None:
    """Send ``(key, value)`` pairs to ``topic`` and wait until the broker acknowledged all."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, key=key, value=value) for key, value in items]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    expected: int | None = None,
    timeout_s: float = 30.0,
    isolation_level: str = "read_uncommitted",
) -> list[ReadMessage]:
    """Read ``topic`` from the beginning (no consumer group).

    Returns once ``expected`` messages were read, or when ``timeout_s``
    passed; with ``expected=None`` it reads up to the end offsets seen at the
    start, waiting at most ``timeout_s``.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level=isolation_level,
        fetch_max_wait_ms=50,
    )
    await consumer.start()
    try:
        partitions = await _partitions_of(consumer, topic, timeout_s)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions) if expected is None else {}
        messages: list[ReadMessage] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if expected is not None and len(messages) >= expected:
                break
            if expected is None and await at_end(consumer, ends):
                break
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                messages.extend(
                    ReadMessage(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp)
                    for r in records
                )
        return messages
    finally:
        await consumer.stop()


async def at_end(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    """True once ``consumer``'s position reached ``ends`` on every partition."""
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True


async def _partitions_of(
    consumer: AIOKafkaConsumer, topic: str, timeout_s: float
) -> list[TopicPartition]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = consumer.partitions_for_topic(topic)
        if found:
            return [TopicPartition(topic, p) for p in sorted(found)]
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {topic!r} does not exist")
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.2)
