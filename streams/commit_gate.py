"""A gate that keeps exactly-once commits and event processing apart.

Why: an agent writes an event's table rows through Faust's producer buffer
(sent a few loop turns later) and sends the event's outputs directly. A
transaction commit that started between the two committed the outputs while
the rows went into the next transaction; a SIGKILL aborted that one, the
event was processed again on state without its rows, and one request got
two different decisions (session 13, traced in docs/history.md). Kafka
Streams cannot hit this because its thread commits between records; here
agents and the commit loop are tasks on one event loop, so the gate makes
"between records" explicit: a commit waits until no event is being
processed and holds new events back until it has ended. Since session 18
agents hand an event's rows and outputs to the producer themselves
(``agents/wiring.py``), but each hand-over is an await, so a commit could
still fall between two of them without the gate.

The gate costs a counter per event when nothing commits (at-least-once never
closes it). Pure asyncio: no Faust import.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

__all__ = ["CommitGate"]


class CommitGate:
    """Events in progress and commits never overlap; a waiting commit goes before new events."""

    def __init__(self, on_commit: Callable[[float, float], None] | None = None) -> None:
        """``on_commit(waited_s, held_s)`` is told, after each commit, how long it waited
        for events in progress and how long it held new events back."""
        self._on_commit = on_commit
        self._in_progress = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._open = asyncio.Event()
        self._open.set()
        self._commits = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def event(self) -> AsyncIterator[None]:
        """Process one event (or one batch): everything it writes and sends lands in one commit.

        Guarantees: the block does not start while a commit is in progress,
        and no commit starts until the block has ended.
        """
        # A commit may close the gate again between the wake-up and this
        # task running, hence the loop; nothing awaits between the check and
        # the count.
        while not self._open.is_set():
            await self._open.wait()
        self._in_progress += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_progress -= 1
            if self._in_progress == 0:
                self._idle.set()

    @contextlib.asynccontextmanager
    async def commit(self) -> AsyncIterator[None]:
        """Commit with no event in progress; commits run one at a time.

        Guarantees: the block starts only once every event block that had
        started has ended, and no event block starts until it has ended.
        Not re-entrant: a commit must not commit again inside the block.
        """
        async with self._commits:
            self._open.clear()
            closed_at = time.perf_counter()
            waited_s = 0.0
            try:
                await self._idle.wait()
                waited_s = time.perf_counter() - closed_at
                yield
            finally:
                self._open.set()
                if self._on_commit is not None:
                    self._on_commit(waited_s, time.perf_counter() - closed_at)
