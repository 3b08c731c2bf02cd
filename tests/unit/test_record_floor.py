"""streams.record_floor: a tick skips its scan only when no record can be past the horizon."""

from __future__ import annotations

from streams.record_floor import RecordFloor

GEN = 7
CUTOFF = 1_000


def test_a_partition_never_scanned_is_always_scanned() -> None:
    floor = RecordFloor()
    floor.written(0, GEN, 5_000)  # a write alone proves nothing about older rows
    assert not floor.nothing_before(0, GEN, CUTOFF)


def test_after_a_scan_a_tick_skips_until_a_record_can_be_past_the_cutoff() -> None:
    floor = RecordFloor()
    floor.scanned(0, GEN, oldest_left_ms=2_000)
    assert floor.nothing_before(0, GEN, CUTOFF)
    assert floor.nothing_before(0, GEN, 2_000)
    assert not floor.nothing_before(0, GEN, 2_001)
    # Other partitions keep their own floors.
    assert not floor.nothing_before(1, GEN, CUTOFF)


def test_an_empty_partition_skips_until_a_write() -> None:
    floor = RecordFloor()
    floor.scanned(0, GEN, oldest_left_ms=None)
    assert floor.nothing_before(0, GEN, 10**15)
    floor.written(0, GEN, 500)
    assert not floor.nothing_before(0, GEN, CUTOFF)


def test_a_write_older_than_the_floor_lowers_it() -> None:
    floor = RecordFloor()
    floor.scanned(0, GEN, oldest_left_ms=2_000)
    floor.written(0, GEN, 3_000)
    assert floor.nothing_before(0, GEN, 2_000)
    floor.written(0, GEN, 999)  # a request with an old timestamp
    assert not floor.nothing_before(0, GEN, CUTOFF)


def test_a_rebalance_voids_every_floor() -> None:
    """Restored rows reach the store without a write the floor sees; that only happens
    after a rebalance, which starts a new consumer generation."""
    floor = RecordFloor()
    floor.scanned(0, GEN, oldest_left_ms=2_000)
    assert not floor.nothing_before(0, GEN + 1, CUTOFF)
    floor.written(0, GEN + 1, 5_000)
    assert not floor.nothing_before(0, GEN + 1, CUTOFF)
    floor.scanned(0, GEN + 1, oldest_left_ms=5_000)
    assert floor.nothing_before(0, GEN + 1, CUTOFF)
