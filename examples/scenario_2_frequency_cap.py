"""Scenario 2 of the seed guide: frequency capping (3 ads per user per hour).

The seed checked the cap at the edge (``check_frequency_cap``) and then
requested; under concurrency that check-then-increment let caps overrun.
Now the cap lives in campaign config (``"caps": [{"limit": 3, "window":
"1h"}]``) and the pipeline checks-and-reserves it atomically in the user's
row. ``check_frequency_cap`` is still there as an advisory read (it saves a
round trip when the user is clearly capped), and the 4th request gets
``None`` either way: the last request below skips the advisory check and the
pipeline itself answers ``capped``.

Run against a running stack (see examples/README.md)::

    python examples/scenario_2_frequency_cap.py --ad-server http://127.0.0.1:8089
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

LIMIT = 3


async def serve_with_frequency_cap(
    session: Session, user_id: str, campaign_id: str, limit: int = LIMIT
) -> str | None:
    """The seed's pattern: serve if the user looks under ``limit``, else ``None``.

    The advisory check can only skip work; the pipeline enforces the
    campaign's cap whatever it says.
    """
    if not await session.check_frequency_cap(user_id, limit=limit):
        return None  # at cap: no request sent
    return await session.request(params={"slot": "pre-roll", "campaign_id": campaign_id})


@dataclass
class Result:
    """What the scenario observed: one entry per attempt, in order."""

    campaign_id: str
    user_id: str
    advisory: list[bool] = field(default_factory=list)
    ads: list[str | None] = field(default_factory=list)
    # The pipeline's own answer to a request sent without the advisory check.
    unchecked_status: str | None = None
    unchecked_reason: str = ""


async def run(
    edge: EdgeClient, ad_server: str, *, attempts: int = 4, suffix: str | None = None
) -> Result:
    """Put a campaign capped at 3/hour and serve ``attempts`` ads to one new user."""
    suffix = suffix or run_suffix()
    cid = f"ex2-capped-{suffix}"
    caps = [{"limit": LIMIT, "window": "1h"}]
    await setup_campaigns(edge, [campaign(cid, f"{ad_server}/inline", caps=caps)])
    user_id = f"viewer-{uuid.uuid4().hex[:8]}"
    result = Result(cid, user_id)
    print(f"campaign {cid} (cap {LIMIT}/1h), user {user_id}")
    async with await create_session(new_context(user_id, "capped"), client=edge) as session:
        for attempt in range(1, attempts + 1):
            under = await session.check_frequency_cap(user_id, limit=LIMIT)
            ad = await serve_with_frequency_cap(session, user_id, cid)
            result.advisory.append(under)
            result.ads.append(ad)
            print(f"request {attempt}: check_frequency_cap={under} -> {short(ad, 60)}")
        # Skip the advisory check: the pipeline's atomic check answers.
        ad = await session.request(params={"slot": "pre-roll", "campaign_id": cid})
        decision = session.last_decision
        assert decision is not None
        result.unchecked_status = decision.status.value
        result.unchecked_reason = decision.reason
        print(
            f"request {attempts + 1} without the advisory check -> {short(ad, 60)}: "
            f"status={decision.status.value} ({decision.reason})"
        )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 if exactly the first 3 requests got an ad and the pipeline said ``capped``."""
    args = parse_args("Seed Scenario 2: frequency cap of 3 per hour.", argv)

    async def body() -> bool:
        async with EdgeClient(edge_config()) as edge:
            result = await run(edge, args.ad_server)
        served = [ad is not None for ad in result.ads]
        return served == [True] * LIMIT + [False] and result.unchecked_status == "capped"

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
