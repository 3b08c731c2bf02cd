"""A real `xsp worker` subprocess answers valid requests and dead-letters invalid ones.

No campaign is configured here, so every valid request gets a ``no_fill``
decision straight from admit; the money pipeline has its own tests.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from streams.devstack import WorkerProcess
from streams.kafka_io import create_xsp_topics, produce, read_topic
from streams.records import AdRequest, DeadLetter, Decision, DecisionStatus, decode, encode
from streams.settings import Settings
from streams.topics import TopicNames

INVALID = [
    (b"user-x", b"{ not json"),
    (b"user-x", b'{"user_id":"u","timestamp":1}'),
    (b"user-x", b'{"request_id":"r","user_id":"u","timestamp":"noon"}'),
    (None, b"\xff\xfe\x00binary"),
    (b"user-x", b'{"request_id":"r","user_id":"u","timestamp":99999999999999}'),
]
REASONS = [
    "not JSON",
    "AdRequest.request_id is required",
    'AdRequest.timestamp must be an integer, got "noon"',
    "not UTF-8",
    "in the future",
]


def valid_requests(prefix: str, count: int) -> list[tuple[bytes, bytes]]:
    now = int(time.time() * 1000)
    items = []
    for i in range(count):
        request = AdRequest(
            request_id=f"{prefix}-{i}",
            user_id=f"user-{i % 5}",
            timestamp=now + i,
            params={"placement": "pre-roll"} if i % 2 else {},
        )
        items.append((request.user_id.encode(), encode(request)))
    return items


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
def test_worker_routes_valid_and_dead_letters_invalid(
    xsp_settings: Settings, store: str, tmp_path: Path
) -> None:
    settings = xsp_settings.with_overrides(store=store)
    names = TopicNames.from_prefix(settings.topic_prefix)
    bootstrap = settings.bootstrap_servers
    asyncio.run(create_xsp_topics(bootstrap, names, partitions=settings.partitions))

    first_batch = valid_requests("a", 30)
    mixed = first_batch[:15] + INVALID + first_batch[15:]
    asyncio.run(produce(bootstrap, names.ad_requests, mixed))

    worker = WorkerProcess(settings, tmp_path / "worker-1.log").start()
    try:
        forwarded = asyncio.run(
            read_topic(bootstrap, names.ad_responses, expected=30, timeout_s=60)
        )
        dead = asyncio.run(read_topic(bootstrap, names.dlq, expected=len(INVALID), timeout_s=30))
        assert worker.alive, worker.log_tail()
    finally:
        worker.kill()  # SIGKILL: the restart below must still see every request routed
    assert len(forwarded) == 30, worker.log_tail()
    decisions = [decode(Decision, m.value or b"") for m in forwarded]
    assert sorted(d.request_id for d in decisions) == sorted(f"a-{i}" for i in range(30))
    assert {d.status for d in decisions} == {DecisionStatus.NO_FILL}
    for message, decision in zip(forwarded, decisions, strict=True):
        assert message.key == decision.request_id.encode()

    letters = [decode(DeadLetter, m.value or b"") for m in dead]
    assert len(letters) == len(INVALID)
    sources = asyncio.run(read_topic(bootstrap, names.ad_requests, expected=len(mixed)))
    by_position = {(m.partition, m.offset): m for m in sources}
    for letter in letters:
        assert letter.stage == "admit"
        assert letter.source_topic == names.ad_requests
        source = by_position[(letter.source_partition, letter.source_offset)]
        assert letter.original == source.value
        assert letter.original_key == source.key
    reasons_by_original = {letter.original: letter.reason for letter in letters}
    for (_, raw), reason in zip(INVALID, REASONS, strict=True):
        assert reason in reasons_by_original[raw]

    # After a SIGKILL a new worker picks up where the group left off: new
    # requests are routed and nothing of the first batch is lost.
    second_batch = valid_requests("b", 10)
    asyncio.run(produce(bootstrap, names.ad_requests, second_batch))
    restarted = WorkerProcess(settings, tmp_path / "worker-2.log").start()
    try:
        ids: set[str] = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not {f"b-{i}" for i in range(10)} <= ids:
            messages = asyncio.run(read_topic(bootstrap, names.ad_responses, timeout_s=5))
            ids = {decode(Decision, m.value or b"").request_id for m in messages}
            time.sleep(0.5)
        assert restarted.alive, restarted.log_tail()
    finally:
        restarted.stop()
    expected_ids = {f"a-{i}" for i in range(30)} | {f"b-{i}" for i in range(10)}
    assert expected_ids <= ids, restarted.log_tail()
