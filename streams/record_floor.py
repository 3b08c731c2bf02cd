"""Per partition, a time no outcome record is older than: a pruning tick with nothing to do skips.

Pruning (``streams.pipeline.prune_records``) forgets outcome records older
than the dedupe horizon, and finding them means reading and decoding every
record of the tick's partition. Until session 17 every pruning tick did that
whatever it found: 80 ms per partition of a ``memory://`` table holding
20,000 records (the whole dict is filtered for each prefix there), ~5 s at
1M users in ``rocksdb://``, each time holding the agent and so every request
behind it. Most ticks find nothing to delete: records leave the horizon a
minute's worth at a time, and a worker younger than the horizon has none.

``RecordFloor`` keeps, per partition, a time no record of that partition is
older than: the oldest record a full scan left, lowered by every record
written since. A tick whose cutoff is at or below the floor cannot delete
anything and skips the scan; any other tick scans as before. So the keys a
tick deletes are exactly those a full scan would delete, which keeps a replay
of the log byte-identical to the live run.

A floor is only as good as the writes it saw. Rows reach a store without an
agent's write when a partition is restored from its changelog, which happens
only after a rebalance, so a floor belongs to the consumer generation it was
set in and means nothing in any other. No Faust import here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["RecordFloor"]


@dataclass
class RecordFloor:
    """Per partition: (consumer generation, no record older than this many ms)."""

    _floors: dict[int, tuple[int, int | None]] = field(default_factory=dict)

    def scanned(self, partition: int, generation: int, oldest_left_ms: int | None) -> None:
        """A full scan of ``partition`` left nothing older than ``oldest_left_ms`` (None: none)."""
        self._floors[partition] = (generation, oldest_left_ms)

    def written(self, partition: int, generation: int, at_ms: int) -> None:
        """An agent wrote a record of ``partition`` with time ``at_ms``."""
        known = self._floors.get(partition)
        if known is None or known[0] != generation:
            return  # no floor to keep: the next tick scans anyway
        oldest = known[1]
        if oldest is None or at_ms < oldest:
            self._floors[partition] = (generation, at_ms)

    def nothing_before(self, partition: int, generation: int, cutoff_ms: int) -> bool:
        """Whether ``partition`` surely holds no record older than ``cutoff_ms``.

        Guarantees: True only after a scan of ``partition`` in this same
        ``generation``, and only if neither that scan nor any write reported
        since found a record older than ``cutoff_ms``.
        """
        known = self._floors.get(partition)
        if known is None or known[0] != generation:
            return False
        oldest = known[1]
        return oldest is None or oldest >= cutoff_ms
