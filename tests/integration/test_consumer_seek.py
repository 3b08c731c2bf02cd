"""A fetch Faust drops while its flow is stopped is read again, even before any commit.

Faust stops its flow when a rebalance starts. Records that a fetch already
in progress returns then are dropped, and Faust calls ``perform_seek`` to
go back to the committed offsets. aiokafka does not seek a partition whose
group has no commit, and Faust's revocation forgets the committed offset it
knew: xsp's consumer then took the dropped fetch's position as the start,
and the first records of such a partition were never processed while the
commit went past them (chaos runs lost requests at offsets 0-5 of one or
two ad-requests partitions this way). This test runs a real Faust app in
this process against the real broker, stops its flow and forgets the
committed offset as a revocation does, sends records into the dropped
fetch, and requires every one of them to be processed once the flow
resumes, and the commit to start at the log's first offset.
"""

from __future__ import annotations

import asyncio

from streams.settings import Settings
from tests.integration.inprocess_app import running_app, send, until


async def _dropped_fetch_is_read_again(settings: Settings) -> None:
    async with running_app(settings) as running:
        app, source, processed = running.app, running.source, running.processed
        consumer, tp = app.consumer, running.tp
        # A first record, processed: the fetch loop is now running and back in a fetch.
        await send(settings, source, [b"first"])
        await until(lambda: processed == [0], 60, "the first record")
        await asyncio.sleep(0.2)
        # What a rebalance's start does: stop the flow, forget the committed offset.
        consumer.stop_flow()
        consumer._committed_offset.pop(tp, None)
        await send(settings, source, [f"record-{index}".encode() for index in range(1, 11)])
        # The fetch loop was waiting in aiokafka's getmany: it gets these records,
        # finds the flow stopped, drops them and seeks.
        await asyncio.sleep(1.5)
        assert processed == [0], "records were processed while the flow was stopped"
        start = consumer._committed_offset.get(tp)
        assert start is not None, "no fetch was dropped while the flow was stopped: nothing tested"
        consumer.resume_flow()
        await until(lambda: len(set(processed)) >= 11, 30, "the dropped records")
        assert sorted(set(processed)) == list(range(11))
        assert start == 0, f"commits would start at {start}, not at the log's first offset"


async def _acks_refused_while_revoking(settings: Settings) -> None:
    async with running_app(settings) as running:
        app, source, processed = running.app, running.source, running.processed
        consumer, tp = app.consumer, running.tp
        registry = app.xsp_metrics.registry

        def refused() -> float:
            value = registry.get_sample_value("xsp_acks_refused_total", {"reason": "revoking"})
            return value or 0.0

        await send(settings, source, [b"first"])
        await until(lambda: 0 in consumer._acked_index[tp], 60, "the first record's ack")
        # Between the start of a revocation and the next assignment nothing counts as done.
        consumer._revoking = True
        await send(settings, source, [b"second"])
        await until(lambda: refused() == 1, 10, "the second record's refused ack")
        assert processed == [0, 1]
        assert 1 not in consumer._acked_index[tp], "a message processed while revoking was acked"


async def _read_offset_drops_nothing(settings: Settings) -> None:
    async with running_app(settings) as running:
        consumer, processed = running.app.consumer, running.processed
        await send(settings, running.source, [b"first"])
        await until(lambda: processed == [0], 60, "the first record")
        # What Faust's fetch loop records when a rebalance cancels the hand-over of a
        # fetched message to the streams: the partition counts as read past a message
        # no stream got, and the seek back to the committed offset fetches it again.
        consumer._read_offset[running.tp] = 10
        await send(settings, running.source, [f"record-{index}".encode() for index in range(1, 6)])
        await until(lambda: len(processed) >= 6, 30, "the records below the read offset")
        assert processed == list(range(6))


def test_a_message_below_the_read_offset_is_still_processed(xsp_settings: Settings) -> None:
    """Faust's read offset may point past messages its streams never got (see
    ``streams/faust_transport.py``, ``_UnreportedReadOffsets``): it must drop nothing."""
    asyncio.run(_read_offset_drops_nothing(xsp_settings))


def test_acks_are_refused_while_partitions_are_being_revoked(xsp_settings: Settings) -> None:
    """An agent that takes one event at a time: its acks reach xsp's consumer (not inlined)."""
    asyncio.run(_acks_refused_while_revoking(xsp_settings))


def test_a_dropped_fetch_is_read_again_before_any_commit(xsp_settings: Settings) -> None:
    asyncio.run(_dropped_fetch_is_read_again(xsp_settings))
