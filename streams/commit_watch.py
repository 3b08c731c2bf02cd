"""Detect source partitions whose consumer processes messages but can no longer commit.

Why this exists: faust-streaming 0.15.3 drops a fetched message without
delivering or acking it when a rebalance suspends the flow while the message
waits for an agent's queue, and still records it as read; when the worker
keeps (or gets back) that partition and seeks to the committed offset, the
re-fetched messages below that read offset are dropped again ("DROPPED
MESSAGE ROFF"). The dropped offsets are never acked, so the committed offset
stops at the hole for good (faust-streaming#318, #606; robinhood/faust#681)
while later messages are processed. Measured in the chaos test: up to 491 of
20,000 requests never decided, and a budget partition 14,000 messages behind
in committed offset with every later message processed.

The cure is cheap because every handler here is idempotent: seek the
partition back to its committed offset, so the holes are read and processed
(and everything after them re-delivered and recognised as duplicates).
This module only decides *when*; ``agents/commit_guard.py`` reads Faust's
bookkeeping and seeks. No Faust import here.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

__all__ = ["CommitWatch", "PartitionProgress"]


@dataclass(frozen=True, slots=True)
class PartitionProgress:
    """One partition as the consumer sees it at one moment."""

    partition: Hashable
    committed: int | None  # next offset to read after the last commit (None: never committed)
    lowest_acked: int | None  # smallest processed-but-uncommitted offset (None: nothing pending)


@dataclass
class CommitWatch:
    """Says which partitions have had a hole below their processed messages for too long.

    A partition is *stuck* when messages above its committed offset have been
    processed (``lowest_acked > committed``: the offsets in between were never
    acked) and the committed offset has not moved for ``stuck_after_s``.
    A hole that Faust fills itself (transaction markers, compaction) closes
    within a commit interval, so it is never reported if ``stuck_after_s`` is
    a few commit intervals. Guarantees: a partition is reported at most once
    per ``stuck_after_s`` (the seek needs time to take effect).
    """

    stuck_after_s: float = 15.0
    _since: dict[Hashable, tuple[int | None, float]] = field(default_factory=dict)

    def check(self, progress: Iterable[PartitionProgress], now_s: float) -> list[PartitionProgress]:
        """The partitions stuck at ``now_s`` (monotonic seconds); forget the ones not seen."""
        stuck: list[PartitionProgress] = []
        seen: set[Hashable] = set()
        for p in progress:
            seen.add(p.partition)
            hole = (
                p.lowest_acked is not None
                and p.committed is not None
                and p.lowest_acked > p.committed
            )
            if not hole:
                self._since.pop(p.partition, None)
                continue
            committed, since = self._since.get(p.partition, (p.committed, now_s))
            if committed != p.committed:
                since = now_s  # the commit moved: a new hole, not the old one
            if now_s - since >= self.stuck_after_s:
                stuck.append(p)
                since = now_s
            self._since[p.partition] = (p.committed, since)
        for gone in [k for k in self._since if k not in seen]:
            del self._since[gone]
        return stuck
