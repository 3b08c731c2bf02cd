"""Scenario 3 of the seed guide: budget tracking.

The seed read the amount *spent* (``get_budget``), compared it with a budget
limit it knew at the edge, served, then charged the ad with
``track_budget``. Two changes (docs/migration.md):

* ``get_budget`` now returns the *remaining* budget (reservations in flight
  already subtracted), so ``remaining = budget_limit - get_budget(c)``
  becomes ``remaining = get_budget(c)``;
* the pipeline charges every filled decision itself, so the seed's
  ``track_budget`` after ``request()`` would charge twice and is gone.

The campaign this run puts costs 2.50 per impression with a budget of 5.00:
two ads are served, the third attempt sees 0.00 remaining and falls back, and
a request sent without the advisory check gets ``budget_exhausted`` from the
pipeline (which reserves the price atomically, so it never overspends).

Run against a running stack (see examples/README.md)::

    python examples/scenario_3_budget.py --ad-server http://127.0.0.1:8089
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

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

from streams.edge import EdgeClient, Session, create_session

PRICE = 2.50
BUDGET = "5.00"


async def serve_with_budget(session: Session, campaign_id: str) -> str | None:
    """The seed's pattern: serve if the campaign can pay one more impression, else ``None``."""
    remaining = await session.get_budget(campaign_id)  # remaining, not spent
    if remaining < PRICE:
        return None  # budget exhausted: no request sent
    # No track_budget() afterwards: the pipeline charged the fill already.
    return await session.request(params={"slot": "pre-roll", "campaign_id": campaign_id})


@dataclass
class Result:
    """What the scenario observed."""

    campaign_id: str
    remaining_before: list[float] = field(default_factory=list)
    ads: list[str | None] = field(default_factory=list)
    unchecked_status: str | None = None
    remaining_after: float | None = None
    spent_after: float | None = None


async def run(
    edge: EdgeClient, ad_server: str, *, attempts: int = 3, suffix: str | None = None
) -> Result:
    """Put a 2.50/impression campaign with 5.00 budget and try ``attempts`` ads."""
    suffix = suffix or run_suffix()
    cid = f"ex3-budget-{suffix}"
    config = campaign(cid, f"{ad_server}/inline", price=f"{PRICE:.2f}", budget=BUDGET)
    await setup_campaigns(edge, [config])
    result = Result(cid)
    print(f"campaign {cid}: {PRICE:.2f} USD per impression, budget {BUDGET} USD")
    for attempt in range(1, attempts + 1):
        user_id = f"viewer-{uuid.uuid4().hex[:8]}"
        async with await create_session(new_context(user_id, "budget"), client=edge) as session:
            before = await session.get_budget(cid)
            ad = await serve_with_budget(session, cid)
        result.remaining_before.append(before)
        result.ads.append(ad)
        print(f"request {attempt}: get_budget={before:.2f} -> {short(ad, 60)}")
    user_id = f"viewer-{uuid.uuid4().hex[:8]}"
    async with await create_session(new_context(user_id, "budget"), client=edge) as session:
        await session.request(params={"slot": "pre-roll", "campaign_id": cid})
        decision = session.last_decision
        assert decision is not None
        result.unchecked_status = decision.status.value
        print(
            f"request without the advisory check: status={decision.status.value} "
            f"({decision.reason})"
        )
        result.remaining_after = await session.get_budget(cid)
        result.spent_after = await session.get_spend(cid)
    print(
        f"get_budget -> {result.remaining_after:.2f} remaining; "
        f"get_spend -> {result.spent_after:.2f} spent"
    )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 if two ads were served, then fallbacks, with 0.00 remaining and 5.00 spent."""
    args = parse_args("Seed Scenario 3: budget tracking (remaining budget).", argv)

    async def body() -> bool:
        async with EdgeClient(edge_config()) as edge:
            result = await run(edge, args.ad_server)
        return (
            [ad is not None for ad in result.ads] == [True, True, False]
            and result.unchecked_status == "budget_exhausted"
            and result.remaining_after == 0.0
            and result.spent_after == float(BUDGET)
        )

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
