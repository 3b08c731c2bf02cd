"""CommitWatch: when a partition's committed offset is stuck below processed messages."""

from __future__ import annotations

from streams.commit_watch import CommitWatch, PartitionProgress


def progress(
    committed: int | None, lowest_acked: int | None, name: str = "p0"
) -> PartitionProgress:
    return PartitionProgress(partition=name, committed=committed, lowest_acked=lowest_acked)


def test_a_hole_that_persists_is_reported_once_per_period() -> None:
    watch = CommitWatch(stuck_after_s=10)
    assert watch.check([progress(903, 959)], now_s=0) == []
    assert watch.check([progress(903, 960)], now_s=9.9) == []
    assert [p.committed for p in watch.check([progress(903, 961)], now_s=10)] == [903]
    # Reported again only after another full period (the seek needs time to work).
    assert watch.check([progress(903, 961)], now_s=15) == []
    assert len(watch.check([progress(903, 961)], now_s=20)) == 1


def test_no_hole_is_never_stuck_however_long_commits_wait() -> None:
    watch = CommitWatch(stuck_after_s=1)
    for t in range(10):
        # lowest acked == committed: the next commit can move; nothing pending: nothing to do.
        assert watch.check([progress(100, 100), progress(50, None, "p1")], now_s=t) == []


def test_a_moving_commit_restarts_the_clock() -> None:
    watch = CommitWatch(stuck_after_s=10)
    watch.check([progress(100, 105)], now_s=0)
    watch.check([progress(200, 205)], now_s=8)  # committed moved: a new hole
    assert watch.check([progress(200, 206)], now_s=12) == []
    assert len(watch.check([progress(200, 206)], now_s=18)) == 1


def test_a_closed_hole_and_a_revoked_partition_are_forgotten() -> None:
    watch = CommitWatch(stuck_after_s=10)
    watch.check([progress(1, 5), progress(1, 5, "p1")], now_s=0)
    watch.check([progress(5, 5)], now_s=5)  # p0 hole closed, p1 revoked
    assert watch.check([progress(5, 9), progress(1, 5, "p1")], now_s=12) == []


def test_a_never_committed_partition_is_left_alone() -> None:
    watch = CommitWatch(stuck_after_s=1)
    assert watch.check([progress(None, 7)], now_s=0) == []
    assert watch.check([progress(None, 7)], now_s=5) == []
