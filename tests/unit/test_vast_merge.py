"""Pure tests of the wrapper/inline merge and of in-memory resolution rules."""

from __future__ import annotations

import asyncio
import copy
from decimal import Decimal

import pytest

from streams.vast.errors import VastErrorCode
from streams.vast.model import Ad, AdVerification, Companion, Creative, Pricing, TrackingEvent
from streams.vast.parser import parse_vast
from streams.vast.resolver import merge_chain, resolve_document


def _lin(tag: str, *, media: bool = False) -> Creative:
    c = Creative("linear")
    c.tracking_events = [
        TrackingEvent("start", f"https://{tag}/start"),
        TrackingEvent("complete", f"https://{tag}/complete"),
    ]
    c.click_trackings = [f"https://{tag}/click"]
    return c


def _ad(tag: str, kind: str, pricing: Pricing | None = None) -> Ad:
    ad = Ad(kind=kind, id=tag)  # type: ignore[arg-type]
    ad.impressions = [f"https://{tag}/imp"]
    ad.errors = [f"https://{tag}/err?c=[ERRORCODE]"]
    ad.creatives = [_lin(tag)]
    nl = Creative("nonlinear")
    nl.tracking_events = [TrackingEvent("creativeView", f"https://{tag}/nlview")]
    comp = Creative("companion")
    comp.companions = [
        Companion(tracking_events=[TrackingEvent("creativeView", f"https://{tag}/cv")])
    ]
    ad.creatives += [nl, comp]
    ad.verifications = [AdVerification(vendor=tag)]
    ad.pricing = pricing
    return ad


def test_merge_order_and_content() -> None:
    outer, inner = _ad("outer", "wrapper"), _ad("inner", "wrapper")
    inline = _ad("inline", "inline", Pricing("cpm", "USD", Decimal("1.00")))
    r = merge_chain(inline, [outer, inner], chain_urls=["u0", "u1", "u2"])
    assert r.impressions == ["https://outer/imp", "https://inner/imp", "https://inline/imp"]
    assert r.error_urls == [
        "https://outer/err?c=[ERRORCODE]",
        "https://inner/err?c=[ERRORCODE]",
        "https://inline/err?c=[ERRORCODE]",
    ]
    lin = r.creatives[0]
    assert [t.url for t in lin.tracking_events if t.event == "start"] == [
        "https://inline/start",
        "https://inner/start",
        "https://outer/start",
    ]
    assert lin.click_trackings == [
        "https://inline/click",
        "https://inner/click",
        "https://outer/click",
    ]
    assert [t.url for t in r.creatives[1].tracking_events] == [
        "https://inline/nlview",
        "https://inner/nlview",
        "https://outer/nlview",
    ]
    assert [t.url for t in r.creatives[2].companions[0].tracking_events] == [
        "https://inline/cv",
        "https://inner/cv",
        "https://outer/cv",
    ]
    assert [v.vendor for v in r.verifications] == ["inline", "inner", "outer"]
    assert r.tracking_counts() == {"start": 3, "complete": 3, "creativeView": 6}
    assert r.wrapper_count == 2 and r.chain_urls == ["u0", "u1", "u2"]
    assert r.pricing == Pricing("cpm", "USD", Decimal("1.00"))


def test_pricing_from_first_document_that_states_it() -> None:
    outer = _ad("outer", "wrapper")
    inner = _ad("inner", "wrapper", Pricing("cpm", "EUR", Decimal("3.10")))
    inline = _ad("inline", "inline", Pricing("cpm", "USD", Decimal("1.00")))
    assert merge_chain(inline, [outer, inner]).pricing == Pricing("cpm", "EUR", Decimal("3.10"))
    assert merge_chain(inline, []).pricing == Pricing("cpm", "USD", Decimal("1.00"))
    assert merge_chain(_ad("i", "inline"), [outer]).pricing is None


def test_merge_is_pure() -> None:
    outer, inline = _ad("outer", "wrapper"), _ad("inline", "inline")
    before = (copy.deepcopy(outer), copy.deepcopy(inline))
    r = merge_chain(inline, [outer])
    r.creatives[0].tracking_events.append(TrackingEvent("x", "y"))
    assert (outer, inline) == before


def test_merge_rejects_wrapper_as_inline() -> None:
    with pytest.raises(ValueError):
        merge_chain(_ad("w", "wrapper"), [])


def test_wrapper_tracking_dropped_only_when_inline_has_no_such_creative() -> None:
    inline = Ad(kind="inline", id="i")
    r = merge_chain(inline, [_ad("outer", "wrapper")])
    assert r.creatives == [] and r.impressions == ["https://outer/imp"]


def _run(xml: str, **kw: object):  # type: ignore[no-untyped-def]
    return asyncio.run(resolve_document(xml, **kw))  # type: ignore[arg-type]


def test_in_memory_inline_document_fills() -> None:
    r = _run(
        '<VAST version="4.0"><Ad id="x"><InLine><Impression>https://i/</Impression>'
        "</InLine></Ad></VAST>"
    )
    assert r.status == "filled" and r.ad is not None and r.ad.ad_id == "x"
    assert r.hops == 0 and r.vast_error_code is None


def test_empty_document_is_no_fill_with_root_errors() -> None:
    r = _run(
        '<VAST version="4.0"><Error><![CDATA[https://e/?c=[ERRORCODE]&t=[UNKNOWN]]]></Error></VAST>'
    )
    assert r.status == "no_fill" and r.vast_error_code is None
    assert r.error_urls == ["https://e/?c=303&t=-1"]


def test_parse_failure_code() -> None:
    r = _run("<VAST version='9.0'/>")
    assert r.status == "error" and r.vast_error_code == VastErrorCode.VERSION_NOT_SUPPORTED


def test_wrapper_without_uri_is_101_with_errors() -> None:
    r = _run(
        '<VAST version="4.0"><Ad><Wrapper><Error>https://w/e?[ERRORCODE]</Error></Wrapper>'
        "</Ad></VAST>"
    )
    assert r.status == "error" and r.vast_error_code == 101
    assert r.error_urls == ["https://w/e?101"]


def test_max_hops_zero_refuses_any_wrapper() -> None:
    r = _run(
        '<VAST version="4.0"><Ad><Wrapper><VASTAdTagURI>http://127.0.0.1:9/x</VASTAdTagURI>'
        "</Wrapper></Ad></VAST>",
        max_hops=0,
    )
    assert r.vast_error_code == VastErrorCode.WRAPPER_LIMIT_REACHED and r.hops == 0


def test_parse_then_merge_roundtrip() -> None:
    doc = parse_vast(
        '<VAST version="4.0"><Ad id="p" sequence="2"><InLine><Impression>'
        "https://i/</Impression></InLine></Ad></VAST>"
    )
    r = merge_chain(doc.ads[0], [])
    assert r.sequence == 2 and r.impressions == ["https://i/"]
