"""Which offsets hold no record, from how far aiokafka moved a position and what it returned."""

from __future__ import annotations

from streams.faust_transport import absent_offsets


def test_a_marker_after_the_last_record_is_absent() -> None:
    # Records 10-12, then the transaction's commit marker at 13: position 14.
    assert absent_offsets(10, 14, [10, 11, 12]) == [(13, 14)]


def test_a_marker_at_the_position_before_the_first_record_is_absent() -> None:
    # A seek to the committed offset 20, which is a marker: the first record is 21.
    assert absent_offsets(20, 23, [21, 22]) == [(20, 21)]


def test_aborted_records_and_markers_between_records_are_absent() -> None:
    assert absent_offsets(0, 10, [0, 4, 9]) == [(1, 4), (5, 9)]


def test_every_returned_record_is_present_and_nothing_else_is_invented() -> None:
    assert absent_offsets(5, 8, [5, 6, 7]) == []
    assert absent_offsets(5, 5, []) == []
    assert absent_offsets(5, 7, []) == [(5, 7)]  # a fetch of markers only
