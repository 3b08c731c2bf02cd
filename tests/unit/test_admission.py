"""The pure half of admit: contract plus the event-time sanity check."""

from __future__ import annotations

import pytest

from streams.admission import validate_ad_request
from streams.records import ContractError, parse

NOW = 1_764_000_000_000


def test_valid_request_passes() -> None:
    raw = b'{"request_id":"r","user_id":"u","timestamp":%d}' % NOW
    assert validate_ad_request(parse(raw), now_ms=NOW, max_future_skew_ms=1000).user_id == "u"


def test_tombstone_is_rejected() -> None:
    with pytest.raises(ContractError, match="tombstone"):
        parse(None)


def test_timestamp_far_in_the_future_is_rejected() -> None:
    raw = b'{"request_id":"r","user_id":"u","timestamp":%d}' % (NOW + 60_000)
    with pytest.raises(ContractError, match="60 s in the future"):
        validate_ad_request(parse(raw), now_ms=NOW, max_future_skew_ms=1000)


def test_small_clock_skew_is_tolerated() -> None:
    raw = b'{"request_id":"r","user_id":"u","timestamp":%d}' % (NOW + 500)
    request = validate_ad_request(parse(raw), now_ms=NOW, max_future_skew_ms=1000)
    assert request.timestamp == NOW + 500
