"""admit: validate ad requests, dedupe, choose a campaign, check caps and reserve a slot.

Sources ``ad-requests`` and ``frequency-settles`` (both keyed by user) — one
agent, so the frequency table has exactly one writer and every write lands
in the changelog partition of its user. Concurrency 1 (DESIGN: table
writers never run concurrently). Invalid input never stops the worker: it
goes to the dead-letter topic with the reason.
"""

from __future__ import annotations

import logging
import time

from faust import StreamT

from agents.wiring import Router, TableStore, dead_letter
from streams.admission import validate_ad_request
from streams.app import XspApp
from streams.pipeline import (
    DeadLetterError,
    decode_or_dead_letter,
    handle_ad_request,
    handle_frequency_settle,
    prune_records,
)
from streams.records import ContractError, FrequencySettle, Tick, message_kind

log = logging.getLogger(__name__)

__all__ = ["register"]

STAGE = "admit"


def register(app: XspApp) -> None:
    """Attach the ``admit`` agent to ``app``."""
    topics = app.xsp_topics
    settings = app.xsp_settings
    channel = app.topic(
        topics.names.ad_requests,
        topics.names.frequency_settles,
        key_serializer="raw",
        value_serializer="raw",
    )
    store = TableStore(app.xsp_tables.frequency)
    router = Router(app, STAGE)
    metrics = app.xsp_metrics

    @app.agent(channel, name=STAGE, concurrency=1)
    async def admit(stream: StreamT) -> None:
        await app.xsp_directory.wait_ready()
        async for event in stream.events():
            message = event.message
            metrics.event_in(STAGE, message.topic)
            try:
                if message.topic == topics.names.ad_requests:
                    request = validate_ad_request(
                        message.value,
                        now_ms=int(time.time() * 1000),
                        max_future_skew_ms=settings.max_future_skew_ms,
                    )
                    outputs = handle_ad_request(
                        store, request, app.xsp_directory.view, app.xsp_pipeline
                    )
                elif message_kind(message.value or b"") == "tick":
                    prune_records(
                        store, decode_or_dead_letter(Tick, message.value), app.xsp_pipeline
                    )
                    outputs = []
                else:
                    settle = decode_or_dead_letter(FrequencySettle, message.value)
                    outputs = handle_frequency_settle(store, settle, app.xsp_pipeline)
            except (ContractError, DeadLetterError) as exc:
                await dead_letter(app, event, STAGE, str(exc))
                continue
            except Exception as exc:
                # A bug must not become a poison pill that stops the partition:
                # the input is kept in the DLQ and its reservation will expire.
                log.exception("internal error in %s", STAGE)
                await dead_letter(app, event, STAGE, f"internal error: {exc!r}")
                continue
            await router.send(outputs)
