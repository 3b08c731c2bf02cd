"""Which offsets a source partition may commit, and which partitions stopped committing.

Why this exists: faust-streaming 0.15.3 loses messages across rebalances in
three ways, all measured in the chaos test (2 workers, 20,000 requests,
SIGKILLs): up to 491 requests never decided, committed offsets stuck
10,000 messages behind.

1. Its commit rule skips a one-message hole: with committed offset ``c``
   (the next offset to read) and processed offsets ``c+1, c+2, ...`` it
   commits past ``c``, which was never processed; with ``c == 0`` it does
   not look for a hole at all. ``commit_offset`` is the rule without those
   holes: only a contiguous run starting exactly at ``c`` is committed.
2. A stream skips the messages it still has buffered when a rebalance
   starts (flow stopped, or fetched in the previous generation) and *acks*
   them, so they are committed unprocessed. ``streams/faust_transport.py``
   refuses those acks; Faust's recovery then seeks every partition back to
   its committed offset and the messages are read again.
3. A message fetched while a rebalance suspends the flow is dropped but
   recorded as read, and a re-fetch below that read offset is dropped again
   ("DROPPED MESSAGE ROFF"; faust-streaming#318, #606, robinhood/faust#681).
   Its offset is never acked, so with rule 1 the committed offset stops at
   the hole while later messages are processed. Since session 12 xsp's
   consumer never reports a read offset to Faust's fetch loop, so the
   re-fetch is delivered (``streams/faust_transport.py``,
   ``_UnreportedReadOffsets``). For any hole left (a message dropped some
   other way) ``CommitWatch`` spots the partition and the worker asks for a
   group rebalance, whose recovery re-reads it from the committed offset
   (``agents/commit_guard.py``). A seek of the one partition was tried first
   and left it stalled for good (4 of 4 rewound partitions in two runs): the
   rebalance is Faust's own, tested path.

Re-reading is safe because every handler is idempotent by request id. No
Faust import here.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["CommitWatch", "PartitionProgress", "commit_offset"]


def commit_offset(committed: int | None, acked: Sequence[int]) -> tuple[int | None, int]:
    """The offset to commit after ``committed`` given sorted processed offsets ``acked``.

    Returns ``(offset, used)``: ``offset`` is one past the contiguous run of
    ``acked`` that starts exactly at ``committed`` (``None`` if there is no
    such run: the message at ``committed`` has not been processed), and
    ``used`` is how many leading entries of ``acked`` that run and any stale
    entries below ``committed`` account for (the caller drops them).
    Nothing is committed from an unknown start (``committed is None``): the
    messages below the lowest processed one may never have been read.
    Guarantees: never returns an offset above an unprocessed one.
    """
    if not acked or committed is None:
        return None, 0
    expected = committed
    start = expected
    used = 0
    for offset in acked:
        if offset < expected:  # stale (below the commit) or a duplicate
            used += 1
        elif offset == expected:
            expected += 1
            used += 1
        else:
            break
    return (expected if expected > start else None), used


@dataclass(frozen=True, slots=True)
class PartitionProgress:
    """One partition as the consumer sees it at one moment."""

    partition: Hashable
    committed: int | None  # next offset to read after the last commit (None: never committed)
    highest_acked: int | None  # largest processed offset not yet committed (None: none)

    @property
    def waiting(self) -> bool:
        """Processed messages wait at or above the committed offset."""
        return (
            self.committed is not None
            and self.highest_acked is not None
            and self.highest_acked >= self.committed
        )


@dataclass
class CommitWatch:
    """Says which partitions have processed messages but a committed offset that stopped.

    A partition is *stuck* when processed messages wait above its committed
    offset and that offset has not moved for ``stuck_after_s``. A healthy
    partition commits every few seconds (Faust's commit interval, 2.8 s; up
    to ~18 s measured under bursts), so ``stuck_after_s`` must be longer than
    that. Guarantees: a partition is reported at most once per
    ``stuck_after_s`` (the rebalance needs time to take effect).
    """

    stuck_after_s: float = 20.0
    _since: dict[Hashable, tuple[int | None, float]] = field(default_factory=dict)

    def check(self, progress: Iterable[PartitionProgress], now_s: float) -> list[PartitionProgress]:
        """The partitions stuck at ``now_s`` (monotonic seconds); forget the ones not seen."""
        stuck: list[PartitionProgress] = []
        seen: set[Hashable] = set()
        for p in progress:
            seen.add(p.partition)
            if not p.waiting:
                self._since.pop(p.partition, None)
                continue
            committed, since = self._since.get(p.partition, (p.committed, now_s))
            if committed != p.committed:
                since = now_s  # the commit moved: whatever waits now is new
            if now_s - since >= self.stuck_after_s:
                stuck.append(p)
                since = now_s
            self._since[p.partition] = (p.committed, since)
        for gone in [k for k in self._since if k not in seen]:
            del self._since[gone]
        return stuck
