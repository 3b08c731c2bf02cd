"""VAST chain resolution: wrapper -> ... -> inline, merged into one ad (or a pod).

Merge rules (IAB VAST 2.0-4.3), implemented by the pure :func:`merge_chain`:
- Impression and Error URLs: wrappers' are *prepended*, outermost first, so
  the list reads outermost wrapper ... innermost wrapper, inline.
- Tracking events and ClickTracking (linear, non-linear, companion): the
  wrappers' are *appended* to the inline's as the chain unwinds: inline,
  innermost wrapper, ..., outermost wrapper.
- AdVerifications: inline's, then wrappers' (same order as tracking).
- Pricing: from the first document in the chain (outermost first) that states one.

Chain rules, implemented by :func:`resolve_chain`:
- ``max_hops`` is the IAB wrapper limit: at most that many Wrapper documents
  are followed; one more -> 302.
- Loop: a wrapper whose VASTAdTagURI (the template, before macros, so a
  cache-buster cannot hide it) was already followed on the same path -> 302.
  IAB has no dedicated loop code; a loop never yields an InLine and would hit
  the wrapper limit anyway, so 302 is exactly what a player reports -- we
  just report it without spending the remaining hops (reason ``wrapper_loop``).
- ``followAdditionalWrappers=false``: a Wrapper in the response it requested is
  ignored -> no ad -> 303 (reason ``additional_wrappers_not_allowed``).
- ``allowMultipleAds=false`` (IAB default): only the first stand-alone ad of the
  response it requested is used (a lone ad carrying ``sequence`` counts as
  stand-alone; many real files and the IAB samples mark single ads ``sequence="1"``).
- ``fallbackOnNoAd`` (true or absent): when a wrapper's chain fails, the next
  stand-alone ad of the same document is tried; ``false`` -> the failure stands
  (for a pod member: the pod moves on without it).
- Pods: a document with two or more ``sequence`` ads is a pod; members are
  resolved concurrently and returned in sequence order.
- Failure codes: fetch timeout -> 301 (status ``timeout``); unreachable -> 301;
  HTTP error status -> 301 on the first hop, 303 after a wrapper; body over the
  size cap -> 100; malformed/DOCTYPE -> 100; bad root/Wrapper without URI ->
  101; version -> 102; empty VAST after a wrapper -> 303 (``no_fill``); SSRF
  block, redirect overflow, bad URL -> 300 after a wrapper, 900 on the first hop.
- On failure ``error_urls`` holds the Error URLs of every ad on the failed path
  plus root-level Error URLs, macros filled ([ERRORCODE] = the code).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any, Literal

from .errors import VastError, VastErrorCode
from .http import FetchConfig, FetchContext, FetchError, HostCookieJar, VastHttpClient
from .macros import standard_values, substitute
from .model import (
    Ad,
    AdVerification,
    Companion,
    Creative,
    MediaFile,
    Pricing,
    TrackingEvent,
    VastDocument,
)
from .parser import parse_vast

__all__ = [
    "ChainResult",
    "ResolveContext",
    "ResolvedAd",
    "merge_chain",
    "resolve_chain",
    "resolve_document",
]

Status = Literal["filled", "no_fill", "error", "timeout"]
DEFAULT_MAX_HOPS = 5


@dataclass(slots=True)
class ResolveContext:
    """Request-side data: forwarded headers, macro values, initial cookies per host."""

    device_ip: str | None = None
    device_ua: str | None = None
    correlator: str | None = None
    cachebusting: str | None = None
    cookies: dict[str, dict[str, str]] = field(default_factory=dict)
    macros: dict[str, str] = field(default_factory=dict)

    def macro_values(self, errorcode: int | None = None) -> dict[str, str]:
        """Raw macro values for this request (TIMESTAMP is taken now)."""
        return standard_values(
            errorcode=errorcode,
            correlator=self.correlator,
            cachebuster=self.cachebusting,
            device_ip=self.device_ip,
            device_ua=self.device_ua,
            extra=self.macros,
        )


@dataclass(slots=True)
class ResolvedAd:
    """An inline ad with its wrappers merged in (URLs keep their macros)."""

    ad_id: str | None
    sequence: int | None
    ad_system: str | None
    ad_title: str | None
    impressions: list[str]
    error_urls: list[str]
    creatives: list[Creative]
    verifications: list[AdVerification]
    pricing: Pricing | None
    wrapper_count: int = 0
    chain_urls: list[str] = field(default_factory=list)

    @property
    def media_files(self) -> list[MediaFile]:
        """MediaFiles of all linear creatives."""
        return [m for c in self.creatives if c.kind == "linear" for m in c.media_files]

    def tracking_events(self) -> list[TrackingEvent]:
        """All tracking events: creative-level and companion-level."""
        out: list[TrackingEvent] = []
        for c in self.creatives:
            out.extend(c.tracking_events)
            for comp in c.companions:
                out.extend(comp.tracking_events)
        return out

    def tracking_counts(self) -> dict[str, int]:
        """Number of tracking URLs per event type."""
        counts: dict[str, int] = {}
        for t in self.tracking_events():
            counts[t.event] = counts.get(t.event, 0) + 1
        return counts

    def click_trackings(self) -> list[str]:
        """All ClickTracking URLs (linear and non-linear)."""
        return [u for c in self.creatives for u in c.click_trackings]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (Decimal as string)."""
        return _jsonable(asdict(self))


@dataclass(slots=True)
class ChainResult:
    """Outcome of one resolution; plain data, safe to serialise and replay."""

    status: Status
    ad: ResolvedAd | None = None
    vast_error_code: int | None = None
    hops: int = 0
    hop_timings_ms: list[float] = field(default_factory=list)
    error_urls: list[str] = field(default_factory=list)
    final_xml: str | None = None
    pod: list[ResolvedAd] = field(default_factory=list)
    reason: str | None = None
    hop_urls: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (Decimal as string)."""
        return _jsonable(asdict(self))


def _jsonable(x: Any) -> Any:
    if isinstance(x, Decimal):
        return str(x)
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x


# --------------------------------------------------------------------------- merge (pure)


def _wrapper_extras(
    wrappers: Sequence[Ad],
) -> tuple[
    list[TrackingEvent], list[str], list[TrackingEvent], list[str], list[TrackingEvent], list[str]
]:
    lin_t: list[TrackingEvent] = []
    lin_c: list[str] = []
    nl_t: list[TrackingEvent] = []
    nl_c: list[str] = []
    comp_t: list[TrackingEvent] = []
    comp_c: list[str] = []
    for w in reversed(wrappers):  # unwinding order: innermost wrapper first
        for c in w.creatives:
            if c.kind == "linear":
                lin_t.extend(c.tracking_events)
                lin_c.extend(c.click_trackings)
            elif c.kind == "nonlinear":
                nl_t.extend(c.tracking_events)
                nl_c.extend(c.click_trackings)
            else:
                for comp in c.companions:
                    comp_t.extend(comp.tracking_events)
                    comp_c.extend(comp.click_trackings)
    return lin_t, lin_c, nl_t, nl_c, comp_t, comp_c


def _copy_creative(c: Creative) -> Creative:
    # Copies every list merge_chain may extend (deepcopy costs ~10x more and
    # copy.copy of a slots dataclass ~3 us, both showed up in the resolver
    # benchmark); leaf records are never mutated.
    return Creative(
        c.kind,
        c.id,
        c.ad_id,
        c.sequence,
        c.duration,
        c.duration_s,
        c.skip_offset,
        list(c.media_files),
        list(c.tracking_events),
        c.click_through,
        list(c.click_trackings),
        list(c.custom_clicks),
        list(c.nonlinears),
        [
            Companion(
                comp.id,
                comp.width,
                comp.height,
                list(comp.resources),
                comp.click_through,
                list(comp.click_trackings),
                list(comp.tracking_events),
            )
            for comp in c.companions
        ],
        list(c.universal_ad_ids),
    )


def merge_chain(
    inline: Ad, wrappers: Sequence[Ad], *, chain_urls: Sequence[str] = ()
) -> ResolvedAd:
    """Merge ``wrappers`` (outermost first) into ``inline`` per the module rules.

    Pure: neither argument is modified; the result owns deep copies.
    """
    if inline.is_wrapper:
        raise ValueError("merge_chain needs an InLine ad")
    creatives = [_copy_creative(c) for c in inline.creatives]
    lin_t, lin_c, nl_t, nl_c, comp_t, comp_c = _wrapper_extras(wrappers)
    for c in creatives:
        if c.kind == "linear":
            c.tracking_events.extend(lin_t)
            c.click_trackings.extend(lin_c)
        elif c.kind == "nonlinear":
            c.tracking_events.extend(nl_t)
            c.click_trackings.extend(nl_c)
        else:
            for comp in c.companions:
                comp.tracking_events.extend(comp_t)
                comp.click_trackings.extend(comp_c)
    pricing = next((a.pricing for a in (*wrappers, inline) if a.pricing is not None), None)
    verifications = copy.deepcopy(inline.verifications) if inline.verifications else []
    for w in reversed(wrappers):
        if w.verifications:
            verifications.extend(copy.deepcopy(w.verifications))
    return ResolvedAd(
        ad_id=inline.id,
        sequence=inline.sequence,
        ad_system=inline.ad_system,
        ad_title=inline.ad_title,
        impressions=[u for a in (*wrappers, inline) for u in a.impressions],
        error_urls=[u for a in (*wrappers, inline) for u in a.errors],
        creatives=creatives,
        verifications=verifications,
        pricing=pricing,
        wrapper_count=len(wrappers),
        chain_urls=list(chain_urls),
    )


# --------------------------------------------------------------------------- resolution


@dataclass(slots=True)
class _Fail:
    status: Status
    code: int | None
    reason: str
    error_urls: list[str]


@dataclass(slots=True)
class _Ok:
    ads: list[ResolvedAd]
    xml: bytes | None  # the document the ad came from; decoded once, in _finish


class _Run:
    def __init__(
        self, client: VastHttpClient, ctx: ResolveContext, deadline: float, max_hops: int
    ) -> None:
        self.client = client
        self.ctx = ctx
        self.fctx = FetchContext(ctx.device_ip, ctx.device_ua, HostCookieJar(ctx.cookies))
        self.deadline = deadline
        self.max_hops = max_hops
        self.timings: list[float] = []
        self.urls: list[str] = []
        self.side_failures: list[_Fail] = []  # failed pod members / fallbacks

    def now(self) -> float:
        return asyncio.get_running_loop().time()


def _fetch_failure(err: FetchError, depth: int, path_errors: list[str]) -> _Fail:
    k = err.kind
    if k == "timeout":
        return _Fail("timeout", VastErrorCode.WRAPPER_TIMEOUT, "timeout", path_errors)
    if k == "connect":
        return _Fail("error", VastErrorCode.WRAPPER_TIMEOUT, "unreachable", path_errors)
    if k == "status":
        code = (
            VastErrorCode.NO_VAST_RESPONSE_AFTER_WRAPPER if depth else VastErrorCode.WRAPPER_TIMEOUT
        )
        return _Fail("error", code, f"http_{err.status}", path_errors)
    if k == "too_large":
        return _Fail("error", VastErrorCode.XML_PARSE_ERROR, "body_too_large", path_errors)
    code = VastErrorCode.GENERAL_WRAPPER_ERROR if depth else VastErrorCode.UNDEFINED_ERROR
    return _Fail("error", code, k, path_errors)


def _select(doc: VastDocument, parent: Ad | None) -> tuple[list[Ad], list[Ad]]:
    """Return (pod members in sequence order, stand-alone candidates)."""
    if len(doc.ads) == 1:
        return [], list(doc.ads)
    standalone = doc.standalone
    if parent is not None and not parent.allow_multiple_ads:
        return [], standalone[:1]
    pod = doc.pod
    if len(pod) >= 2:
        return pod, standalone
    return [], standalone or pod


async def _resolve_url(
    run: _Run,
    template: str,
    wrappers: list[Ad],
    seen: frozenset[str],
    path_errors: list[str],
    chain_urls: list[str],
) -> _Ok | _Fail:
    depth = len(wrappers)
    # Macro values (timestamp, random) are only computed when the URL has one.
    url = substitute(template, run.ctx.macro_values()) if "[" in template else template
    run.urls.append(url)
    try:
        res = await run.client.get(url, ctx=run.fctx, deadline=run.deadline)
    except FetchError as err:
        run.timings.append(float("nan"))
        return _fetch_failure(err, depth, path_errors)
    run.timings.append(res.elapsed_ms)
    try:
        doc = parse_vast(res.body)
    except VastError as err:
        return _Fail("error", err.code, err.reason or "parse", path_errors)
    return await _resolve_doc(run, doc, res.body, wrappers, seen, path_errors, [*chain_urls, url])


async def _resolve_doc(
    run: _Run,
    doc: VastDocument,
    body: bytes | None,
    wrappers: list[Ad],
    seen: frozenset[str],
    path_errors: list[str],
    chain_urls: list[str],
) -> _Ok | _Fail:
    depth = len(wrappers)
    parent = wrappers[-1] if wrappers else None
    errs = [*path_errors, *doc.errors]
    if not doc.ads:
        code = VastErrorCode.NO_VAST_RESPONSE_AFTER_WRAPPER if depth else None
        return _Fail("no_fill", code, "no_ads", errs)
    pod, candidates = _select(doc, parent)
    xml = body  # decoded only if it ends up as final_xml (wrappers never do)

    async def one(ad: Ad) -> _Ok | _Fail:
        return await _resolve_ad(run, ad, xml, wrappers, seen, errs, chain_urls)

    async def attempt(ad: Ad, pool: list[Ad]) -> _Ok | _Fail:
        # On failure of a wrapper that allows it, fall back to the next
        # stand-alone ad of this document (consuming the pool).
        r = await one(ad)
        while isinstance(r, _Fail) and ad.is_wrapper and ad.fallback_on_no_ad is not False and pool:
            run.side_failures.append(r)
            ad = pool.pop(0)
            r = await one(ad)
        return r

    if not pod:
        if not candidates:
            code = VastErrorCode.NO_VAST_RESPONSE_AFTER_WRAPPER if depth else None
            return _Fail("no_fill", code, "no_candidate_ad", errs)
        return await attempt(candidates[0], candidates[1:])
    buffet = list(candidates)
    results = await asyncio.gather(*(one(a) for a in pod))
    ads: list[ResolvedAd] = []
    failures: list[_Fail] = []
    for ad, r in zip(pod, results, strict=True):
        if isinstance(r, _Fail) and ad.is_wrapper and ad.fallback_on_no_ad is not False and buffet:
            run.side_failures.append(r)
            r = await attempt(buffet.pop(0), buffet)
        if isinstance(r, _Ok):
            ads.extend(r.ads)
        else:
            failures.append(r)
    if not ads:
        run.side_failures.extend(failures[1:])
        return failures[0]
    run.side_failures.extend(failures)
    return _Ok(ads, xml)


async def _resolve_ad(
    run: _Run,
    ad: Ad,
    xml: bytes | None,
    wrappers: list[Ad],
    seen: frozenset[str],
    doc_errors: list[str],
    chain_urls: list[str],
) -> _Ok | _Fail:
    parent = wrappers[-1] if wrappers else None
    errs = [*doc_errors, *ad.errors]
    if not ad.is_wrapper:
        return _Ok([merge_chain(ad, wrappers, chain_urls=chain_urls)], xml)
    if parent is not None and not parent.follow_additional_wrappers:
        return _Fail(
            "no_fill",
            VastErrorCode.NO_VAST_RESPONSE_AFTER_WRAPPER,
            "additional_wrappers_not_allowed",
            errs,
        )
    uri = ad.vast_ad_tag_uri
    if not uri:
        return _Fail("error", VastErrorCode.SCHEMA_VALIDATION_ERROR, "wrapper_without_uri", errs)
    if len(wrappers) + 1 > run.max_hops:
        return _Fail("error", VastErrorCode.WRAPPER_LIMIT_REACHED, "wrapper_limit", errs)
    if uri in seen:
        return _Fail("error", VastErrorCode.WRAPPER_LIMIT_REACHED, "wrapper_loop", errs)
    return await _resolve_url(run, uri, [*wrappers, ad], seen | {uri}, errs, chain_urls)


def _fill_errors(urls: list[str], code: int | None, ctx: ResolveContext) -> list[str]:
    values = ctx.macro_values(errorcode=code)
    out: list[str] = []
    for u in urls:
        s = substitute(u, values)
        if s not in out:
            out.append(s)
    return out


def _finish(run: _Run, outcome: _Ok | _Fail) -> ChainResult:
    side: list[str] = []
    for f in run.side_failures:
        side.extend(_fill_errors(f.error_urls, f.code, run.ctx))
    base = {"hops": len(run.timings), "hop_timings_ms": run.timings, "hop_urls": run.urls}
    if isinstance(outcome, _Ok):
        return ChainResult(
            status="filled",
            ad=outcome.ads[0],
            pod=outcome.ads,
            final_xml=(outcome.xml.decode("utf-8", "replace") if outcome.xml is not None else None),
            error_urls=side,
            **base,
        )  # type: ignore[arg-type]
    # "no_fill" without a code happens only for an empty first response: the
    # root <Error> URLs are still reported (VAST 3 "no ad" tracking) with 303.
    code = outcome.code
    fill_code = code if code is not None else int(VastErrorCode.NO_VAST_RESPONSE_AFTER_WRAPPER)
    errors = _fill_errors(outcome.error_urls, fill_code, run.ctx)
    errors.extend(u for u in side if u not in errors)
    return ChainResult(
        status=outcome.status,
        vast_error_code=int(code) if code else None,
        reason=outcome.reason,
        error_urls=errors,
        **base,
    )  # type: ignore[arg-type]


async def resolve_chain(
    url: str,
    *,
    client: VastHttpClient | None = None,
    config: FetchConfig | None = None,
    max_hops: int = DEFAULT_MAX_HOPS,
    ctx: ResolveContext | None = None,
    timeout_s: float | None = None,
) -> ChainResult:
    """Resolve the VAST tag at ``url`` (a template: macros are filled per hop).

    Guarantees: returns (never raises for network or content problems) within
    ``timeout_s`` (default: the client's ``total_timeout_s``) plus parse time;
    a failure carries an IAB code and the Error URLs to fire.
    ``client`` defaults to a client built from ``config`` and closed afterwards;
    pass a long-lived client (e.g. :func:`streams.vast.http.get_shared_client`)
    to reuse its keep-alive pool.
    """
    own = client is None
    if client is None:
        client = VastHttpClient(config)
    ctx = ctx or ResolveContext()
    budget = timeout_s if timeout_s is not None else client.config.total_timeout_s
    loop = asyncio.get_running_loop()
    run = _Run(client, ctx, loop.time() + budget, max_hops)
    try:
        try:
            # The fetcher honours the deadline; this outer guard only bounds
            # CPU work (parsing) that a pathological chain could add on top.
            async with asyncio.timeout(budget + 1.0):
                outcome = await _resolve_url(run, url, [], frozenset({url}), [], [])
        except TimeoutError:
            outcome = _Fail("timeout", VastErrorCode.WRAPPER_TIMEOUT, "total_timeout", [])
        return _finish(run, outcome)
    finally:
        if own:
            await client.aclose()


async def resolve_document(
    data: bytes | str,
    *,
    client: VastHttpClient | None = None,
    config: FetchConfig | None = None,
    max_hops: int = DEFAULT_MAX_HOPS,
    ctx: ResolveContext | None = None,
    timeout_s: float | None = None,
) -> ChainResult:
    """Like :func:`resolve_chain` but starting from an already fetched document."""
    own = client is None
    if client is None:
        client = VastHttpClient(config)
    ctx = ctx or ResolveContext()
    budget = timeout_s if timeout_s is not None else client.config.total_timeout_s
    run = _Run(client, ctx, asyncio.get_running_loop().time() + budget, max_hops)
    raw = data.encode() if isinstance(data, str) else data
    try:
        try:
            doc = parse_vast(raw)
        except VastError as err:
            return _finish(run, _Fail("error", err.code, err.reason or "parse", []))
        try:
            async with asyncio.timeout(budget + 1.0):
                outcome = await _resolve_doc(run, doc, raw, [], frozenset(), [], [])
        except TimeoutError:
            outcome = _Fail("timeout", VastErrorCode.WRAPPER_TIMEOUT, "total_timeout", [])
        return _finish(run, outcome)
    finally:
        if own:
            await client.aclose()
