"""A real Faust app in the test's own process, on one fresh single-partition source topic.

For tests that must reach into Faust's consumer or transactions (stop its
flow, fence its producer, ask for a rebalance) while it talks to the real
broker. Its agent records the offset of every event it processes and, if
asked, forwards the event's value to an output topic while processing it,
or takes its events in batches with ``Stream.take_ready``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import cast

from faust.types import TP

from streams.app import XspApp, create_app
from streams.faust_stream import Stream
from streams.kafka_io import create_topics, create_xsp_topics, produce
from streams.settings import Settings
from streams.topics import TopicNames

__all__ = ["InProcessApp", "running_app", "send", "until"]


async def until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Return once ``condition()`` holds; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class InProcessApp:
    app: XspApp
    source: str
    output: str | None
    processed: list[int] = field(default_factory=list)
    # take_ready only: the offsets of each batch, and of any event found
    # already acked while its batch was being handled.
    batches: list[list[int]] = field(default_factory=list)
    acked_while_handled: list[int] = field(default_factory=list)
    # take_ready only: a batch's handling ends once this is set.
    release: asyncio.Event = field(default_factory=asyncio.Event)
    stream: Stream | None = None

    @property
    def tp(self) -> TP:
        return TP(self.source, 0)


@contextlib.asynccontextmanager
async def running_app(
    settings: Settings,
    *,
    forward: bool = False,
    take_ready: tuple[int, float] | None = None,
) -> AsyncIterator[InProcessApp]:
    """Yields once the source partition is assigned. The app never commits on its own
    (commit interval one hour): the test decides when. ``take_ready`` (max events,
    window seconds) makes the agent take batches and hold each until ``release``."""
    source = f"{settings.topic_prefix}inprocess-source"
    output = f"{settings.topic_prefix}inprocess-output" if forward else None
    await create_xsp_topics(
        settings.bootstrap_servers, TopicNames.from_prefix(settings.topic_prefix), partitions=1
    )
    await create_topics(
        settings.bootstrap_servers, [source, *([output] if output else [])], partitions=1
    )
    app = create_app(settings.with_overrides(partitions=1), register_agents=False)
    app.conf.broker_commit_interval = 3600.0
    # Faust runs transactions only inside a worker (``App.in_transaction``).
    app.in_worker = True
    topic = app.topic(source, key_serializer="raw", value_serializer="raw", partitions=1)
    out = (
        app.topic(output, key_serializer="raw", value_serializer="raw", partitions=1)
        if output
        else None
    )
    running = InProcessApp(app=app, source=source, output=output)
    running.release.set()

    async def record_batches(stream: Stream, max_events: int, window_s: float) -> None:
        running.stream = stream
        async for events in stream.take_ready(max_events, window_s):
            offsets = [event.message.offset for event in events]
            running.batches.append(offsets)
            await running.release.wait()
            running.acked_while_handled += [e.message.offset for e in events if e.message.acked]
            running.processed += offsets

    @app.agent(topic)
    async def record_offsets(stream):  # type: ignore[no-untyped-def]
        if take_ready is not None:
            await record_batches(cast(Stream, stream), *take_ready)
            return
        async for event in stream.events():
            if out is not None:
                await out.send(value=event.message.value)
            running.processed.append(event.message.offset)

    await app.start()
    try:
        await until(lambda: running.tp in app.consumer.assignment(), 60, "the assignment")
        yield running
    finally:
        await app.stop()


async def send(settings: Settings, topic: str, values: list[bytes]) -> None:
    await produce(settings.bootstrap_servers, topic, [(None, value) for value in values])
