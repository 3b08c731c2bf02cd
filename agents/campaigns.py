"""campaigns: dead-letter invalid campaign configs (every worker's directory skips them).

Source ``campaigns`` (compacted, key campaign id). Runs in the consumer
group, so each bad config yields exactly one dead letter however many
workers run; the configs themselves are read by each worker's
``CampaignDirectory``.
"""

from __future__ import annotations

from faust import StreamT

from agents.wiring import dead_letter
from streams.app import XspApp
from streams.campaign import CampaignError
from streams.campaign_directory import decode_campaign_value

__all__ = ["register"]

STAGE = "campaigns"


def register(app: XspApp) -> None:
    """Attach the ``campaigns`` validation agent to ``app``."""

    @app.agent(app.xsp_topics.campaigns, name=STAGE, concurrency=1)
    async def campaigns(stream: StreamT) -> None:
        async for event in stream.events():
            message = event.message
            if message.value is None:
                continue  # a tombstone deletes a campaign: valid by definition
            try:
                if message.key is None:
                    raise CampaignError("campaign config without a key (the key is the id)")
                decode_campaign_value(message.key.decode("utf-8", "replace"), message.value)
            except CampaignError as exc:
                await dead_letter(app, event, STAGE, str(exc))
