"""Every worker's copy of all campaigns: the compacted ``campaigns`` and ``campaign-status`` topics.

Why not a Faust ``GlobalTable``: with more than one worker instance it is
known to stop updating (faust-streaming/faust#283, open), and a campaign
change that one worker never sees would let it serve a paused campaign. This
directory is the same idea done plainly: one aiokafka consumer per worker,
no consumer group, assigned every partition of both topics, reading from the
beginning and then following them. Agents ``await directory.wait_ready()``
before their first event, so no request is judged against a half-loaded
directory.

Invalid configs are skipped here (and logged once per offset); the
``campaigns`` agent dead-letters them, so exactly one DLQ record is written
however many workers run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams import json_codec
from streams.campaign import Campaign, CampaignError, GlobalCaps, parse_campaign, parse_global_caps
from streams.kafka_io import at_end

__all__ = ["GLOBAL_CAPS_KEY", "CampaignDirectory", "DirectoryView", "decode_campaign_value"]

log = logging.getLogger(__name__)

GLOBAL_CAPS_KEY = "__global__"
"""The key, in the campaigns topic, of the optional global per-user caps."""


def decode_campaign_value(key: str, raw: bytes) -> Campaign | GlobalCaps:
    """Parse one campaigns-topic value; raise ``CampaignError`` with the reason.

    The key must equal the campaign id, so a compacted topic can never hold
    two configs for one campaign under different keys.
    """
    try:
        obj = json_codec.loads(raw)
    except json_codec.JSONDecodeError as exc:
        raise CampaignError(f"campaign config is not JSON: {exc}") from None
    if key == GLOBAL_CAPS_KEY:
        return parse_global_caps(obj)
    campaign = parse_campaign(obj)
    if campaign.campaign_id != key:
        raise CampaignError(
            f"message key {key!r} differs from campaign_id {campaign.campaign_id!r}"
        )
    return campaign


@dataclass
class DirectoryView:
    """A snapshot-able view of the directory: campaigns, exhausted flags, global caps."""

    campaigns: dict[str, Campaign] = field(default_factory=dict)
    exhausted: dict[str, str] = field(default_factory=dict)
    global_caps: GlobalCaps | None = None

    def by_priority(self) -> list[Campaign]:
        """Campaigns in the order admit tries them: priority high→low, then id."""
        return sorted(self.campaigns.values(), key=lambda c: (-c.priority, c.campaign_id))

    def apply_campaign(self, key: str, raw: bytes | None) -> None:
        if raw is None:
            self.campaigns.pop(key, None)
            if key == GLOBAL_CAPS_KEY:
                self.global_caps = None
            return
        value = decode_campaign_value(key, raw)
        if isinstance(value, GlobalCaps):
            self.global_caps = value
        else:
            self.campaigns[key] = value

    def apply_status(self, key: str, raw: bytes | None) -> None:
        """``campaign-status`` values: ``{"exhausted": bool, "reason": str}``; None clears."""
        if raw is None:
            self.exhausted.pop(key, None)
            return
        try:
            status = json_codec.loads(raw)
        except json_codec.JSONDecodeError:
            return
        if isinstance(status, dict) and status.get("exhausted"):
            self.exhausted[key] = str(status.get("reason", "exhausted"))
        else:
            self.exhausted.pop(key, None)


class CampaignDirectory:
    """Follows the campaigns and campaign-status topics into a ``DirectoryView``."""

    def __init__(self, bootstrap_servers: str, campaigns_topic: str, status_topic: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.campaigns_topic = campaigns_topic
        self.status_topic = status_topic
        self.view = DirectoryView()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start following; returns at once (use ``wait_ready`` to wait for the backlog)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="campaign-directory")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait_ready(self) -> None:
        """Return once everything written before the worker started has been read."""
        await self._ready.wait()

    async def _run(self) -> None:
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("campaign directory lost its consumer; reconnecting")
                await asyncio.sleep(1.0)

    async def _follow(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
            # Status records may come from exactly-once (transactional) budget agents.
            isolation_level="read_committed",
        )
        await consumer.start()
        try:
            partitions = await self._assign_all(consumer)
            await consumer.seek_to_beginning(*partitions)
            backlog_end = await consumer.end_offsets(partitions)
            while True:
                batch = await consumer.getmany(timeout_ms=500)
                for tp, records in batch.items():
                    for record in records:
                        self._apply(tp.topic, record.key, record.value, record.offset)
                if not self._ready.is_set() and await at_end(consumer, backlog_end):
                    log.info(
                        "campaign directory ready: %d campaigns, %d exhausted",
                        len(self.view.campaigns),
                        len(self.view.exhausted),
                    )
                    self._ready.set()
        finally:
            await consumer.stop()

    async def _assign_all(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        while True:
            partitions = []
            for topic in (self.campaigns_topic, self.status_topic):
                found = consumer.partitions_for_topic(topic) or set()
                partitions += [TopicPartition(topic, p) for p in sorted(found)]
            topics_seen = {tp.topic for tp in partitions}
            if topics_seen == {self.campaigns_topic, self.status_topic}:
                consumer.assign(partitions)
                return partitions
            await consumer._client.force_metadata_update()
            await asyncio.sleep(0.5)

    def _apply(self, topic: str, key: bytes | None, value: bytes | None, offset: int) -> None:
        if key is None:
            return
        name = key.decode("utf-8", errors="replace")
        try:
            if topic == self.campaigns_topic:
                self.view.apply_campaign(name, value)
            else:
                self.view.apply_status(name, value)
        except CampaignError as exc:
            log.warning("skipping invalid campaign %r at offset %d: %s", name, offset, exc)
