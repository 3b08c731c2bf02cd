"""admit: validate ad requests; invalid ones go to the dead-letter topic, valid ones onwards.

Source ``ad-requests`` (key ``user_id``), sinks ``budget-requests`` and ``dlq``.
Runs with concurrency 1 because later it writes the per-user frequency table.
Invalid input never stops the worker: every failure becomes a DeadLetter.
"""

from __future__ import annotations

import logging
import time

from faust import StreamT

from streams.admission import validate_ad_request
from streams.app import XspApp
from streams.records import ContractError, DeadLetter, encode

__all__ = ["register"]

log = logging.getLogger(__name__)
STAGE = "admit"


def register(app: XspApp) -> None:
    """Attach the ``admit`` agent to ``app``."""
    topics = app.xsp_topics
    max_skew_ms = app.xsp_settings.max_future_skew_ms

    @app.agent(topics.ad_requests, name=STAGE, concurrency=1)
    async def admit(stream: StreamT) -> None:
        async for event in stream.events():
            message = event.message
            now_ms = int(time.time() * 1000)
            try:
                request = validate_ad_request(
                    message.value, now_ms=now_ms, max_future_skew_ms=max_skew_ms
                )
            except ContractError as exc:
                dead = DeadLetter(
                    reason=str(exc),
                    stage=STAGE,
                    source_topic=message.topic,
                    source_partition=message.partition,
                    source_offset=message.offset,
                    original=message.value or b"",
                    original_key=message.key,
                    dead_at=now_ms,
                )
                log.info(
                    "dead-lettered %s:%d@%d: %s",
                    message.topic,
                    message.partition,
                    message.offset,
                    exc,
                )
                await topics.dlq.send(key=message.key, value=encode(dead))
                continue
            route_key = request.campaign_hint or request.user_id
            await topics.budget_requests.send(key=route_key.encode(), value=encode(request))
