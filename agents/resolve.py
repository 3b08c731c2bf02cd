"""resolve: follow each request's VAST chain over HTTP and record the outcome.

Source ``resolve-requests`` (key request id); each Resolution goes to
``budget-requests`` (key campaign), where the budget agent settles it. The
recorded Resolutions are what a replay folds, so it never calls an ad server.

This stage is stateless and the only concurrent one, and it is deliberately
*not* a Faust agent: Faust's conductor delivers every topic of a worker
through one loop that waits whenever the producer buffer is full or any
agent's queue is, so a burst queued for ``admit`` held resolutions back for
16 s in a 10,000-request test (and the budget agent then expired every
reservation). Here the stage has its own aiokafka consumer (group
``<app id>-resolve``) and producer inside the worker process: it takes up
to ``XSP_RESOLVE_CONCURRENCY`` requests, resolves them together, sends
their Resolutions and only then commits the offsets — at least once, never
lost (and not Faust's ``concurrency=N``, which can lose acks,
faust-streaming#606).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from streams.app import XspApp
from streams.records import ContractError, DeadLetter, ResolveRequest, decode, encode
from streams.resolution import resolve_request
from streams.settings import Settings
from streams.vast import FetchConfig, VastHttpClient

__all__ = ["fetch_config", "register", "resolve_group"]

log = logging.getLogger(__name__)
STAGE = "resolve"


def fetch_config(settings: Settings) -> FetchConfig:
    """The HTTP fetcher's configuration for a worker (SSRF allow-list from the settings)."""
    networks = tuple(
        str(ipaddress.ip_network(cidr.strip(), strict=False))
        for cidr in settings.vast_allowed_networks.split(",")
        if cidr.strip()
    )
    return FetchConfig(
        total_timeout_s=settings.vast_timeout_s,
        per_hop_timeout_s=min(settings.vast_timeout_s, FetchConfig().per_hop_timeout_s),
        allowed_networks=networks,
        pool_size=max(settings.resolve_concurrency, 16),
    )


def resolve_group(settings: Settings) -> str:
    """The consumer group of the resolve stage (watch its lag like the app's)."""
    return f"{settings.app_id}-resolve"


def register(app: XspApp) -> None:
    """Run the resolve stage for the lifetime of ``app``'s worker."""

    @app.task
    async def resolve_stage() -> None:
        while True:
            try:
                await _run(app)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("resolve stage failed; restarting in 1 s")
                await asyncio.sleep(1.0)


async def _run(app: XspApp) -> None:
    settings = app.xsp_settings
    names = app.xsp_topics.names
    metrics = app.xsp_metrics
    consumer = AIOKafkaConsumer(
        names.resolve_requests,
        bootstrap_servers=settings.bootstrap_servers,
        group_id=resolve_group(settings),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=settings.consumer_fetch_max_wait_ms,
        session_timeout_ms=int(settings.session_timeout_s * 1000),
        heartbeat_interval_ms=int(settings.heartbeat_interval_s * 1000),
        rebalance_timeout_ms=int(settings.rebalance_timeout_s * 1000),
        # Under exactly-once, a ResolveRequest from an aborted budget transaction
        # must not be resolved: its reservation never existed.
        isolation_level=(
            "read_committed"
            if settings.processing_guarantee == "exactly_once"
            else "read_uncommitted"
        ),
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        acks="all",
        linger_ms=settings.producer_linger_ms,
    )
    client = VastHttpClient(fetch_config(settings))
    await producer.start()
    await consumer.start()
    try:
        while True:
            batch = await consumer.getmany(
                timeout_ms=1000, max_records=settings.resolve_concurrency
            )
            records = [r for rs in batch.values() for r in rs]
            if not records:
                continue
            metrics.event_in(STAGE, names.resolve_requests, len(records))
            requests = []
            lettered = []  # delivery futures: the commit below waits for these too
            for record in records:
                try:
                    requests.append(decode(ResolveRequest, record.value or b""))
                except ContractError as exc:
                    letter = DeadLetter(
                        reason=str(exc),
                        stage=STAGE,
                        source_topic=record.topic,
                        source_partition=record.partition,
                        source_offset=record.offset,
                        original=record.value or b"",
                        original_key=record.key,
                        dead_at=record.timestamp,
                    )
                    lettered.append(
                        await producer.send(names.dlq, key=record.key, value=encode(letter))
                    )
                    metrics.dead_letter(STAGE)
            resolutions = await asyncio.gather(
                *(resolve_request(r, client, timeout_s=settings.vast_timeout_s) for r in requests)
            )
            sent = [
                await producer.send(
                    names.budget_requests,
                    key=(resolution.campaign_id or "").encode(),
                    value=encode(resolution),
                )
                for resolution in resolutions
            ]
            await asyncio.gather(*sent, *lettered)
            await consumer.commit()
            for resolution in resolutions:
                metrics.event_out(STAGE, names.budget_requests)
                if resolution.vast_error_code is not None:
                    metrics.vast_error(resolution.vast_error_code)
                for hop, ms in resolution.timings_ms.items():
                    if hop != "total":
                        metrics.observe_hop(hop, ms / 1000)
    finally:
        with contextlib.suppress(KafkaError, asyncio.CancelledError):
            await consumer.stop()
        with contextlib.suppress(KafkaError, asyncio.CancelledError):
            await producer.stop()
        await client.aclose()
