"""Scenario 4 of the seed guide: VAST chain resolution.

The seed resolved wrapper → inline in a loop at the edge
(``VastChainResolver``). The pipeline's resolve stage does it now (at most 5
hops, IAB merge rules, SSRF-guarded), so the edge code is one call: the
returned XML is the resolved inline ad, and the Decision's ``ad`` carries
the merged trackers of every wrapper on the way.

The campaign this run puts points at ``<ad server>/wrapper/3``: three
wrappers, then the inline.

Run against a running stack (see examples/README.md)::

    python examples/scenario_4_vast_chain.py --ad-server http://127.0.0.1:8089
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

WRAPPERS = 3


async def resolve_vast_chain(edge: EdgeClient, user_id: str, campaign_id: str) -> str | None:
    """The seed's ``resolve_vast_chain``: the inline's VAST XML, or ``None`` on any failure.

    No resolver loop and no ``try/except``: a broken chain is a Decision
    (``no_fill``/``error``/``timeout`` with an IAB error code), and
    ``request()`` returns ``None`` for it.
    """
    async with await create_session(new_context(user_id, "chain"), client=edge) as session:
        return await session.request(params={"campaign_id": campaign_id})


@dataclass
class Result:
    """What the scenario observed."""

    campaign_id: str
    vast_xml: str | None
    decision: Decision | None


async def run(edge: EdgeClient, ad_server: str, *, suffix: str | None = None) -> Result:
    """Put a campaign behind a chain of 3 wrappers and resolve one ad through it."""
    suffix = suffix or run_suffix()
    cid = f"ex4-chain-{suffix}"
    await setup_campaigns(edge, [campaign(cid, f"{ad_server}/wrapper/{WRAPPERS}")])
    user_id = f"viewer-{uuid.uuid4().hex[:8]}"
    async with await create_session(new_context(user_id, "chain"), client=edge) as session:
        xml = await session.request(params={"campaign_id": cid})
        decision = session.last_decision
    print(f"campaign {cid}: {ad_server}/wrapper/{WRAPPERS} ({WRAPPERS} wrappers, then inline)")
    print(f"request() -> {short(xml)}")
    if decision is not None:
        print(
            f"decision: status={decision.status.value} hops={decision.hops} "
            f"timings_ms={decision.timings_ms}"
        )
        if decision.ad is not None:
            print(
                f"ad {decision.ad.ad_id}: {len(decision.ad.impression_urls)} impression URLs "
                "(the inline's plus every wrapper's)"
            )
            for url in decision.ad.impression_urls:
                print(f"  {url}")
    return Result(cid, xml, decision)


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 if the chain resolved to the inline ad in ``WRAPPERS + 1`` hops."""
    args = parse_args("Seed Scenario 4: VAST wrapper chain resolved by the pipeline.", argv)

    async def body() -> bool:
        async with EdgeClient(edge_config()) as edge:
            result = await run(edge, args.ad_server)
        decision = result.decision
        return (
            result.vast_xml is not None
            and "<InLine>" in result.vast_xml
            and decision is not None
            and decision.hops == WRAPPERS + 1
        )

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
