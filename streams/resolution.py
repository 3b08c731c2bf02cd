"""The resolve stage's pure half: a ResolveRequest in, the VAST chain resolved, a Resolution out."""

from __future__ import annotations

import math
import time
from decimal import Decimal

from streams.records import AdPayload, DecisionStatus, Resolution, ResolveRequest
from streams.vast import ChainResult, ResolveContext, ResolvedAd, VastHttpClient, resolve_chain

__all__ = ["payload_from_ad", "resolution_from_chain", "resolve_request"]

_STATUS = {
    "filled": DecisionStatus.FILLED,
    "no_fill": DecisionStatus.NO_FILL,
    "error": DecisionStatus.ERROR,
    "timeout": DecisionStatus.TIMEOUT,
}


async def resolve_request(
    request: ResolveRequest, client: VastHttpClient, *, timeout_s: float | None = None
) -> Resolution:
    """Resolve the campaign's VAST tag for one request; never raises for ad-server trouble.

    The request's device ip/ua (``params.device_ip`` / ``params.device_ua``),
    correlator and cache-buster fill the tag's macros and forwarded headers.
    """
    params = request.request.params
    ctx = ResolveContext(
        device_ip=_text(params.get("device_ip")),
        device_ua=_text(params.get("device_ua")),
        correlator=request.request.correlator or None,
        cachebusting=request.request.cachebusting or None,
    )
    started = time.monotonic()
    chain = await resolve_chain(
        request.vast_url, client=client, max_hops=request.max_hops, ctx=ctx, timeout_s=timeout_s
    )
    return resolution_from_chain(
        request, chain, total_ms=(time.monotonic() - started) * 1000, now_ms=int(time.time() * 1000)
    )


def resolution_from_chain(
    request: ResolveRequest, chain: ChainResult, *, total_ms: float, now_ms: int
) -> Resolution:
    """Map a ``ChainResult`` onto the wire Resolution (failed hops' NaN timings dropped)."""
    timings = {
        f"hop{i + 1}": round(t, 3) for i, t in enumerate(chain.hop_timings_ms) if not math.isnan(t)
    }
    timings["total"] = round(total_ms, 3)
    return Resolution(
        request_id=request.request.request_id,
        status=_STATUS[chain.status],
        campaign_id=request.campaign_id,
        ad=payload_from_ad(chain.ad, chain.final_xml) if chain.ad is not None else None,
        vast_error_code=chain.vast_error_code,
        hops=chain.hops,
        timings_ms=timings,
        resolved_at=now_ms,
        user_id=request.request.user_id,
        reply_to=request.request.reply_to,
        request_timestamp=request.request.timestamp,
        reason=chain.reason or "",
    )


def payload_from_ad(ad: ResolvedAd, vast_xml: str | None) -> AdPayload:
    """The parts of a merged inline ad that a player needs, plus its VAST Pricing."""
    tracking: dict[str, list[str]] = {}
    for event in ad.tracking_events():
        tracking.setdefault(event.event, []).append(event.url)
    click_through = next((c.click_through for c in ad.creatives if c.click_through), None)
    pricing = ad.pricing
    return AdPayload(
        ad_id=ad.ad_id or "",
        media_files=[
            {
                key: value
                for key, value in (
                    ("url", m.url),
                    ("type", m.type),
                    ("delivery", m.delivery),
                    ("width", m.width),
                    ("height", m.height),
                    ("bitrate", m.bitrate),
                )
                if value is not None
            }
            for m in ad.media_files
        ],
        impression_urls=list(ad.impressions),
        error_urls=list(ad.error_urls),
        tracking=tracking,
        click_through=click_through,
        click_tracking=ad.click_trackings(),
        price_micros=_micros(pricing.value) if pricing is not None else None,
        currency=pricing.currency if pricing is not None else None,
        price_model=pricing.model if pricing is not None else None,
        vast_xml=vast_xml,
    )


def _micros(value: Decimal) -> int | None:
    micros = value * 1_000_000
    return int(micros) if micros == micros.to_integral_value() and micros >= 0 else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
