"""The Faust application factory: one ``Settings`` in, one configured app out.

``create_app`` declares every topic of the topology and registers the agents
(``agents/``); it never reads the environment itself. The worker, the CLI and
the tests all build their app here, so they agree on topic names, partition
counts and serializers.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from faust.stores.memory import Store as MemoryStore
from faust.types import TableT, TopicT

from streams.campaign_directory import CampaignDirectory
from streams.commit_gate import CommitGate
from streams.faust_transport import Transport
from streams.key_groups import GroupedDict
from streams.local_state import mark_clean_shutdown, open_table_dir
from streams.logs import logging_config
from streams.metrics import Metrics
from streams.pipeline import SEP, PipelineConfig
from streams.settings import Settings
from streams.topics import TopicNames

log = logging.getLogger(__name__)

__all__ = ["XspApp", "XspTables", "XspTopics", "create_app"]


@dataclass(frozen=True, slots=True)
class XspTopics:
    """The Faust topic objects of one app (raw bytes in and out; ``streams.records`` decodes)."""

    names: TopicNames
    ad_requests: TopicT
    budget_requests: TopicT
    ad_responses: TopicT
    spend: TopicT
    campaigns: TopicT
    campaign_status: TopicT
    dlq: TopicT


@dataclass(frozen=True, slots=True)
class XspTables:
    """The changelog-backed tables: ``frequency`` (key user), ``budget`` (key campaign)."""

    frequency: TableT
    budget: TableT

    def changelog_topics(self) -> list[str]:
        """The changelog topic of each table (compacted, one partition per source partition)."""
        return [
            self.frequency.changelog_topic.get_topic_name(),
            self.budget.changelog_topic.get_topic_name(),
        ]


class XspApp(faust.App):
    """A Faust app that carries its ``Settings`` and topics, and uses xsp's transport."""

    xsp_settings: Settings
    xsp_topics: XspTopics
    xsp_tables: XspTables
    xsp_directory: CampaignDirectory
    xsp_pipeline: PipelineConfig
    xsp_metrics: Metrics
    # Closed by exactly-once commits, entered by agents for each event (streams/commit_gate.py).
    xsp_commit_gate: CommitGate

    _tables_opened = False  # set by ``open_local_tables`` in a worker process

    def _new_transport(self) -> Any:
        return Transport(self.conf.broker_consumer, self)

    def open_local_tables(self) -> bool:
        """Before a worker starts: keep local RocksDB stores only after a clean shutdown.

        Returns True if stores were discarded (they are rebuilt from the
        changelogs); see ``streams.local_state``. A no-op for ``memory://``.
        """
        if not self.xsp_settings.store.startswith("rocksdb"):
            return False
        self._tables_opened = True
        return open_table_dir(Path(self.conf.tabledir))

    async def on_stop(self) -> None:
        await super().on_stop()
        # Faust's on_stop stopped the consumer and flushed the producer: every
        # local table write is in its changelog now, so the stores may be reused.
        if self._tables_opened:
            mark_clean_shutdown(Path(self.conf.tabledir))


def create_app(settings: Settings, *, register_agents: bool = True) -> XspApp:
    """Build the Faust app for ``settings``.

    Guarantees: topics are declared with ``settings.partitions`` partitions
    (the campaigns topic compacted); keys and values are raw bytes; the web
    server binds to ``settings.web_host``; Faust's autodiscovery is off, so
    only the agents registered here run.
    """
    brokers = [f"kafka://{server.strip()}" for server in settings.bootstrap_servers.split(",")]
    app = XspApp(
        settings.app_id,
        broker=brokers,
        store=settings.store,
        datadir=str(settings.data_dir),
        autodiscover=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        key_serializer="raw",
        value_serializer="raw",
        processing_guarantee=settings.processing_guarantee,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_commit_interval=settings.effective_commit_interval_s,
        web_enabled=settings.web_enabled,
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        producer_linger_ms=settings.producer_linger_ms,
        table_standby_replicas=settings.standby_replicas,
        # Worker log lines as text (key=value) or one JSON object per line.
        logging_config=logging_config(settings.log_level, json=settings.log_format == "json"),
        Router="streams.faust_router:Router",
        Stream="streams.faust_stream:Stream",
        Worker="streams.faust_worker:Worker",
    )
    app.xsp_settings = settings
    names = TopicNames.from_prefix(settings.topic_prefix)
    app.xsp_topics = _declare_topics(app, names)
    app.xsp_tables = XspTables(
        frequency=_declare_table(app, "frequency"),
        budget=_declare_table(app, "budget"),
    )
    app.xsp_pipeline = PipelineConfig(
        budget_ttl_ms=settings.reservation_ttl_ms,
        frequency_ttl_ms=3 * settings.reservation_ttl_ms,
        max_hops=settings.vast_max_hops,
    )
    app.xsp_metrics = Metrics()
    app.xsp_commit_gate = CommitGate(on_commit=app.xsp_metrics.observe_commit_gate)
    app.xsp_directory = CampaignDirectory(
        settings.bootstrap_servers, names.campaigns, names.campaign_status
    )
    if register_agents:
        _register_agents(app)
    return app


def _register_agents(app: XspApp) -> None:
    from agents import (
        admit,
        budget,
        campaigns,
        commit_guard,
        observability,
        queries,
        resolve,
        spend,
        ticks,
    )

    @app.task
    async def start_campaign_directory() -> None:
        await app.xsp_directory.start()

    @app.task
    async def freeze_start_up_objects() -> None:
        # The ~87k objects of Faust, aiokafka and the modules live as long as
        # the worker, yet every gen-2 collection walked them: ~50 ms pauses
        # in the middle of traffic. Frozen, the same collection took 6 ms.
        await app.xsp_directory.wait_ready()
        gc.collect()
        gc.freeze()
        log.info("froze %d start-up objects out of garbage collection", gc.get_freeze_count())

    replay = app.xsp_settings.replay_mode
    # A replay rebuilds tables only: no HTTP, no clock of our own, nothing sent.
    resolver = None if replay else resolve.register(app)
    admit.register(app)
    budget.register(app, resolver)
    commit_guard.register(app)
    if replay:
        return
    observability.register(app)
    queries.register(app)
    spend.register(app)
    campaigns.register(app)
    ticks.register(app)


# Faust opens one RocksDB per table partition with 64 MiB write buffers (x3)
# and a 2 GiB block cache *each*: 2 tables x 4 partitions may grow to ~17 GiB,
# and RSS rose with every user written, whatever the data. Bounded per
# partition store: at most 2 x 8 MiB of memtables and a 16 MiB read cache.
# Other stores ignore these options.
ROCKSDB_OPTIONS: dict[str, int] = {
    "write_buffer_size": 8 * 1024**2,
    "max_write_buffer_number": 2,
    "target_file_size_base": 16 * 1024**2,
    "block_cache_size": 16 * 1024**2,
}


def _declare_table(app: faust.App, name: str) -> TableT:
    # Keys and values are bytes: values are canonical JSON from streams.pipeline and
    # Faust only stores and changelogs them. The types must be given: without them a
    # table decodes its changelog as JSON on recovery and hands back dicts.
    table = app.Table(
        name,
        default=None,
        partitions=app.conf.topic_partitions,
        key_type=bytes,
        value_type=bytes,
        options=dict(ROCKSDB_OPTIONS),  # a copy: Faust pops keys from the dict it is given
    )
    store: Any = table.data
    if isinstance(store, MemoryStore):
        # Reservation keys by campaign, so the budget agent's per-tick scan reads
        # one campaign's keys instead of filtering the whole table (streams.key_groups).
        store.data = GroupedDict((b"p:",), SEP.encode())
    return table


def _declare_topics(app: faust.App, names: TopicNames) -> XspTopics:
    def declare(name: str) -> TopicT:
        return app.topic(
            name,
            partitions=app.conf.topic_partitions,
            key_serializer="raw",
            value_serializer="raw",
            compacting=True if name in names.compacted() else None,
        )

    return XspTopics(
        names=names,
        ad_requests=declare(names.ad_requests),
        budget_requests=declare(names.budget_requests),
        ad_responses=declare(names.ad_responses),
        spend=declare(names.spend),
        campaigns=declare(names.campaigns),
        campaign_status=declare(names.campaign_status),
        dlq=declare(names.dlq),
    )
