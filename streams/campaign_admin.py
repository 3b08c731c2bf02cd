"""``xsp campaigns put|list``: validate configs before they reach the compacted topic."""

from __future__ import annotations

import json
from typing import Any

from streams.campaign import (
    CampaignError,
    campaign_to_dict,
    canonical_json,
    global_caps_to_dict,
    parse_campaign,
    parse_global_caps,
)
from streams.campaign_directory import GLOBAL_CAPS_KEY, DirectoryView
from streams.kafka_io import create_xsp_topics, produce, read_topic
from streams.topics import TopicNames

__all__ = ["list_campaigns", "parse_campaign_documents", "put_campaigns"]


def parse_campaign_documents(data: bytes) -> list[tuple[str, bytes]]:
    """Parse one object, a JSON list, or JSON lines into ``(key, canonical value)`` pairs.

    Raises ``ValueError`` naming the first invalid config (nothing is sent then).
    An object with ``"global": true`` holds the global per-user caps.
    """
    text = data.decode("utf-8").strip()
    if not text:
        raise ValueError("no campaign config given")
    try:
        parsed: Any = json.loads(text)
        documents = parsed if isinstance(parsed, list) else [parsed]
    except json.JSONDecodeError:
        try:
            documents = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON: {exc}") from None
    pairs = []
    for index, doc in enumerate(documents, start=1):
        try:
            if isinstance(doc, dict) and doc.get("global") is True:
                caps = parse_global_caps({k: v for k, v in doc.items() if k != "global"})
                pairs.append((GLOBAL_CAPS_KEY, canonical_json(global_caps_to_dict(caps))))
                continue
            campaign = parse_campaign(doc)
        except CampaignError as exc:
            raise ValueError(f"campaign #{index}: {exc}") from None
        pairs.append((campaign.campaign_id, canonical_json(campaign_to_dict(campaign))))
    return pairs


async def put_campaigns(bootstrap: str, names: TopicNames, data: bytes) -> list[str]:
    """Validate every config, then write them to the campaigns topic; return their ids."""
    pairs = parse_campaign_documents(data)
    await create_xsp_topics(bootstrap, names, partitions=1)
    await produce(bootstrap, names.campaigns, [(k.encode(), v) for k, v in pairs])
    return [key for key, _ in pairs]


async def list_campaigns(bootstrap: str, names: TopicNames, *, as_json: bool) -> list[str]:
    """The current campaigns (latest value per key), one line each."""
    view = DirectoryView()
    for message in await read_topic(bootstrap, names.campaigns, timeout_s=10):
        if message.key is not None:
            try:
                view.apply_campaign(message.key.decode(), message.value)
            except CampaignError:
                continue
    for message in await read_topic(bootstrap, names.campaign_status, timeout_s=10):
        if message.key is not None:
            view.apply_status(message.key.decode(), message.value)
    if as_json:
        return [json.dumps(campaign_to_dict(c), sort_keys=True) for c in view.by_priority()]
    lines = []
    for c in view.by_priority():
        state = (
            f"exhausted ({view.exhausted[c.campaign_id]})"
            if c.campaign_id in view.exhausted
            else "active"
        )
        lines.append(
            f"{c.campaign_id:<20} prio {c.priority:>3}  {c.price.model} "
            f"{c.price.amount_micros / 1e6:g} {c.price.currency}  "
            f"budget {c.budget.total_micros / 1e6:g}  caps {len(c.caps)}  {state}"
        )
    return lines or ["(no campaigns)"]
