"""The seed guide's production patterns on the new edge SDK.

* **Context manager** (the seed's ``SessionManager``): one shared
  ``EdgeClient`` per process, one session per ad break, closed on exit.
* **Retries with backoff** (the seed's ``serve_with_retries``): retry only
  ``UpstreamError`` (the request could not be *produced*), and retry the
  *same* request id so the pipeline decides it once.
* **Metrics collection** (the seed's ``MetricsCollector``): counts requests,
  fallbacks and errors and sums latency around ``request()``; the client's
  own ``edge.stats()`` has the rest (decisions by status, p50/p99, late
  replies).
* **Timeout → fallback** (the seed's ``serve_with_timeout_handling``): the
  timeout is built into ``request(timeout_s=...)``, which returns ``None``.
* **Fail open on state errors** (``serve_with_cap_recovery``) and
  **idempotent spend tracking** (``track_with_error_handling``).

The run puts two campaigns: one serving ``/inline``, and one whose ad server
answers only after 5 s (``/inline?delay_ms=5000``), which a 1 s timeout
turns into a fallback.

Run against a running stack (see examples/README.md)::

    python examples/production_patterns.py --ad-server http://127.0.0.1:8089
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

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

from streams.edge import (
    EdgeClient,
    Session,
    StateUnavailableError,
    UpstreamError,
    create_session,
    retry_with_backoff,
)
from streams.records import SpendEvent

log = logging.getLogger("examples.production")


class SessionManager:
    """The seed's ``SessionManager``: ``async with SessionManager(edge, uid) as session``.

    Guarantees: the session is closed on exit whatever happened inside; the
    shared client is flushed, never closed (it belongs to the process).
    """

    def __init__(self, edge: EdgeClient, user_id: str) -> None:
        self.edge = edge
        self.user_id = user_id
        self.session: Session | None = None

    async def __aenter__(self) -> Session:
        self.session = await create_session(new_context(self.user_id, "managed"), client=self.edge)
        return self.session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.session is not None:
            await self.session.close()


async def serve_with_retries(
    session: Session, params: dict[str, Any], *, max_retries: int = 3, base_delay_s: float = 0.2
) -> str | None:
    """The seed's Retry Pattern: up to ``max_retries`` tries with exponential backoff.

    Guarantees: every try carries the same request id, so however many tries
    reach the pipeline it decides (and charges) the request once. A timeout
    is a Decision, not an error, and is not retried. Re-raises the last
    ``UpstreamError``.
    """
    request_id = f"{session.context.request_id}.retry-{uuid.uuid4().hex[:6]}"
    decision = await retry_with_backoff(
        lambda: session.decide(params, request_id=request_id),
        attempts=max_retries,
        base_delay_s=base_delay_s,
    )
    return decision.ad.vast_xml if decision.status.value == "filled" and decision.ad else None


@dataclass
class MetricsCollector:
    """The seed's ``MetricsCollector``: counts and latency around ``session.request()``."""

    request_count: int = 0
    error_count: int = 0
    fallback_count: int = 0
    total_latency: float = 0.0
    statuses: Counter[str] = field(default_factory=Counter)

    async def track_request(self, session: Session, **kwargs: Any) -> str | None:
        """Serve through ``session.request(**kwargs)``; count it whatever happens."""
        start = time.monotonic()
        try:
            result = await session.request(**kwargs)
            self.request_count += 1
            if result is None:
                self.fallback_count += 1
            if session.last_decision is not None:
                self.statuses[session.last_decision.status.value] += 1
            return result
        except Exception:
            self.error_count += 1
            raise
        finally:
            self.total_latency += time.monotonic() - start

    def summary(self) -> str:
        """One line: counts, mean latency and decisions by status."""
        mean_ms = 1000 * self.total_latency / max(self.request_count + self.error_count, 1)
        return (
            f"requests={self.request_count} errors={self.error_count} "
            f"fallbacks={self.fallback_count} mean_latency={mean_ms:.1f} ms "
            f"statuses={dict(self.statuses)}"
        )


async def serve_with_timeout_handling(
    session: Session,
    params: dict[str, Any],
    fallback: Callable[[], Awaitable[str]],
    *,
    timeout_s: float = 1.0,
) -> str:
    """The seed's timeout pattern: the ad within ``timeout_s``, else ``await fallback()``.

    No ``asyncio.wait_for``: ``request(timeout_s=...)`` returns ``None`` on
    time-out (and any other non-fill), and a late answer is dropped by the
    client, never delivered to a later request.
    """
    ad = await session.request(params=params, timeout_s=timeout_s)
    return ad if ad is not None else await fallback()


async def serve_with_cap_recovery(
    session: Session, user_id: str, params: dict[str, Any]
) -> str | None:
    """The seed's fail-open pattern: if the advisory read fails, serve anyway.

    Safe now: the pipeline enforces the cap whatever the edge decides here.
    (``EdgeConfig(fail_open=True)`` / ``XSP_EDGE_FAIL_OPEN=true`` does the same
    without the ``try``.)
    """
    try:
        if not await session.check_frequency_cap(user_id, limit=3):
            return None
    except StateUnavailableError as exc:  # AuthError is a subclass: a wrong token is loud
        log.warning("state unavailable for %s, serving anyway: %s", user_id, exc)
    return await session.request(params=params)


async def track_with_error_handling(
    session: Session, campaign_id: str, amount: str, event_id: str
) -> SpendEvent | None:
    """Record a cost the pipeline cannot know; re-send the same ``event_id`` on error.

    Guarantees: the campaign is charged at most once for ``event_id`` however
    often this runs; returns ``None`` (and logs) if Kafka stayed unreachable.
    """
    try:
        return await retry_with_backoff(
            lambda: session.track_budget(campaign_id, amount, event_id=event_id),
            attempts=3,
            base_delay_s=0.2,
        )
    except UpstreamError as exc:
        log.error("failed to track budget for %s: %s", campaign_id, exc)
        return None


@dataclass
class Result:
    """What the patterns observed."""

    campaign_id: str
    slow_campaign_id: str
    served: list[str | None] = field(default_factory=list)
    retried_ad: str | None = None
    timeout_result: str | None = None
    timeout_status: str | None = None
    cap_recovery_ad: str | None = None
    spend_event_ids: list[str] = field(default_factory=list)
    metrics: MetricsCollector = field(default_factory=MetricsCollector)
    stats: dict[str, Any] = field(default_factory=dict)


FALLBACK = '<VAST version="4.2"/><!-- house fallback -->'


async def _house_fallback() -> str:
    return FALLBACK


async def run(
    edge: EdgeClient, ad_server: str, *, ads: int = 5, suffix: str | None = None
) -> Result:
    """Exercise every pattern once against two fresh campaigns (fast and 5 s slow)."""
    suffix = suffix or run_suffix()
    cid, slow = f"ex5-patterns-{suffix}", f"ex5-slow-{suffix}"
    await setup_campaigns(
        edge,
        [
            campaign(cid, f"{ad_server}/inline"),
            campaign(slow, f"{ad_server}/inline?delay_ms=5000"),
        ],
    )
    result = Result(cid, slow)
    params = {"slot": "pre-roll", "campaign_id": cid}

    print(f"1. context manager + metrics: {ads} ad breaks on campaign {cid}")
    for _ in range(ads):
        async with SessionManager(edge, f"viewer-{uuid.uuid4().hex[:8]}") as session:
            result.served.append(await result.metrics.track_request(session, params=params))
    print(f"   {result.metrics.summary()}")

    print("2. retries with backoff (same request id on every try)")
    async with SessionManager(edge, f"viewer-{uuid.uuid4().hex[:8]}") as session:
        result.retried_ad = await serve_with_retries(session, params)
    print(f"   -> {short(result.retried_ad, 60)}")

    print(f"3. timeout -> fallback: campaign {slow} answers after 5 s, timeout 1 s")
    async with SessionManager(edge, f"viewer-{uuid.uuid4().hex[:8]}") as session:
        started = time.monotonic()
        result.timeout_result = await serve_with_timeout_handling(
            session, {"campaign_id": slow}, _house_fallback, timeout_s=1.0
        )
        assert session.last_decision is not None
        result.timeout_status = session.last_decision.status.value
        print(
            f"   -> {short(result.timeout_result, 60)} after {time.monotonic() - started:.2f} s "
            f"(status={result.timeout_status}: {session.last_decision.reason})"
        )

    print("4. fail open when the advisory read fails")
    user = f"viewer-{uuid.uuid4().hex[:8]}"
    async with SessionManager(edge, user) as session:
        result.cap_recovery_ad = await serve_with_cap_recovery(session, user, params)
    print(f"   -> {short(result.cap_recovery_ad, 60)}")

    print("5. idempotent spend tracking: one extra cost of 0.25, sent twice with one event id")
    event_id = f"creative-fee-{uuid.uuid4().hex[:8]}"
    async with SessionManager(edge, user) as session:
        for _ in range(2):
            event = await track_with_error_handling(session, cid, "0.25", event_id)
            if event is not None:
                result.spend_event_ids.append(event.event_id)
    print(f"   -> acknowledged events {result.spend_event_ids} (applied once by the pipeline)")

    result.stats = edge.stats()
    print(
        f"edge.stats(): decisions={result.stats['decisions']} "
        f"latency_ms={result.stats['latency_ms']} timeouts={result.stats['timeouts']}"
    )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 if every pattern behaved as documented."""
    args = parse_args("Seed production patterns on the new edge SDK.", argv)

    async def body() -> bool:
        async with EdgeClient(edge_config()) as edge:
            result = await run(edge, args.ad_server)
        return (
            all(ad is not None for ad in result.served)
            and result.metrics.error_count == 0
            and result.retried_ad is not None
            and result.timeout_result == FALLBACK
            and result.timeout_status == "timeout"
            and result.cap_recovery_ad is not None
            and len(result.spend_event_ids) == 2
        )

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
