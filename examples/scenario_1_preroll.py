"""Scenario 1 of the seed guide: a basic pre-roll ad.

The seed built a ``VastUpstream`` with an endpoint and asked it for VAST.
Here the edge asks the pipeline: ``session.request()`` produces an ad
request, the worker picks the campaign, reserves cap and budget, resolves the
campaign's VAST tag and answers with the ad's VAST XML (``None`` means: serve
your fallback). The campaign this run puts points at the ad server's
``/inline`` ad.

Run against a running stack (see examples/README.md)::

    python examples/scenario_1_preroll.py --ad-server http://127.0.0.1:8089
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from _support import (
    campaign,
    edge_config,
    new_context,
    parse_args,
    run_main,
    run_suffix,
    setup_campaigns,
    short,
)

from streams.edge import EdgeClient, create_session
from streams.records import Decision


async def serve_preroll(edge: EdgeClient, user_id: str, campaign_id: str) -> str | None:
    """The seed's ``serve_preroll``: the VAST XML of a filled pre-roll, else ``None``.

    ``campaign_id`` pins the campaign (``params.campaign_id``); without it
    the pipeline picks the first eligible campaign by priority.
    """
    session = await create_session(new_context(user_id, "preroll"), client=edge)
    try:
        return await session.request(params={"slot": "pre-roll", "campaign_id": campaign_id})
    finally:
        await session.close()


@dataclass
class Result:
    """What the scenario observed."""

    campaign_id: str
    user_id: str
    vast_xml: str | None
    decision: Decision | None


async def run(edge: EdgeClient, ad_server: str, *, suffix: str | None = None) -> Result:
    """Put a campaign serving ``<ad_server>/inline`` and serve one pre-roll from it."""
    suffix = suffix or run_suffix()
    cid = f"ex1-preroll-{suffix}"
    await setup_campaigns(edge, [campaign(cid, f"{ad_server}/inline")])
    user_id = f"viewer-{uuid.uuid4().hex[:8]}"
    # One session per ad break; the decision is kept so we can print why.
    session = await create_session(new_context(user_id, "preroll"), client=edge)
    async with session:
        xml = await session.request(params={"slot": "pre-roll", "campaign_id": cid})
        decision = session.last_decision
    print(f"campaign {cid}, user {user_id}")
    print(f"request(params={{'slot': 'pre-roll'}}) -> {short(xml)}")
    if decision is not None:
        print(
            f"decision: status={decision.status.value} hops={decision.hops} "
            f"spend={decision.spend_micros / 1e6:g} {decision.reason}".rstrip()
        )
    return Result(cid, user_id, xml, decision)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve one pre-roll; exit 0 if VAST XML came back, 1 if not, 2 if the stack is down."""
    args = parse_args("Seed Scenario 1: basic pre-roll ad through the pipeline.", argv)

    async def body() -> bool:
        async with EdgeClient(edge_config()) as edge:
            result = await run(edge, args.ad_server)
        return result.vast_xml is not None and "<InLine>" in result.vast_xml

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
