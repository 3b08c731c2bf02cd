"""resolve: follow each request's VAST chain over HTTP and record the outcome.

Source ``resolve-requests`` (key request id); each Resolution goes to
``budget-requests`` (key campaign), where the budget agent settles it. The
recorded Resolutions are what a replay folds, so it never calls an ad server.
Stateless and the only concurrent stage: it takes up to
``XSP_RESOLVE_CONCURRENCY`` requests at a time and resolves them together,
instead of Faust's ``concurrency=N`` (which can lose acks,
faust-streaming#606). A batch's offsets are acknowledged only after all of
its Resolutions were handed to the producer, so a crash re-resolves rather
than loses requests.
"""

from __future__ import annotations

import asyncio
import ipaddress

from faust import StreamT

from agents.wiring import dead_letter
from streams.app import XspApp
from streams.pipeline import DeadLetterError, decode_or_dead_letter
from streams.records import ResolveRequest, encode
from streams.resolution import resolve_request
from streams.settings import Settings
from streams.vast import FetchConfig, get_shared_client

__all__ = ["fetch_config", "register"]

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


def register(app: XspApp) -> None:
    """Attach the ``resolve`` agent to ``app``."""
    settings = app.xsp_settings
    topics = app.xsp_topics
    config = fetch_config(settings)
    metrics = app.xsp_metrics

    @app.agent(topics.resolve_requests, name=STAGE, concurrency=1)
    async def resolve(stream: StreamT) -> None:
        client = get_shared_client(config)
        async for events in stream.take_events(settings.resolve_concurrency, within=0.005):
            requests = []
            for event in events:
                try:
                    requests.append(decode_or_dead_letter(ResolveRequest, event.message.value))
                except DeadLetterError as exc:
                    await dead_letter(app, event, STAGE, str(exc))
            metrics.event_in(STAGE, topics.names.resolve_requests, len(events))
            resolutions = await asyncio.gather(
                *(resolve_request(r, client, timeout_s=settings.vast_timeout_s) for r in requests)
            )
            for resolution in resolutions:
                await topics.budget_requests.send(
                    key=(resolution.campaign_id or "").encode(), value=encode(resolution)
                )
                metrics.event_out(STAGE, topics.names.budget_requests)
                if resolution.vast_error_code is not None:
                    metrics.vast_error(resolution.vast_error_code)
                for hop, ms in resolution.timings_ms.items():
                    if hop != "total":
                        metrics.observe_hop(hop, ms / 1000)
