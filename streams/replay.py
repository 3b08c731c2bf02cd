"""Replay: rebuild the tables from the topics under a new app id, and compare snapshots.

State is a fold over two ordered logs (``ad-requests`` for the frequency
table, ``budget-requests`` for the budget table). A replay runs a worker in
*replay mode* — only the two table agents, every message they would send
dropped (the live run already sent them), no clock ticks of its own — under
a fresh app id, so its tables are rebuilt from offset 0 into their own
changelog topics. ``table_snapshot`` folds a changelog topic into its final
key → value map; equal maps mean byte-identical tables. This is the audit
path that replaces the seed's DatabaseBackend.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.devstack import WorkerProcess
from streams.kafka_io import read_topic
from streams.lag import consumer_lag
from streams.settings import Settings
from streams.topics import TopicNames

__all__ = ["TABLES", "ReplayReport", "changelog_topic", "run_replay", "table_snapshot"]

TABLES = ("frequency", "budget")


def changelog_topic(app_id: str, table: str) -> str:
    """Faust's name for a table's changelog topic."""
    return f"{app_id}-{table}-changelog"


async def table_snapshot(bootstrap: str, app_id: str, table: str) -> dict[bytes, bytes]:
    """The final contents of ``table`` of ``app_id``: its changelog folded, deletes applied.

    Read committed: under exactly-once, writes of aborted transactions never count.
    """
    snapshot: dict[bytes, bytes] = {}
    changelog = changelog_topic(app_id, table)
    for message in await read_topic(
        bootstrap, changelog, timeout_s=60, isolation_level="read_committed"
    ):
        if message.key is None:
            continue
        if message.value is None:
            snapshot.pop(message.key, None)
        else:
            snapshot[message.key] = message.value
    return snapshot


@dataclass
class ReplayReport:
    """What a replay did: how long it took to catch up and how the tables compare."""

    source_app_id: str
    replay_app_id: str
    events: int = 0
    caught_up: bool = False
    seconds: float = 0.0
    tables: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def identical(self) -> bool:
        return bool(self.tables) and all(t["differing"] == 0 for t in self.tables.values())


async def _end_offsets(bootstrap: str, topics: list[str]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(consumer.partitions_for_topic(topic) or await _fetch(consumer, topic))
        ]
        return dict(await consumer.end_offsets(partitions))
    finally:
        await consumer.stop()


async def _fetch(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()
    return consumer.partitions_for_topic(topic) or set()


async def _seek_group_to(
    bootstrap: str, group_id: str, topics: list[str], timestamp_ms: int
) -> None:
    """Commit the first offsets at or after ``timestamp_ms`` for a fresh group."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id)
    await consumer.start()
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in await _fetch(consumer, t)]
        consumer.assign(partitions)
        found = await consumer.offsets_for_times({tp: timestamp_ms for tp in partitions})
        ends = await consumer.end_offsets(partitions)
        offsets = {
            tp: (found[tp].offset if found[tp] is not None else ends[tp]) for tp in partitions
        }
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


def run_replay(
    settings: Settings,
    *,
    replay_app_id: str,
    workdir: Path,
    timeout_s: float = 300.0,
    from_timestamp_ms: int | None = None,
    compare: bool = True,
    progress: bool = False,
) -> ReplayReport:
    """Rebuild the tables under ``replay_app_id`` and (optionally) compare them with the live ones.

    Returns once the replay worker's committed offsets reached the end
    offsets seen at the start (``caught_up``) or ``timeout_s`` passed.
    """
    names = TopicNames.from_prefix(settings.topic_prefix)
    sources = [names.ad_requests, names.budget_requests]
    bootstrap = settings.bootstrap_servers
    report = ReplayReport(source_app_id=settings.app_id, replay_app_id=replay_app_id)
    targets = asyncio.run(_end_offsets(bootstrap, sources))
    if from_timestamp_ms is not None:
        asyncio.run(_seek_group_to(bootstrap, replay_app_id, sources, from_timestamp_ms))
    replay_settings = settings.with_overrides(
        app_id=replay_app_id, replay_mode=True, web_enabled=False, data_dir=workdir / "replay-data"
    )
    started = time.monotonic()
    worker = WorkerProcess(replay_settings, workdir / "replay-worker.log").start()
    try:
        while time.monotonic() - started < timeout_s:
            rows = asyncio.run(consumer_lag(bootstrap, replay_app_id, sources))
            committed = {TopicPartition(r.topic, r.partition): (r.committed or 0) for r in rows}
            done = sum(min(committed.get(tp, 0), end) for tp, end in targets.items())
            report.events = done
            if progress:
                total = sum(targets.values())
                print(f"[xsp replay] {done}/{total} events", end="\r", flush=True)
            if rows and all(committed.get(tp, 0) >= end for tp, end in targets.items()):
                report.caught_up = True
                break
            if not worker.alive:
                raise RuntimeError(f"replay worker exited:\n{worker.log_tail()}")
            time.sleep(0.5)
    finally:
        worker.stop()
    report.seconds = round(time.monotonic() - started, 2)
    if compare:
        for table in TABLES:
            live = asyncio.run(table_snapshot(bootstrap, settings.app_id, table))
            rebuilt = asyncio.run(table_snapshot(bootstrap, replay_app_id, table))
            keys = live.keys() | rebuilt.keys()
            report.tables[table] = {
                "live_keys": len(live),
                "replay_keys": len(rebuilt),
                "differing": sum(1 for k in keys if live.get(k) != rebuilt.get(k)),
            }
    return report
