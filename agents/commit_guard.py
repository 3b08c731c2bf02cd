"""commit guard: ask for a group rebalance when a partition's committed offset stops moving.

See ``streams/commit_watch.py`` for the Faust bugs this works around and why
re-reading is safe. Every ``CHECK_EVERY_S`` the worker's consumer bookkeeping
(committed offset, processed-but-uncommitted offsets) is handed to a
``CommitWatch``; when a partition is stuck the worker logs it at WARNING,
counts it in ``xsp_commit_holes_repaired_total`` and asks its consumer to
rejoin the group. Faust's recovery after every rebalance seeks each assigned
partition to its committed offset, so the messages in the hole are read again.

Measured before this design: seeking only the stuck partition (pausing it
first so the fetch loop's batch in flight could not undo the seek) left the
partition stalled for good, with its read offset at the end of the log and
its commit frozen, in 4 of 4 cases over two chaos runs. A rebalance costs
the group a pause of about a second (the test timeouts) and is what every
SIGKILL already causes. This reads private attributes of faust-streaming's
Consumer (``_committed_offset``, ``_acked``, ``_thread``), pinned by the
tested version range.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from faust.types import TP

from streams.app import XspApp
from streams.commit_watch import CommitWatch, PartitionProgress

__all__ = ["CHECK_EVERY_S", "commit_progress", "hole_evidence", "register"]

log = logging.getLogger(__name__)
CHECK_EVERY_S = 2.0


def commit_progress(consumer: Any) -> list[PartitionProgress]:
    """Each partition's committed offset and highest processed-but-uncommitted offset."""
    acked: dict[Any, list[int]] = getattr(consumer, "_acked", {})
    committed: dict[Any, int | None] = getattr(consumer, "_committed_offset", {})
    return [
        PartitionProgress(
            # Faust's own TP type: its active-partition set asserts on anything else.
            partition=TP(tp.topic, tp.partition),
            committed=offset,
            highest_acked=max(acked[tp]) if acked.get(tp) else None,
        )
        for tp, offset in list(committed.items())
    ]


def hole_evidence(consumer: Any, tp: TP) -> str:
    """What the consumer knows just above a stuck commit: the lowest processed offsets,
    and the offsets it counts as holding no record (transaction markers, aborted or
    compacted records). The offsets in neither are the hole."""
    acked = sorted(getattr(consumer, "_acked", {}).get(tp) or [])[:5]
    gaps = getattr(consumer, "_gap", {}).get(tp)
    absent = sorted((i.begin, i.end) for i in gaps)[:5] if gaps else []
    return f"lowest processed {acked}, no record at {absent}"


def register(app: XspApp) -> None:
    """Attach the commit guard timer to ``app``."""
    watch = CommitWatch(stuck_after_s=app.xsp_settings.commit_stuck_after_s)
    metrics = app.xsp_metrics

    @app.timer(interval=CHECK_EVERY_S, name="commit-guard")
    async def commit_guard() -> None:
        consumer = app.consumer
        stuck = watch.check(commit_progress(consumer), time.monotonic())
        for p in stuck:
            log.warning(
                "%s[%s]: committed offset %s has not moved for %.0f s although offsets up to "
                "%s are processed (%s); asking for a rebalance to re-read from it "
                "(faust-streaming#318)",
                p.partition.topic,
                p.partition.partition,
                p.committed,
                watch.stuck_after_s,
                p.highest_acked,
                hole_evidence(consumer, p.partition),
            )
            metrics.commit_hole_repaired(p.partition.topic)
        if stuck:
            await _request_rebalance(consumer)


async def _request_rebalance(consumer: Any) -> None:
    """Make this worker's consumer rejoin its group (on the consumer's own thread and loop)."""
    thread = consumer._thread
    kafka = thread._consumer

    async def rejoin() -> None:
        kafka._coordinator.request_rejoin()

    await thread.call_thread(rejoin)
