"""How the resolve stage cuts finished Resolutions into messages (count and size bounds)."""

from __future__ import annotations

import asyncio

from agents.resolve import RESOLUTIONS_MAX_BYTES, _chunks
from streams.records import MAX_RESOLUTIONS_PER_MESSAGE, AdPayload, DecisionStatus, Resolution


def _entries(n: int, xml_bytes: int = 0) -> list[tuple[Resolution, asyncio.Future[None]]]:
    loop = asyncio.new_event_loop()
    try:
        ad = AdPayload(ad_id="a", vast_xml="x" * xml_bytes) if xml_bytes else None
        return [
            (
                Resolution(
                    request_id=f"r{i}", status=DecisionStatus.FILLED, campaign_id="c", ad=ad
                ),
                loop.create_future(),
            )
            for i in range(n)
        ]
    finally:
        loop.close()


def test_small_resolutions_fill_a_message_up_to_the_item_limit() -> None:
    entries = _entries(MAX_RESOLUTIONS_PER_MESSAGE * 2 + 1)
    chunks = _chunks(entries)
    assert [len(c) for c in chunks] == [MAX_RESOLUTIONS_PER_MESSAGE] * 2 + [1]
    # Order is kept: the budget agent settles them in completion order.
    assert [e for c in chunks for e in c] == entries


def test_large_ads_split_messages_by_size_and_a_huge_one_goes_alone() -> None:
    entries = _entries(5, xml_bytes=RESOLUTIONS_MAX_BYTES // 3)
    assert [len(c) for c in _chunks(entries)] == [2, 2, 1]
    huge = _entries(2, xml_bytes=RESOLUTIONS_MAX_BYTES * 2)
    assert [len(c) for c in _chunks(huge)] == [1, 1]
