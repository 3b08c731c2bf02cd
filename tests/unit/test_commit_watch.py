"""The commit rule without holes, and when a partition's committed offset has stopped."""

from __future__ import annotations

import pytest

from streams.commit_watch import CommitWatch, PartitionProgress, commit_offset


@pytest.mark.parametrize(
    ("committed", "acked", "expected"),
    [
        (10, [10, 11, 12], (13, 3)),  # contiguous from the committed offset
        (10, [10, 11, 13, 14], (12, 2)),  # stops at the hole at 12
        (10, [11, 12, 13], (None, 0)),  # 10 unprocessed: Faust committed 14 here
        (0, [1, 2], (None, 0)),  # Faust did not look for a hole at offset 0
        (0, [0, 1], (2, 2)),
        (10, [8, 9, 10, 11], (12, 4)),  # stale entries below the commit are dropped
        (10, [9, 11], (None, 1)),  # a stale entry is dropped even when nothing commits
        (10, [10, 10, 11], (12, 3)),  # a duplicate counts once
        (None, [5, 6, 8], (None, 0)),  # unknown start: 0..4 may never have been read
        (10, [], (None, 0)),
    ],
)
def test_commit_offset_never_passes_an_unprocessed_offset(
    committed: int | None, acked: list[int], expected: tuple[int | None, int]
) -> None:
    assert commit_offset(committed, acked) == expected


def progress(
    committed: int | None, highest_acked: int | None, name: str = "p0"
) -> PartitionProgress:
    return PartitionProgress(partition=name, committed=committed, highest_acked=highest_acked)


def test_processed_messages_waiting_on_a_frozen_commit_are_reported_once_per_period() -> None:
    watch = CommitWatch(stuck_after_s=10)
    assert watch.check([progress(903, 959)], now_s=0) == []
    assert watch.check([progress(903, 960)], now_s=9.9) == []
    assert [p.committed for p in watch.check([progress(903, 961)], now_s=10)] == [903]
    # Reported again only after another full period (the rebalance needs time to work).
    assert watch.check([progress(903, 961)], now_s=15) == []
    assert len(watch.check([progress(903, 961)], now_s=20)) == 1


def test_a_partition_with_nothing_waiting_is_never_stuck() -> None:
    watch = CommitWatch(stuck_after_s=1)
    for t in range(10):
        # Nothing processed above the commit, or only a stale entry below it.
        assert watch.check([progress(100, None), progress(50, 49, "p1")], now_s=t) == []


def test_the_message_at_the_committed_offset_counts_as_waiting() -> None:
    watch = CommitWatch(stuck_after_s=1)
    watch.check([progress(100, 100)], now_s=0)
    assert len(watch.check([progress(100, 100)], now_s=1)) == 1


def test_a_moving_commit_restarts_the_clock() -> None:
    watch = CommitWatch(stuck_after_s=10)
    watch.check([progress(100, 105)], now_s=0)
    watch.check([progress(200, 205)], now_s=8)  # committed moved: what waits now is new
    assert watch.check([progress(200, 206)], now_s=12) == []
    assert len(watch.check([progress(200, 206)], now_s=18)) == 1


def test_a_drained_partition_and_a_revoked_partition_are_forgotten() -> None:
    watch = CommitWatch(stuck_after_s=10)
    watch.check([progress(1, 5), progress(1, 5, "p1")], now_s=0)
    watch.check([progress(5, None)], now_s=5)  # p0 committed everything, p1 revoked
    assert watch.check([progress(5, 9), progress(1, 5, "p1")], now_s=12) == []


def test_a_never_committed_partition_is_left_alone() -> None:
    watch = CommitWatch(stuck_after_s=1)
    assert watch.check([progress(None, 7)], now_s=0) == []
    assert watch.check([progress(None, 7)], now_s=5) == []
