"""Real loopback HTTP tests of the VAST fetcher and chain resolver.

Every server here binds to 127.0.0.1; every client allow-lists only
127.0.0.1/32 unless the test is about the SSRF rule itself.
"""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web

from streams.mock_adserver import HITS, inline_xml, start_mock_adserver, wrapper_xml
from streams.vast.http import (
    FetchConfig,
    FetchContext,
    FetchError,
    SsrfGuard,
    VastHttpClient,
    get_shared_client,
)
from streams.vast.resolver import ChainResult, ResolveContext, resolve_chain

LOOPBACK = ("127.0.0.1/32",)
TRANSPORTS = ["aiohttp", "httpx", "httpx-aiohttp"]


def _cfg(**kw: Any) -> FetchConfig:
    base: dict[str, Any] = {
        "allowed_networks": LOOPBACK,
        "per_hop_timeout_s": 1.0,
        "total_timeout_s": 2.0,
        "backoff_base_s": 0.01,
        "backoff_jitter_s": 0.01,
    }
    base.update(kw)
    return FetchConfig(**base)


def with_server(
    fn: Callable[..., Awaitable[None]], docs: dict[str, str] | None = None, **cfg: Any
) -> None:
    """Run ``fn(base, app, client)`` against a fresh mock server and client."""

    async def main() -> None:
        runner, base = await start_mock_adserver(docs=docs)
        try:
            async with VastHttpClient(_cfg(**cfg)) as client:
                await fn(base, runner.app, client)
        finally:
            await runner.cleanup()

    asyncio.run(main())


async def _resolve(client: VastHttpClient, url: str, **kw: Any) -> ChainResult:
    return await resolve_chain(url, client=client, **kw)


# ------------------------------------------------------------------ chains


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("wrappers", [1, 2, 3, 4, 5, 6])
def test_chain_lengths(transport: str, wrappers: int) -> None:
    async def t(base: str, app: web.Application, client: VastHttpClient) -> None:
        r = await _resolve(client, f"{base}/wrapper/{wrappers}")
        if wrappers <= 5:
            assert r.status == "filled", r
            assert r.ad is not None and r.hops == wrappers + 1
            assert len(r.ad.impressions) == wrappers + 1
            assert r.ad.impressions[0].endswith(f"/pixel/imp/w{wrappers}")
            assert r.ad.impressions[-1].endswith("/pixel/imp/inline-0")
            assert r.ad.pricing is not None and r.ad.pricing.value == Decimal("2.50")
            assert r.ad.tracking_counts() == {"start": wrappers + 1, "complete": 1}
            assert len(r.hop_timings_ms) == wrappers + 1
            assert r.final_xml is not None and "<InLine>" in r.final_xml
        else:
            assert r.status == "error" and r.vast_error_code == 302 and r.reason == "wrapper_limit"
            assert r.hops == 6 and app[HITS]["/wrapper/0"] == 0
            assert len(r.error_urls) == 6
            assert all(u.endswith("?code=302") for u in r.error_urls)

    with_server(t, transport=transport)


def test_max_hops_is_per_call() -> None:
    async def t(base: str, app: web.Application, client: VastHttpClient) -> None:
        r = await _resolve(client, f"{base}/wrapper/3", max_hops=2)
        assert r.vast_error_code == 302 and r.hops == 3
        r = await _resolve(client, f"{base}/wrapper/6", max_hops=6)
        assert r.status == "filled" and r.hops == 7

    with_server(t)


def test_namespaced_chain_and_merge_order() -> None:
    async def t(base: str, app: web.Application, client: VastHttpClient) -> None:
        r = await _resolve(client, f"{base}/wrapper/2?ns=1")
        assert r.status == "filled" and r.ad is not None
        tails = [u.rsplit("/", 1)[1] for u in r.ad.impressions]
        assert tails == ["w2", "w1", "inline-0"]
        starts = [t.url.rsplit("/", 1)[1] for t in r.ad.tracking_events() if t.event == "start"]
        assert starts == ["inline-0", "w1", "w2"]
        clicks = [u.rsplit("/", 1)[1] for u in r.ad.click_trackings()]
        assert clicks == ["inline-0", "w1", "w2"]
        assert [u.rsplit("/", 1)[1].split("?")[0] for u in r.ad.error_urls] == [
            "w2",
            "w1",
            "inline-0",
        ]
        assert "[ERRORCODE]" in r.ad.error_urls[0]  # left for the player to fill

    with_server(t)


def test_pricing_taken_from_first_document_stating_it() -> None:
    docs = {
        "priced": """<VAST version="4.2"><Ad><Wrapper>
      <VASTAdTagURI>{base}/wrapper/1</VASTAdTagURI>
      <Pricing model="CPM" currency="EUR">9.99</Pricing></Wrapper></Ad></VAST>"""
    }

    async def t(base: str, app: web.Application, client: VastHttpClient) -> None:
        r = await _resolve(client, f"{base}/doc/priced")
        assert r.status == "filled" and r.ad is not None and r.ad.pricing is not None
        assert (r.ad.pricing.currency, r.ad.pricing.value) == ("EUR", Decimal("9.99"))

    with_server(t, docs=docs)


def test_pod_by_sequence() -> None:
    docs = {
        "pod": """<VAST version="4.2">
      <Ad id="second" sequence="2"><InLine><Impression>{base}/pixel/2</Impression></InLine></Ad>
      <Ad id="first" sequence="1"><Wrapper allowMultipleAds="true">
        <VASTAdTagURI>{base}/inline</VASTAdTagURI></Wrapper></Ad>
      <Ad id="third" sequence="3"><InLine><Impression>{base}/pixel/3</Impression></InLine></Ad>
      <Ad id="buffet"><InLine/></Ad></VAST>"""
    }

    async def t(base: str, app: web.Application, client: VastHttpClient) -> None:
        r = await _resolve(client, f"{base}/doc/pod")
        assert r.status == "filled"
        assert [a.ad_id for a in r.pod] == ["inline-0", "second", "third"]
        assert r.ad is r.pod[0] and r.hops == 2

    with_server(t, docs=docs)


def test_follow_additional_wrappers_false() -> None:
    docs = {
        "nofollow": '<VAST version="4.2"><Ad><Wrapper followAdditionalWrappers="false">'
        "<VASTAdTagURI>{base}/wrapper/1</VASTAdTagURI><Error>{base}/pixel/e?c=[ERRORCODE]</Error>"
        "</Wrapper></Ad></VAST>",
        "nofollow_ok": '<VAST version="4.2"><Ad><Wrapper followAdditionalWrappers="0">'
        "<VASTAdTagURI>{base}/inline</VASTAdTagURI></Wrapper></Ad></VAST>",
    }

    async def t(base: str, app: web.Application, client: VastHttpClient) -> None:
        r = await _resolve(client, f"{base}/doc/nofollow")
        assert r.status == "no_fill" and r.vast_error_code == 303
        assert r.reason == "additional_wrappers_not_allowed"
        assert app[HITS]["/wrapper/0"] == 0
        assert f"{base}/pixel/e?c=303" in r.error_urls
        r = await _resolve(client, f"{base}/doc/nofollow_ok")
        assert r.status == "filled"

    with_server(t, docs=docs)


def test_allow_multiple_ads_false_takes_first_standalone() -> None:
    docs = {
        "multi": '<VAST version="4.2"><Ad id="p1" sequence="1"><InLine/></Ad>'
        '<Ad id="p2" sequence="2"><InLine/></Ad><Ad id="solo"><InLine/></Ad></VAST>',
        "w_single": "<VAST version='4.2'><Ad><Wrapper><VASTAdTagURI>{base}/doc/multi"
        "</VASTAdTagURI></Wrapper></Ad></VAST>",
        "w_multi": "<VAST version='4.2'><Ad><Wrapper allowMultipleAds='true'><VASTAdTagURI>"
        "{base}/doc/multi</VASTAdTagURI></Wrapper></Ad></VAST>",
    }

    async def t(base: str, app: web.Application, client: VastHttpClient) -> None:
        r = await _resolve(client, f"{base}/doc/w_single")
        assert [a.ad_id for a in r.pod] == ["solo"]
        r = await _resolve(client, f"{base}/doc/w_multi")
        assert [a.ad_id for a in r.pod] == ["p1", "p2"]

    with_server(t, docs=docs)


@pytest.mark.parametrize("fallback", ["true", "false", None])
def test_fallback_on_no_ad(fallback: str | None) -> None:
    attr = f' fallbackOnNoAd="{fallback}"' if fallback else ""
    docs = {
        "fb": f'<VAST version="4.2"><Ad id="w"><Wrapper{attr}>'
        "<VASTAdTagURI>{base}/empty</VASTAdTagURI>"
        "<Error><![CDATA[{base}/pixel/werr?c=[ERRORCODE]]]></Error></Wrapper></Ad>"
        '<Ad id="standby"><InLine><Impression>{base}/pixel/s</Impression></InLine></Ad>'
        "</VAST>"
    }

    async def t(base: str, app: web.Application, client: VastHttpClient) -> None:
        r = await _resolve(client, f"{base}/doc/fb")
        assert f"{base}/pixel/werr?c=303" in r.error_urls
        if fallback == "false":
            assert r.status == "no_fill" and r.vast_error_code == 303
        else:
            assert r.status == "filled" and r.ad is not None and r.ad.ad_id == "standby"

    with_server(t, docs=docs)


# ------------------------------------------------------------------ retries


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_retries_on_500_then_succeeds(transport: str) -> None:
    async def t(base: str, app: web.Application, client: VastHttpClient) -> None:
        r = await _resolve(client, f"{base}/wrapper/0?fail_first=2")
        assert r.status == "filled"
        assert app[HITS]["/wrapper/0"] == 3

    with_server(t, transport=transport, max_retries=2)


def test_retries_exhausted_gives_301() -> None:
    async def t(base: str, app: web.Application, client: VastHttpClient) -> None:
        r = await _resolve(client, f"{base}/wrapper/1?fail_first=9")
        assert r.status == "error" and r.vast_error_code == 301
        assert app[HITS]["/wrapper/1"] == 3

    with_server(t, max_retries=2)


def test_no_retry_on_404_and_303_after_wrapper() -> None:
    docs = {
        "w404": "<VAST version='4.2'><Ad><Wrapper><VASTAdTagURI>{base}/inline?status=404"
        "</VASTAdTagURI><Error>{base}/pixel/e?c=[ERRORCODE]</Error></Wrapper></Ad></VAST>"
    }

    async def t(base: str, app: web.Application, client: VastHttpClient) -> None:
        r = await _resolve(client, f"{base}/inline?status=404")
        assert r.vast_error_code == 301 and r.reason == "http_404"
        assert app[HITS]["/inline"] == 1
        r = await _resolve(client, f"{base}/doc/w404")
        assert r.vast_error_code == 303 and r.error_urls == [f"{base}/pixel/e?c=303"]
        assert app[HITS]["/inline"] == 2

    with_server(t, docs=docs, max_retries=3)


def test_retry_never_sleeps_past_deadline() -> None:
    async def t(base: str, app: web.Application, client: VastHttpClient) -> None:
        t0 = time.perf_counter()
        r = await _resolve(client, f"{base}/inline?fail_first=99")
        assert r.vast_error_code == 301
        assert time.perf_counter() - t0 < 0.6
        assert app[HITS]["/inline"] == 1

    with_server(t, max_retries=5, backoff_base_s=1.0, per_hop_timeout_s=0.5)


# ------------------------------------------------------------------ hostile input


def test_xxe_no_leak() -> None:
    async def t(base: str, app: web.Application, client: VastHttpClient) -> None:
        r = await _resolve(client, f"{base}/inline?xxe=1")
        assert r.status == "error" and r.vast_error_code == 100 and r.reason == "doctype"
        assert "root:" not in repr(r)

    with_server(t)


def test_billion_laughs_bounded() -> None:
    async def t(base: str, app: web.Application, client: VastHttpClient) -> None:
        tracemalloc.start()
        t0 = time.perf_counter()
        r = await _resolve(client, f"{base}/inline?billion_laughs=1")
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert r.vast_error_code == 100
        assert elapsed < 1.0 and peak < 5 * 1024 * 1024

    with_server(t)


def test_external_dtd_never_fetched() -> None:
    docs = {
        "dtd": '<?xml version="1.0"?><!DOCTYPE VAST SYSTEM "{base}/pixel/evil.dtd">'
        '<VAST version="4.2"><Ad><InLine/></Ad></VAST>'
    }

    async def t(base: str, app: web.Application, client: VastHttpClient) -> None:
        r = await _resolve(client, f"{base}/doc/dtd")
        assert r.vast_error_code == 100
        await asyncio.sleep(0.05)
        assert app[HITS]["/pixel/evil.dtd"] == 0

    with_server(t, docs=docs)


def test_wrapper_loop() -> None:
    async def t(base: str, app: web.Application, client: VastHttpClient) -> None:
        r = await _resolve(client, f"{base}/loop")
        assert r.status == "error" and r.vast_error_code == 302 and r.reason == "wrapper_loop"
        assert app[HITS]["/loop"] == 1 and r.error_urls == [f"{base}/pixel/err/loop?code=302"]

    with_server(t)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_50mb_body_capped(transport: str) -> None:
    async def t(base: str, app: web.Application, client: VastHttpClient) -> None:
        tracemalloc.start()
        t0 = time.perf_counter()
        r = await _resolve(client, f"{base}/inline?huge=50")
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert r.status == "error" and r.reason == "body_too_large" and r.vast_error_code == 100
        assert peak < 8 * 1024 * 1024, peak
        assert elapsed < 2.0

    with_server(t, transport=transport)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_gzip_body_is_decoded(transport: str) -> None:
    async def t(base: str, app: web.Application, client: VastHttpClient) -> None:
        res = await client.get(f"{base}/inline?gzip=1")
        assert res.body.startswith(b"<?xml") and b"<InLine>" in res.body
        r = await _resolve(client, f"{base}/wrapper/1?gzip=1")
        assert r.status == "filled" and r.hops == 2

    with_server(t, transport=transport)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_gzip_bomb_capped_after_decoding(transport: str) -> None:
    async def t(base: str, app: web.Application, client: VastHttpClient) -> None:
        tracemalloc.start()
        r = await _resolve(client, f"{base}/inline?gzip_bomb=40")  # ~40 KB on the wire
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert r.status == "error" and r.reason == "body_too_large" and r.vast_error_code == 100
        if transport == "aiohttp":  # the bounded inflater never holds more than cap + 1 chunk
            assert peak < 4 * 1024 * 1024, peak

    with_server(t, transport=transport)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_slow_drip_stopped_by_deadline(transport: str) -> None:
    docs = {
        "wdrip": "<VAST version='4.2'><Ad><Wrapper><VASTAdTagURI>{base}/inline?drip=30"
        "</VASTAdTagURI><Error>{base}/pixel/e?c=[ERRORCODE]</Error></Wrapper></Ad></VAST>"
    }

    async def t(base: str, app: web.Application, client: VastHttpClient) -> None:
        t0 = time.perf_counter()
        r = await _resolve(client, f"{base}/doc/wdrip")
        elapsed = time.perf_counter() - t0
        assert r.status == "timeout" and r.vast_error_code == 301
        assert r.error_urls == [f"{base}/pixel/e?c=301"]
        assert 0.4 < elapsed < 1.0

    with_server(t, docs=docs, transport=transport, per_hop_timeout_s=0.5)


def test_total_timeout_bounds_chain() -> None:
    async def t(base: str, app: web.Application, client: VastHttpClient) -> None:
        t0 = time.perf_counter()
        r = await _resolve(client, f"{base}/inline?delay_ms=2000", timeout_s=0.3)
        assert r.status == "timeout" and time.perf_counter() - t0 < 0.6

    with_server(t)


def test_not_xml() -> None:
    async def t(base: str, app: web.Application, client: VastHttpClient) -> None:
        r = await _resolve(client, f"{base}/inline?not_xml=1")
        assert r.vast_error_code == 100 and r.reason == "malformed"

    with_server(t)


# ------------------------------------------------------------------ SSRF


def test_loopback_blocked_without_allow_list_no_request_made() -> None:
    async def t(base: str, app: web.Application, client: VastHttpClient) -> None:
        async with VastHttpClient(FetchConfig()) as strict:
            r = await _resolve(strict, f"{base}/inline")
            assert r.status == "error" and r.reason == "blocked" and r.vast_error_code == 900
            r = await _resolve(strict, f"http://localhost:{base.rsplit(':', 1)[1]}/inline")
            assert r.reason == "blocked"
        assert app[HITS]["/inline"] == 0

    with_server(t)


def test_loopback_allowed_with_allow_list() -> None:
    async def t(base: str, app: web.Application, client: VastHttpClient) -> None:
        r = await _resolve(client, f"{base}/inline")
        assert r.status == "filled" and app[HITS]["/inline"] == 1

    with_server(t)


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/vast",
        "http://127.0.0.2/x",
        "http://[::1]/x",
        "http://[::ffff:10.0.0.1]/x",
        "http://0.0.0.0/x",
    ],
)
def test_redirect_and_wrapper_to_private_blocked(target: str) -> None:
    docs = {
        "w": f"<VAST version='4.2'><Ad><Wrapper><VASTAdTagURI><![CDATA[{target}]]>"
        "</VASTAdTagURI></Wrapper></Ad></VAST>"
    }

    async def t(base: str, app: web.Application, client: VastHttpClient) -> None:
        r = await _resolve(client, f"{base}/inline?redirect_to={target}")
        assert r.status == "error" and r.reason == "blocked" and r.vast_error_code == 900
        r = await _resolve(client, f"{base}/doc/w")
        assert r.reason == "blocked" and r.vast_error_code == 300

    with_server(t, docs=docs)


def test_redirect_followed_when_allowed_and_capped() -> None:
    async def t(base: str, app: web.Application, client: VastHttpClient) -> None:
        r = await _resolve(client, f"{base}/empty?redirect_to={base}/inline")
        assert r.status == "filled" and app[HITS]["/inline"] == 1
        hop = f"{base}/inline"
        for _ in range(4):
            hop = f"{base}/empty?redirect_to={hop.replace('&', '%26').replace('?', '%3F')}"
        r = await _resolve(client, hop)
        assert r.reason == "redirect"

    with_server(t)


@pytest.mark.parametrize(
    ("addr", "allowed"),
    [
        ("8.8.8.8", True),
        ("2606:4700::1111", True),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("127.0.0.1", False),
        ("169.254.169.254", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:10.0.0.1", False),
        ("100.64.0.1", False),
        ("224.0.0.1", False),
        ("0.0.0.0", False),
        ("240.0.0.1", False),
        ("not-an-ip", False),
    ],
)
def test_ssrf_rule(addr: str, allowed: bool) -> None:
    assert SsrfGuard().address_allowed(addr) is allowed
    assert SsrfGuard(enabled=False).address_allowed(addr) is True


def test_ssrf_allow_list_is_exact() -> None:
    g = SsrfGuard(allowed=["127.0.0.1/32"])
    assert g.address_allowed("127.0.0.1") and not g.address_allowed("127.0.0.2")


# ------------------------------------------------------------------ headers, cookies, pool


def test_cookies_per_host_and_device_headers() -> None:
    seen: list[tuple[str, str | None, str | None, str | None]] = []

    async def handler(request: web.Request) -> web.Response:
        h = request.headers
        seen.append(
            (
                request.host.split(":")[0],
                h.get("Cookie"),
                h.get("X-Device-IP"),
                h.get("X-Device-User-Agent"),
            )
        )
        port = request.url.port
        step = request.match_info["step"]
        if step == "a":
            body = wrapper_xml("http://127.0.0.1", f"http://localhost:{port}/b")
            resp = web.Response(text=body, content_type="application/xml")
            resp.set_cookie("sid", "one")
            return resp
        if step == "b":
            body = wrapper_xml("http://127.0.0.1", f"http://127.0.0.1:{port}/c")
            return web.Response(text=body, content_type="application/xml")
        return web.Response(text=inline_xml("http://127.0.0.1"), content_type="application/xml")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/{step}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            ctx = ResolveContext(device_ip="203.0.113.7", device_ua="TestUA/1.0")
            async with VastHttpClient(_cfg(allow_private_networks=True)) as client:
                r = await resolve_chain(f"http://127.0.0.1:{port}/a", client=client, ctx=ctx)
                assert r.status == "filled"
                r2 = await resolve_chain(f"http://127.0.0.1:{port}/c", client=client)
                assert r2.status == "filled"
        finally:
            await runner.cleanup()

    asyncio.run(main())
    assert [s[0] for s in seen] == ["127.0.0.1", "localhost", "127.0.0.1", "127.0.0.1"]
    assert seen[0][1] is None
    assert seen[1][1] is None  # a cookie of 127.0.0.1 never goes to another host
    assert seen[2][1] == "sid=one"  # back on the host that set it
    assert seen[3][1] is None  # a later resolution never sees another request's cookies
    assert all(s[2:] == ("203.0.113.7", "TestUA/1.0") for s in seen[:3])
    assert seen[3][2:] == (None, None)


def test_fetcher_raises_only_fetch_errors_and_shared_client_is_per_loop() -> None:
    async def t(base: str, app: web.Application, client: VastHttpClient) -> None:
        with pytest.raises(FetchError) as ei:
            await client.get("ftp://127.0.0.1/x", ctx=FetchContext())
        assert ei.value.kind == "invalid_url"
        with pytest.raises(FetchError) as ei:
            await client.get("http://127.0.0.1:1/x")
        assert ei.value.kind == "connect"
        res = await client.get(f"{base}/inline")
        assert res.status == 200 and b"<InLine>" in res.body
        shared = get_shared_client(_cfg())
        assert get_shared_client() is shared
        await shared.aclose()
        assert get_shared_client() is not shared
        await get_shared_client().aclose()

    with_server(t, max_retries=0)


# ------------------------------------------------------------------ CLI command


def test_resolve_command_text_and_json() -> None:
    import io
    import json

    from streams.resolve_cmd import resolve_command

    async def t(base: str, app: web.Application, client: VastHttpClient) -> None:
        buf = io.StringIO()
        rc = await resolve_command(
            f"{base}/wrapper/2",
            as_json=False,
            max_hops=5,
            timeout_s=2.0,
            allow_private=True,
            out=buf,
        )
        text = buf.getvalue()
        assert rc == 0 and "status: filled" in text and "price: 2.50 USD" in text
        assert "start=3" in text and "hop 2:" in text
        buf = io.StringIO()
        rc = await resolve_command(
            f"{base}/wrapper/3",
            as_json=True,
            max_hops=2,
            timeout_s=2.0,
            allow_private=True,
            out=buf,
        )
        d = json.loads(buf.getvalue())
        assert rc == 2 and d["vast_error_code"] == 302 and d["hops"] == 3
        buf = io.StringIO()
        rc = await resolve_command(
            f"{base}/inline", as_json=True, max_hops=5, timeout_s=2.0, allow_private=False, out=buf
        )
        assert rc == 2 and json.loads(buf.getvalue())["reason"] == "blocked"

    with_server(t)
