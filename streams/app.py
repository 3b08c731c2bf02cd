"""The Faust application factory: one ``Settings`` in, one configured app out.

``create_app`` declares every topic of the topology and registers the agents
(``agents/``); it never reads the environment itself. The worker, the CLI and
the tests all build their app here, so they agree on topic names, partition
counts and serializers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust
from faust.types import TopicT

from streams.faust_transport import Transport
from streams.settings import Settings
from streams.topics import TopicNames

__all__ = ["XspApp", "XspTopics", "create_app"]


@dataclass(frozen=True, slots=True)
class XspTopics:
    """The Faust topic objects of one app (raw bytes in and out; ``streams.records`` decodes)."""

    names: TopicNames
    ad_requests: TopicT
    budget_requests: TopicT
    resolve_requests: TopicT
    resolutions: TopicT
    ad_responses: TopicT
    spend: TopicT
    campaigns: TopicT
    dlq: TopicT


class XspApp(faust.App):
    """A Faust app that carries its ``Settings`` and topics, and uses xsp's transport."""

    xsp_settings: Settings
    xsp_topics: XspTopics

    def _new_transport(self) -> Any:
        return Transport(self.conf.broker_consumer, self)


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
        web_enabled=settings.web_enabled,
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        producer_linger_ms=1,
    )
    app.xsp_settings = settings
    app.xsp_topics = _declare_topics(app, TopicNames.from_prefix(settings.topic_prefix))
    if register_agents:
        from agents import admit

        admit.register(app)
    return app


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
        resolve_requests=declare(names.resolve_requests),
        resolutions=declare(names.resolutions),
        ad_responses=declare(names.ad_responses),
        spend=declare(names.spend),
        campaigns=declare(names.campaigns),
        dlq=declare(names.dlq),
    )
