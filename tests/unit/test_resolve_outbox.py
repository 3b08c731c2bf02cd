"""How the resolve stage cuts finished Resolutions into messages (count and size bounds)."""

from __future__ import annotations

import asyncio

from agents.resolve import RESOLUTIONS_MAX_BYTES, _chunks, _Outbox
from streams.records import (
    MAX_RESOLUTIONS_PER_MESSAGE,
    AdPayload,
    DecisionStatus,
    Resolution,
    Resolutions,
    decode,
)


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


class _Producer:
    """Records what the outbox sends; fails every send if ``error`` is set."""

    def __init__(self, error: Exception | None = None) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.error = error

    async def send(self, topic: str, *, key: bytes, value: bytes) -> asyncio.Future[None]:
        if self.error is not None:
            raise self.error
        self.sent.append((topic, key, value))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def _resolution(rid: str, campaign_id: str) -> Resolution:
    return Resolution(request_id=rid, status=DecisionStatus.NO_FILL, campaign_id=campaign_id)


def test_one_message_per_campaign_per_window_and_a_failed_send_fails_its_requests() -> None:
    async def run() -> None:
        producer = _Producer()
        outbox = _Outbox(producer, "budget-requests", window_s=0.01)  # type: ignore[arg-type]
        waits = [outbox.add(_resolution(f"r{i}", "c1" if i < 3 else "c2")) for i in range(5)]
        await asyncio.wait_for(asyncio.gather(*waits), timeout=5)
        sent = sorted(
            (key, [x.request_id for x in decode(Resolutions, v).items])
            for _, key, v in producer.sent
        )
        assert sent == [(b"c1", ["r0", "r1", "r2"]), (b"c2", ["r3", "r4"])]

        failing = _Outbox(_Producer(OSError("broker gone")), "t", window_s=0.01)  # type: ignore[arg-type]
        lost = [failing.add(_resolution("r9", "c1")), failing.add(_resolution("r10", "c1"))]
        results = await asyncio.gather(*lost, return_exceptions=True)
        assert [type(r) for r in results] == [OSError, OSError]

    asyncio.run(run())
