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
    """Records what the outbox sends; acks once ``release`` is set; ``error`` fails every send."""

    def __init__(self, error: Exception | None = None) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.error = error
        self.release = asyncio.Event()
        self.release.set()

    async def send(self, topic: str, *, key: bytes, value: bytes) -> asyncio.Future[None]:
        if self.error is not None:
            raise self.error
        self.sent.append((topic, key, value))
        return asyncio.ensure_future(self.release.wait())

    def batches(self) -> list[tuple[bytes, list[str]]]:
        return [
            (key, [x.request_id for x in decode(Resolutions, v).items]) for _, key, v in self.sent
        ]


def _resolution(rid: str, campaign_id: str) -> Resolution:
    return Resolution(request_id=rid, status=DecisionStatus.NO_FILL, campaign_id=campaign_id)


def test_resolutions_of_one_loop_turn_leave_together_one_message_per_campaign() -> None:
    async def run() -> None:
        producer = _Producer()
        outbox = _Outbox(producer, "budget-requests")  # type: ignore[arg-type]
        waits = [outbox.add(_resolution(f"r{i}", "c1" if i < 3 else "c2")) for i in range(5)]
        await asyncio.wait_for(asyncio.gather(*waits), timeout=5)
        assert sorted(producer.batches()) == [(b"c1", ["r0", "r1", "r2"]), (b"c2", ["r3", "r4"])]

    asyncio.run(run())


def test_a_lone_resolution_waits_for_nothing_and_batches_form_only_while_one_is_in_flight() -> None:
    async def run() -> None:
        producer = _Producer()
        outbox = _Outbox(producer, "budget-requests")  # type: ignore[arg-type]
        producer.release.clear()  # the broker has not acknowledged yet
        first = outbox.add(_resolution("r0", "c1"))
        await asyncio.sleep(0.01)
        assert producer.batches() == [(b"c1", ["r0"])]  # sent without waiting for company
        later = [outbox.add(_resolution(f"r{i}", "c1")) for i in (1, 2)]
        other = outbox.add(_resolution("r3", "c2"))  # another campaign is not held back
        await asyncio.sleep(0.01)
        assert producer.batches() == [(b"c1", ["r0"]), (b"c2", ["r3"])]
        assert not first.done() and not any(w.done() for w in later)
        producer.release.set()
        await asyncio.wait_for(asyncio.gather(first, other, *later), timeout=5)
        assert producer.batches() == [(b"c1", ["r0"]), (b"c2", ["r3"]), (b"c1", ["r1", "r2"])]

    asyncio.run(run())


def test_a_failed_send_fails_its_requests_and_close_cancels_the_unsent() -> None:
    async def run() -> None:
        failing = _Outbox(_Producer(OSError("broker gone")), "t")  # type: ignore[arg-type]
        lost = [failing.add(_resolution("r9", "c1")), failing.add(_resolution("r10", "c1"))]
        results = await asyncio.gather(*lost, return_exceptions=True)
        assert [type(r) for r in results] == [OSError, OSError]

        producer = _Producer()
        producer.release.clear()
        outbox = _Outbox(producer, "t")  # type: ignore[arg-type]
        in_flight = outbox.add(_resolution("r1", "c1"))
        await asyncio.sleep(0.01)
        queued = outbox.add(_resolution("r2", "c1"))
        outbox.close()
        await asyncio.sleep(0.01)
        assert in_flight.cancelled() and queued.cancelled()
        assert producer.batches() == [(b"c1", ["r1"])]

    asyncio.run(run())
