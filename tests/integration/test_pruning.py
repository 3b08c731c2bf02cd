"""Pruning on a real worker: records past the dedupe horizon are deleted, and only those;
a pruning tick that cannot find any skips reading the records (``streams.record_floor``).

A record's time is the broker timestamp of the message that wrote it, so the
test writes "old" records by producing requests whose timestamp lies two
hours back (a producer may set it), and sends the pruning ticks itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaProducer

from streams.faust_router import partition_of
from streams.kafka_io import read_topic
from streams.records import AdRequest, Tick, encode
from streams.replay import changelog_topic
from tests.conftest import Stack
from tests.integration.test_money import await_decisions, campaign
from tests.integration.test_resolve_stage import scrape

HOUR_MS = 3_600_000


async def _send(
    stack: Stack, topic: str, items: list[tuple[bytes | None, bytes, int | None, int]]
) -> None:
    """Send (key, value, partition, broker timestamp ms) items and wait for every ack."""
    producer = AIOKafkaProducer(bootstrap_servers=stack.settings.bootstrap_servers, acks="all")
    await producer.start()
    try:
        sent = [
            await producer.send(topic, key=key, value=value, partition=p, timestamp_ms=ts)
            for key, value, p, ts in items
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def _requests(stack: Stack, prefix: str, count: int, written_at_ms: int) -> set[str]:
    now = int(time.time() * 1000)
    requests = [
        AdRequest(request_id=f"{prefix}-{i}", user_id=f"{prefix}-user-{i}", timestamp=now + i)
        for i in range(count)
    ]
    items = [(r.user_id.encode(), encode(r), None, written_at_ms) for r in requests]
    asyncio.run(_send(stack, stack.names.ad_requests, items))
    return {r.request_id for r in requests}


def _prune_ticks(stack: Stack) -> None:
    """One pruning tick, stamped now, into every partition of admit's topic."""
    now = int(time.time() * 1000)
    tick = encode(Tick(timestamp=now, prune=True))
    items = [(None, tick, p, now) for p in range(stack.settings.partitions)]
    asyncio.run(_send(stack, stack.names.ad_requests, items))


def _prune_counts(stack: Stack, worker: object) -> dict[str, float]:
    samples = scrape(f"{stack.worker_url(worker)}/metrics")
    return {
        result: samples.get(
            ("xsp_prune_ticks_total", (("result", result), ("table", "frequency"))), 0.0
        )
        for result in ("scanned", "skipped")
    }


def _await_prune_counts(
    stack: Stack, worker: object, done: Callable[[dict[str, float]], bool]
) -> dict[str, float]:
    deadline = time.monotonic() + 30
    counts = _prune_counts(stack, worker)
    while not done(counts) and time.monotonic() < deadline:
        time.sleep(0.3)
        counts = _prune_counts(stack, worker)
    return counts


def _record_keys(stack: Stack, app_id: str) -> tuple[set[str], set[str]]:
    """The frequency table's outcome-record keys: (written, deleted since)."""
    history = asyncio.run(
        read_topic(
            stack.settings.bootstrap_servers, changelog_topic(app_id, "frequency"), timeout_s=30
        )
    )
    written = {m.key.decode() for m in history if m.key and m.key.startswith(b"r:") and m.value}
    deleted = {m.key.decode() for m in history if m.key and m.key.startswith(b"r:") and not m.value}
    return written, deleted


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
def test_pruning_deletes_exactly_the_records_past_the_horizon(xsp_stack: Stack, store: str) -> None:
    xsp_stack.put_campaigns([campaign(xsp_stack, "prune")])
    worker = xsp_stack.start_worker(store=store)
    partitions = xsp_stack.settings.partitions
    now = int(time.time() * 1000)

    fresh = _requests(xsp_stack, "fresh", 8, written_at_ms=now)
    await_decisions(xsp_stack, fresh)
    # The worker's first tick prunes (before or among these requests), so every
    # partition has read its records once and knows the oldest is fresh.
    start = _await_prune_counts(xsp_stack, worker, lambda c: c["scanned"] >= partitions)
    assert start["scanned"] == partitions, (start, worker.log_tail())
    # The next ticks read nothing.
    _prune_ticks(xsp_stack)
    counts = _await_prune_counts(
        xsp_stack, worker, lambda c: c["skipped"] >= start["skipped"] + partitions
    )
    assert counts == {"scanned": partitions, "skipped": start["skipped"] + partitions}, counts

    # Requests written two hours ago (by their broker timestamp) leave old records;
    # the writes lower their partitions' floors, so the next ticks read and delete them.
    old = _requests(xsp_stack, "old", 8, written_at_ms=now - 2 * HOUR_MS)
    await_decisions(xsp_stack, old)
    _prune_ticks(xsp_stack)
    deadline = time.monotonic() + 30
    written, deleted = _record_keys(xsp_stack, worker.settings.app_id)
    while len(deleted) < len(old) and time.monotonic() < deadline:
        time.sleep(0.5)
        written, deleted = _record_keys(xsp_stack, worker.settings.app_id)
    old_keys = {k for k in written if k.split("\x1f")[-1] in old}
    fresh_keys = {k for k in written if k.split("\x1f")[-1] in fresh}
    assert len(old_keys) == len(old) and len(fresh_keys) == len(fresh)
    assert deleted == old_keys, worker.log_tail()
    # Only the partitions that received old records read them again.
    with_old = {partition_of(f"old-user-{i}".encode(), partitions) for i in range(len(old))}
    last = _await_prune_counts(
        xsp_stack,
        worker,
        lambda c: c["scanned"] + c["skipped"] >= counts["scanned"] + counts["skipped"] + partitions,
    )
    assert last["scanned"] - counts["scanned"] == len(with_old), last
    assert last["skipped"] - counts["skipped"] == partitions - len(with_old), last
