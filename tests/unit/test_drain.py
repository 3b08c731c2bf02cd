"""streams.faust_transactions.drain: a commit waits for every buffered output to reach aiokafka.

Faust's real ``ProducerBuffer`` runs here; only the hand-over to aiokafka is
a stand-in that takes several loop turns, as it does on a loaded worker.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from faust.transport.producer import ProducerBuffer

from streams.faust_transactions import drain


class _SlowChannel:
    """Hands a message over after ``turns`` loop turns and records it."""

    def __init__(self, handed_over: list[str], turns: int) -> None:
        self.handed_over = handed_over
        self.turns = turns

    async def publish_message(self, fut: Any, wait: bool = False) -> None:
        for _ in range(self.turns):
            await asyncio.sleep(0)
        self.handed_over.append(fut.message.value)


class _Producer:
    """What ``drain`` needs of Faust's producer: its buffer and a flush of aiokafka's batches."""

    def __init__(self, buffer: ProducerBuffer, handed_over: list[str]) -> None:
        self.buffer = buffer
        self.handed_over = handed_over
        self.flushed_with: list[list[str]] = []

    async def flush(self) -> None:
        self.flushed_with.append(list(self.handed_over))


def test_drain_waits_for_a_popped_message_still_on_its_way_to_aiokafka() -> None:
    async def scenario() -> list[list[str]]:
        handed_over: list[str] = []
        buffer = ProducerBuffer()
        buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))  # type: ignore[assignment]
        producer = _Producer(buffer, handed_over)
        await buffer.start()
        try:
            channel = _SlowChannel(handed_over, turns=5)
            for value in ("changelog-row", "changelog-record"):
                buffer.put(SimpleNamespace(message=SimpleNamespace(channel=channel, value=value)))  # type: ignore[arg-type]
            await drain(producer)
        finally:
            await buffer.stop()
        return producer.flushed_with

    flushed_with = asyncio.run(scenario())
    # aiokafka's flush (after which the transaction or offset commits) saw both.
    assert flushed_with == [["changelog-row", "changelog-record"]]
