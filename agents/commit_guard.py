"""commit guard: re-read source partitions whose committed offset is stuck behind a hole.

See ``streams/commit_watch.py`` for the Faust bug this works around and why
re-reading is safe. Every ``CHECK_EVERY_S`` the worker's consumer bookkeeping
(committed offset, acked-but-uncommitted offsets) is handed to a
``CommitWatch``; a stuck partition is sought back to its committed offset,
logged at WARNING and counted in ``xsp_commit_holes_repaired_total``.
This reads two private attributes of faust-streaming's Consumer
(``_committed_offset``, ``_acked``), pinned by the tested version range.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from streams.app import XspApp
from streams.commit_watch import CommitWatch, PartitionProgress

__all__ = ["CHECK_EVERY_S", "register"]

log = logging.getLogger(__name__)
CHECK_EVERY_S = 2.0


def _progress(consumer: Any) -> list[PartitionProgress]:
    acked: dict[Any, list[int]] = getattr(consumer, "_acked", {})
    committed: dict[Any, int | None] = getattr(consumer, "_committed_offset", {})
    return [
        PartitionProgress(
            partition=tp,
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
        for stuck in watch.check(_progress(consumer), time.monotonic()):
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
            await consumer.seek(tp, stuck.committed)
            metrics.commit_hole_repaired(tp.topic)
