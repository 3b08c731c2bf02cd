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

``InFlight`` is the same rule for a consumer of our own (the resolve stage)
that processes fetched messages concurrently and finishes them out of order.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["CommitWatch", "InFlight", "PartitionProgress", "commit_offset"]


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


@dataclass
class InFlight:
    """Fetched messages still being processed, per partition, and what may be committed.

    For a consumer that calls :meth:`start` for every record it fetches, in
    fetch order, and :meth:`done` once that record's outputs are delivered, in
    any order. Guarantees: :meth:`committable` never returns an offset above a
    started but unfinished message, so a crash re-reads every unfinished one
    (gaps in the log, such as transaction markers, never hold it back: only
    fetched offsets count).
    """

    # Per partition, unfinished offsets in start order (the first is the lowest).
    _pending: dict[Hashable, dict[int, None]] = field(default_factory=dict)
    _next: dict[Hashable, int] = field(default_factory=dict)  # one past the last started
    _committed: dict[Hashable, int] = field(default_factory=dict)

    def start(self, partition: Hashable, offset: int) -> None:
        """A fetched message is handed to processing."""
        self._pending.setdefault(partition, {})[offset] = None
        self._next[partition] = max(self._next.get(partition, 0), offset + 1)

    def done(self, partition: Hashable, offset: int) -> None:
        """A message's outputs are delivered (a forgotten partition is ignored)."""
        pending = self._pending.get(partition)
        if pending is not None:
            pending.pop(offset, None)

    def unfinished(self, partition: Hashable) -> int:
        """How many started messages of ``partition`` are not done."""
        return len(self._pending.get(partition, ()))

    def committable(self) -> dict[Hashable, int]:
        """Per partition, the offset to commit now, if it moved since :meth:`committed`."""
        offsets = {}
        for partition, nxt in self._next.items():
            pending = self._pending.get(partition)
            offset = next(iter(pending)) if pending else nxt
            if offset > self._committed.get(partition, -1):
                offsets[partition] = offset
        return offsets

    def committed(self, offsets: dict[Hashable, int]) -> None:
        """Record that ``offsets`` (from :meth:`committable`) were committed."""
        for partition, offset in offsets.items():
            self._committed[partition] = max(self._committed.get(partition, -1), offset)

    def forget(self, partitions: Iterable[Hashable]) -> None:
        """Drop partitions this consumer no longer owns (after a revocation)."""
        for partition in partitions:
            self._pending.pop(partition, None)
            self._next.pop(partition, None)
            self._committed.pop(partition, None)
