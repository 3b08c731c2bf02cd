"""commit guard: re-read source partitions whose committed offset is stuck behind a hole.

See ``streams/commit_watch.py`` for the Faust bug this works around and why
re-reading is safe. Every ``CHECK_EVERY_S`` the worker's consumer bookkeeping
(committed offset, acked-but-uncommitted offsets) is handed to a
``CommitWatch``; a stuck partition is sought back to its committed offset,
logged at WARNING and counted in ``xsp_commit_holes_repaired_total``.

A plain seek is not enough (measured: the hole stayed after four seeks):
Faust's fetch loop is usually in the middle of a batch of the same partition
and sets the read offset past the seek target again, so the re-fetched
messages are dropped once more. The partition is therefore paused first,
and sought only once its read offset has stopped moving (the batch in flight
is done), then resumed. This reads private attributes of faust-streaming's
Consumer (``_committed_offset``, ``_acked``, ``_read_offset``), pinned by
the tested version range.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from faust.types import TP

from streams.app import XspApp
from streams.commit_watch import CommitWatch, PartitionProgress

__all__ = ["CHECK_EVERY_S", "commit_progress", "register"]

log = logging.getLogger(__name__)
CHECK_EVERY_S = 2.0
SETTLE_S = 0.5  # the read offset of a paused partition stood still this long: batch done
SETTLE_MAX_S = 15.0


def commit_progress(consumer: Any) -> list[PartitionProgress]:
    """Each partition's committed offset and lowest processed-but-uncommitted offset."""
    acked: dict[Any, list[int]] = getattr(consumer, "_acked", {})
    committed: dict[Any, int | None] = getattr(consumer, "_committed_offset", {})
    return [
        PartitionProgress(
            # Faust's own TP type: its active-partition set asserts on anything else.
            partition=TP(tp.topic, tp.partition),
            committed=offset,
            lowest_acked=min(acked[tp]) if acked.get(tp) else None,
        )
        for tp, offset in list(committed.items())
    ]


def register(app: XspApp) -> None:
    """Attach the commit guard timer to ``app``."""
    watch = CommitWatch(stuck_after_s=app.xsp_settings.commit_stuck_after_s)
    metrics = app.xsp_metrics

    @app.timer(interval=CHECK_EVERY_S, name="commit-guard")
    async def commit_guard() -> None:
        consumer = app.consumer
        for stuck in watch.check(commit_progress(consumer), time.monotonic()):
            tp = stuck.partition
            log.warning(
                "%s[%s]: committed offset %s stuck below processed offset %s; "
                "re-reading from %s (faust-streaming#318)",
                tp.topic,
                tp.partition,
                stuck.committed,
                stuck.lowest_acked,
                stuck.committed,
            )
            await _rewind(consumer, tp, stuck.committed)
            metrics.commit_hole_repaired(tp.topic)


async def _rewind(consumer: Any, tp: Any, offset: int) -> None:
    """Pause ``tp``, wait until the fetch loop's batch in flight is done, seek, resume."""
    consumer.pause_partitions([tp])
    try:
        read_offsets = consumer._read_offset
        last, still_since = read_offsets.get(tp), time.monotonic()
        deadline = time.monotonic() + SETTLE_MAX_S
        while time.monotonic() < deadline and time.monotonic() - still_since < SETTLE_S:
            await asyncio.sleep(0.1)
            if read_offsets.get(tp) != last:
                last, still_since = read_offsets.get(tp), time.monotonic()
        if tp in consumer.assignment():
            await consumer.seek(tp, offset)
    finally:
        if tp in consumer.assignment():
            consumer.resume_partitions([tp])
