"""``Stream.take_ready`` (streams/faust_stream.py): admit's batches, on a real broker.

Faust's ``take_events`` holds every batch for its whole window, also a lone
event at an idle stream. ``take_ready`` must hand such an event over at
once; a batch that starts while events were waiting (load) gathers for its
window, at most ``max_events`` each; no event joins the batch being
handled; a batch's events are acked only after its handling.
"""

from __future__ import annotations

import asyncio

from streams.settings import Settings
from tests.integration.inprocess_app import InProcessApp, running_app, send, until


async def _hold_a_batch_while(running: InProcessApp, settings: Settings, queued: int) -> None:
    """Record 1 arrives and is held in its batch while ``queued`` more queue up behind it."""
    running.release.clear()
    await send(settings, running.source, [b"held"])
    await until(lambda: running.batches[-1] == [1], 20, "the held batch")
    await send(settings, running.source, [f"queued-{index}".encode() for index in range(queued)])
    assert running.stream is not None
    queue = running.stream.channel.queue
    # One record waits in the stream to join the next batch, the others in its queue.
    await until(lambda: queue.qsize() >= queued - 1, 20, "the queued records in the stream")
    await asyncio.sleep(0.3)
    assert running.batches[-1] == [1], "an event joined a batch being handled"
    assert running.processed == [0]


async def _idle_and_loaded(settings: Settings) -> None:
    # A window far longer than any wait below: a take that waited for it would time out.
    async with running_app(settings, take_ready=(8, 60.0)) as running:
        app, batches = running.app, running.batches
        await send(settings, running.source, [b"lone"])
        await until(lambda: running.processed == [0], 20, "the lone record")
        assert batches == [[0]]

        await _hold_a_batch_while(running, settings, queued=20)
        running.release.set()
        await until(lambda: len(running.processed) == 22, 20, "the queued records")
        assert batches == [[0], [1], list(range(2, 10)), list(range(10, 18)), list(range(18, 22))]
        assert running.acked_while_handled == [], "events were acked before their batch ended"
        acked = app.consumer._acked_index[running.tp]
        await until(lambda: set(range(22)) <= acked, 5, "the acks of every batch")


async def _loaded_batch_gathers_its_window(settings: Settings) -> None:
    async with running_app(settings, take_ready=(100, 3.0)) as running:
        await send(settings, running.source, [b"lone"])
        await until(lambda: running.processed == [0], 20, "the lone record")
        await _hold_a_batch_while(running, settings, queued=3)
        running.release.set()
        # Within the loaded batch's window: this record joins the three queued ones.
        await send(settings, running.source, [b"late"])
        await until(lambda: len(running.processed) == 6, 20, "the late record")
        assert running.batches == [[0], [1], [2, 3, 4, 5]]


def test_a_lone_event_goes_at_once_and_queued_events_come_as_full_batches(
    xsp_settings: Settings,
) -> None:
    asyncio.run(_idle_and_loaded(xsp_settings))


def test_a_batch_that_starts_under_load_gathers_for_its_window(xsp_settings: Settings) -> None:
    asyncio.run(_loaded_batch_gathers_its_window(xsp_settings))
