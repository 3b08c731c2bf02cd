"""streams.faust_transactions.drain: a commit waits for the outputs buffered before it, only.

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
    """What ``drain`` needs of xsp's producer: its buffer and a flush of aiokafka's batches."""

    def __init__(self, buffer: ProducerBuffer, handed_over: list[str]) -> None:
        self.buffer = buffer
        self.handed_over = handed_over
        self.flushed_with: list[list[str]] = []

    async def flush_handed_over(self) -> None:
        self.flushed_with.append(list(self.handed_over))


def _buffer() -> ProducerBuffer:
    buffer = ProducerBuffer()
    buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))  # type: ignore[assignment]
    return buffer


def _put(buffer: ProducerBuffer, channel: _SlowChannel, value: str) -> None:
    buffer.put(SimpleNamespace(message=SimpleNamespace(channel=channel, value=value)))  # type: ignore[arg-type]


def test_drain_waits_for_a_popped_message_still_on_its_way_to_aiokafka() -> None:
    async def scenario() -> list[list[str]]:
        handed_over: list[str] = []
        buffer = _buffer()
        producer = _Producer(buffer, handed_over)
        await buffer.start()
        try:
            channel = _SlowChannel(handed_over, turns=5)
            for value in ("changelog-row", "changelog-record"):
                _put(buffer, channel, value)
            await drain(producer)
        finally:
            await buffer.stop()
        return producer.flushed_with

    flushed_with = asyncio.run(scenario())
    # aiokafka's flush (after which the transaction or offset commits) saw both.
    assert flushed_with == [["changelog-row", "changelog-record"]]


def test_drain_returns_while_sends_go_on_after_it_began() -> None:
    """A sustained burst keeps the buffer full; the commit must not wait for it to empty."""

    async def scenario() -> tuple[list[list[str]], int]:
        handed_over: list[str] = []
        buffer = _buffer()
        producer = _Producer(buffer, handed_over)
        channel = _SlowChannel(handed_over, turns=3)
        stop = asyncio.Event()

        async def burst() -> None:
            # An agent that puts a new message after every hand-over, forever.
            n = 0
            while not stop.is_set():
                _put(buffer, channel, f"later-{n}")
                n += 1
                await asyncio.sleep(0)

        await buffer.start()
        for value in ("before-1", "before-2"):
            _put(buffer, channel, value)
        sender = asyncio.create_task(burst())
        try:
            await asyncio.wait_for(drain(producer), timeout=5)
        finally:
            stop.set()
            await sender
            left = buffer.size
            while not buffer.pending.empty():  # stopping a buffer flushes what it holds
                buffer.pending.get_nowait()
            await buffer.stop()
        return producer.flushed_with, left

    flushed_with, left_in_buffer = asyncio.run(scenario())
    assert len(flushed_with) == 1
    assert flushed_with[0][:2] == ["before-1", "before-2"]
    assert left_in_buffer > 0  # the drain really returned with the burst still buffered


def test_drain_refuses_when_the_buffer_has_stopped_with_messages_in_it() -> None:
    """Nobody will send them: the commit must fail rather than wait forever or pass them."""

    async def scenario() -> str:
        handed_over: list[str] = []
        buffer = _buffer()
        producer = _Producer(buffer, handed_over)
        await buffer.start()
        await buffer.stop()
        _put(buffer, _SlowChannel(handed_over, turns=1), "never-sent")
        try:
            await asyncio.wait_for(drain(producer), timeout=5)
        except RuntimeError as exc:
            return str(exc)
        return "drained"

    assert asyncio.run(scenario()) == "cannot drain: the producer buffer has stopped"
