"""spend: validate the edge's budget adjustments and hand them to the budget agent.

Source ``spend`` (key campaign; the seed's ``track_budget``). Malformed
events, negative or non-integer amounts go to the dead-letter topic; valid
ones are forwarded into ``budget-requests`` so that the budget table keeps a
single ordered source (see agents/budget.py). Applied once per event id by
the budget agent.
"""

from __future__ import annotations

from faust import StreamT

from agents.wiring import dead_letter, publish
from streams.app import XspApp
from streams.pipeline import DeadLetterError, decode_or_dead_letter
from streams.records import SpendEvent, encode

__all__ = ["register"]

STAGE = "spend"


def register(app: XspApp) -> None:
    """Attach the ``spend`` agent to ``app``."""
    topics = app.xsp_topics
    metrics = app.xsp_metrics

    @app.agent(topics.spend, name=STAGE, concurrency=1)
    async def spend(stream: StreamT) -> None:
        async for event in stream.events():
            metrics.event_in(STAGE, event.message.topic)
            try:
                spend_event = decode_or_dead_letter(SpendEvent, event.message.value)
                if spend_event.amount_micros < 0:
                    raise DeadLetterError(
                        f"SpendEvent.amount_micros must be >= 0, got {spend_event.amount_micros}"
                    )
                if spend_event.campaign_id not in app.xsp_directory.view.campaigns:
                    raise DeadLetterError(f"unknown campaign {spend_event.campaign_id!r}")
            except DeadLetterError as exc:
                await dead_letter(app, event, STAGE, str(exc))
                continue
            await publish(
                app,
                topics.names.budget_requests,
                spend_event.campaign_id.encode(),
                encode(spend_event),
            )
            metrics.event_out(STAGE, topics.names.budget_requests)
