"""Faust's stream, iterated in Python so that every ack reaches xsp's consumer.

faust-streaming ships a Cython stream iterator (``faust._cython.streams``)
and uses it whenever the extension is installed, as it is in the wheel.
That iterator inlines ``Consumer.ack``: it writes the consumer's acked
offsets itself and never calls the consumer's ``ack`` method. xsp's
consumer refuses the acks of messages a stream skips or finishes while a
rebalance is under way (``streams/faust_transport.py``, ``_Consumer.ack``),
so that the new owner reads them again instead of a commit passing them.
Under the Cython iterator that rule held only for agents that take batches
(their acks go through ``Stream.ack``), not for agents that iterate one
event at a time (budget, spend, campaigns): an in-process test found a
message processed while partitions were being revoked counted as done.
The Python iterator calls ``event.ack()``, which calls the consumer's
``ack``.

It also adds ``take_ready``, a batch take whose wait follows the load.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import faust
from faust.types import ChannelT, EventT

__all__ = ["Stream"]


class Stream(faust.Stream):
    """``faust.Stream`` that always uses its Python iterator and can take batches by load."""

    def __aiter__(self) -> AsyncIterator[Any]:
        iterator = self._py_aiter()
        # As faust.Stream.__aiter__: on_stop() closes iterators a caller abandoned.
        self._active_agens.add(cast(Any, iterator))
        return iterator

    def take_ready(self, max_events: int, window_s: float) -> AsyncIterator[list[EventT]]:
        """Batches of at most ``max_events`` events, gathered for as long as the load asks.

        Faust's ``take_events`` waits a fixed window for every batch, also
        for an event that arrives alone at an idle stream. Here a batch whose
        first event found the stream idle takes only what is ready: each loop
        turn the stream hands over at most one more event, and the first turn
        that brings none ends the batch, so a lone event goes at once. A batch
        whose first event arrived while the previous batch was being handled
        (the stream is loaded) gathers for ``window_s`` or until it is full,
        as ``take_events`` does, so under load batches stay as large. (Waiting
        only as long as the previous batch took to handle, at most the window,
        lost 10-15 % of burst throughput and answered fewer requests at
        1,000 req/s, for no clear gain at 100 req/s.)

        Guarantees (as ``take_events``): events come in stream order; a
        batch's events are acked only after the caller's loop body for that
        batch has finished (when it asks for the next one or leaves the
        loop), and no event joins the batch being handled.
        """
        batches = self._take_ready(max_events, window_s)
        # As __aiter__: on_stop() closes generators a caller abandoned.
        self._active_agens.add(cast(Any, batches))
        return batches

    async def _take_ready(self, max_events: int, window_s: float) -> AsyncIterator[list[EventT]]:
        loop = asyncio.get_running_loop()
        events: list[EventT] = []
        arrived = asyncio.Event()
        full = asyncio.Event()
        room = asyncio.Event()
        room.set()
        handed_over: asyncio.Future[None] | None = None
        loaded = False  # an event arrived while a batch was being handled

        async def collect(value: Any) -> Any:
            # Runs in the stream's passive drainer, once per event.
            nonlocal loaded
            if handed_over is not None:
                loaded = True
            while handed_over is not None:
                await handed_over
            event = self.current_event
            if event is None:
                raise RuntimeError("take_ready: the stream has no current event")
            events.append(event)
            arrived.set()
            if len(events) >= max_events:
                full.set()
                room.clear()
                await self.wait(room)
            return value

        acks_before = self.enable_acks
        # Events are acked here, after the caller has handled their batch.
        self.enable_acks = False
        self.add_processor(collect)
        self._enable_passive(cast(ChannelT, aiter(self.channel)))
        try:
            while not self.should_stop:
                await self.wait_for_stopped(arrived)
                if not events:
                    continue
                if loaded:
                    await self.wait_for_stopped(full, timeout=window_s)
                else:
                    while len(events) < max_events:
                        before = len(events)
                        await asyncio.sleep(0)
                        if len(events) == before:
                            break
                handed_over = loop.create_future()
                loaded = False
                batch = list(events)
                try:
                    yield batch
                finally:
                    for event in batch:
                        await self.ack(event)
                    events.clear()
                    arrived.clear()
                    full.clear()
                    room.set()
                    future, handed_over = handed_over, None
                    future.set_result(None)
        finally:
            self.enable_acks = acks_before
            self._processors.remove(collect)
