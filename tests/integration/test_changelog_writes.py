"""Table writes reach their changelogs through xsp's own path (``TableStore.send_changelog``).

Since session 18 a table write puts the row into the local store and hands
its changelog record to the producer itself instead of Faust's
``table[key] = value`` machinery. What Faust did besides sending must still
happen: each acked record moves the RocksDB store's persisted offset (the
offset a restarted worker resumes its changelog reading from). Checked on a
real worker stopped cleanly: every partition's store must have persisted the
offset of its changelog's last record.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from rocksdict import AccessType, Rdict

from streams.kafka_io import produce, read_topic
from streams.records import AdRequest, encode
from streams.replay import changelog_topic
from tests.conftest import Stack
from tests.integration.test_money import await_decisions, campaign

# Faust's RocksDB store keeps its persisted changelog offset under this key.
OFFSET_KEY = b"__faust\0offset__"


def _last_offsets(stack: Stack, topic: str) -> dict[int, int]:
    history = asyncio.run(read_topic(stack.settings.bootstrap_servers, topic, timeout_s=30))
    last: dict[int, int] = {}
    for message in history:
        last[message.partition] = max(last.get(message.partition, -1), message.offset)
    return last


def _persisted_offset(data_dir: Path, table: str, partition: int) -> int | None:
    [path] = data_dir.rglob(f"{table}-{partition}.db")
    db = Rdict(str(path), access_type=AccessType.read_only())
    try:
        raw = db.get(OFFSET_KEY)
    finally:
        db.close()
    return None if raw is None else int(raw)


def test_a_clean_stop_leaves_every_store_at_its_changelog_end(xsp_stack: Stack) -> None:
    xsp_stack.put_campaigns([campaign(xsp_stack, "persist")])
    worker = xsp_stack.start_worker(store="rocksdb://")
    now = int(time.time() * 1000)
    requests = [
        AdRequest(request_id=f"persist-{i}", user_id=f"persist-user-{i}", timestamp=now + i)
        for i in range(24)
    ]
    items = [(r.user_id.encode(), encode(r)) for r in requests]
    asyncio.run(produce(xsp_stack.settings.bootstrap_servers, xsp_stack.names.ad_requests, items))
    decisions = await_decisions(xsp_stack, {r.request_id for r in requests})
    assert {d[0].status for d in decisions.values()} == {"filled"}
    worker.stop()
    assert worker.process is not None and worker.process.returncode == 0, worker.log_tail()

    for table in ("frequency", "budget"):
        last = _last_offsets(xsp_stack, changelog_topic(worker.settings.app_id, table))
        # 24 users over 4 partitions and one campaign: both tables wrote something.
        assert last, table
        for partition, offset in last.items():
            persisted = _persisted_offset(worker.settings.data_dir, table, partition)
            assert persisted == offset, (table, partition, persisted, offset)
