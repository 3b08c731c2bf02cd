"""A loopback-only mock VAST ad server (aiohttp.web) for tests, benchmarks and demos.

Routes (all GET):
- ``/vast/<relative path>``: a file from ``vast_dir``; ``?wrapper_to=URL`` rewrites
  every VASTAdTagURI/VASTAdTagURL in it to URL (to keep sample wrappers local).
- ``/wrapper/N``: N wrappers then an inline; wrapper N points at ``/wrapper/N-1``
  on this server; ``/wrapper/0`` is an inline with ``<Pricing>``. ``?ns=1`` emits
  ``xmlns="http://www.iab.com/VAST"`` documents (propagated down the chain).
- ``/inline``, ``/empty`` (VAST without Ad, with a root Error), ``/loop`` (a
  wrapper pointing at itself), ``/doc/<name>`` (documents registered by the
  caller; ``{base}`` in them is replaced by this server's base URL),
  ``/pixel/...`` (204; impression/tracking/error sink).
Knobs (query parameters, any route): ``delay_ms``, ``status`` (e.g. 500),
``fail_first=N`` (500 for the first N hits of that exact path+query),
``drip`` (bytes/s slow drip of the real body), ``huge=MB`` (stream MB of body,
chunked), ``gzip`` (gzip the real body, ``Content-Encoding: gzip``),
``gzip_bomb=MB`` (a small gzip body that inflates to MB), ``xxe``,
``billion_laughs``, ``not_xml``, ``redirect_to=URL``.
Every request is counted in ``app[HITS]`` (path -> count) so tests can prove
that a blocked URL was never requested.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import gzip
import re
import sys
import zlib
from pathlib import Path

from aiohttp import web

__all__ = ["DOCS", "HITS", "make_app", "run_mock_adserver", "start_mock_adserver"]

HITS = web.AppKey("hits", collections.Counter)
FAILS = web.AppKey("fails", collections.Counter)
DOCS = web.AppKey("docs", dict)
VAST_DIR = web.AppKey("vast_dir", object)

_NS = ' xmlns="http://www.iab.com/VAST"'
_XML = "application/xml"
_URI_TAG = re.compile(
    rb"(<(?:\w+:)?VASTAdTag(?:URI|URL)\b[^>]*>).*?(</(?:\w+:)?VASTAdTag(?:URI|URL)>)", re.S
)


def _base(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def inline_xml(
    base: str,
    *,
    ns: bool = False,
    ad_id: str = "inline-0",
    price: str | None = "2.50",
    sequence: int | None = None,
) -> str:
    """A small, valid VAST 4.2 inline ad whose trackers point at ``base``/pixel."""
    seq = f' sequence="{sequence}"' if sequence is not None else ""
    pricing = f'<Pricing model="cpm" currency="USD">{price}</Pricing>' if price else ""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<VAST version="4.2"{_NS if ns else ""}><Ad id="{ad_id}"{seq}><InLine>
<AdSystem>xsp-mock</AdSystem><AdTitle>mock inline</AdTitle>
<Error><![CDATA[{base}/pixel/err/{ad_id}?code=[ERRORCODE]]]></Error>
<Impression><![CDATA[{base}/pixel/imp/{ad_id}]]></Impression>{pricing}
<Creatives><Creative id="c-{ad_id}"><Linear><Duration>00:00:15</Duration>
<TrackingEvents>
<Tracking event="start"><![CDATA[{base}/pixel/start/{ad_id}]]></Tracking>
<Tracking event="complete"><![CDATA[{base}/pixel/complete/{ad_id}]]></Tracking>
</TrackingEvents>
<VideoClicks><ClickThrough><![CDATA[https://advertiser.example/]]></ClickThrough>
<ClickTracking><![CDATA[{base}/pixel/click/{ad_id}]]></ClickTracking></VideoClicks>
<MediaFiles><MediaFile delivery="progressive" type="video/mp4" width="1280" height="720"
 bitrate="2000"><![CDATA[https://cdn.example/{ad_id}.mp4]]></MediaFile></MediaFiles>
</Linear></Creative></Creatives></InLine></Ad></VAST>"""


def wrapper_xml(
    base: str, target: str, *, ns: bool = False, ad_id: str = "w", attrs: str = ""
) -> str:
    """A VAST 4.2 wrapper pointing at ``target`` with its own trackers."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<VAST version="4.2"{_NS if ns else ""}><Ad id="{ad_id}"><Wrapper{attrs}>
<AdSystem>xsp-mock</AdSystem>
<VASTAdTagURI><![CDATA[{target}]]></VASTAdTagURI>
<Error><![CDATA[{base}/pixel/err/{ad_id}?code=[ERRORCODE]]]></Error>
<Impression><![CDATA[{base}/pixel/imp/{ad_id}]]></Impression>
<Creatives><Creative><Linear><TrackingEvents>
<Tracking event="start"><![CDATA[{base}/pixel/start/{ad_id}]]></Tracking>
</TrackingEvents>
<VideoClicks><ClickTracking><![CDATA[{base}/pixel/click/{ad_id}]]></ClickTracking></VideoClicks>
</Linear></Creative></Creatives></Wrapper></Ad></VAST>"""


def empty_xml(base: str) -> str:
    """A VAST response with no ad and a root-level Error URL."""
    return (
        f'<VAST version="4.2"><Error><![CDATA[{base}/pixel/err/empty?code=[ERRORCODE]]]>'
        "</Error></VAST>"
    )


XXE_DOC = """<?xml version="1.0"?>
<!DOCTYPE VAST [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<VAST version="4.2"><Ad id="x"><InLine><AdSystem>x</AdSystem><AdTitle>&xxe;</AdTitle>
<Impression>http://127.0.0.1/&xxe;</Impression></InLine></Ad></VAST>"""

BILLION_LAUGHS_DOC = (
    '<?xml version="1.0"?>\n<!DOCTYPE lolz [\n<!ENTITY lol "lol">\n'
    + "".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">\n'
        for i in range(1, 10)
    )
    + ']>\n<VAST version="4.2"><Ad><InLine><AdTitle>&lol9;</AdTitle></InLine></Ad></VAST>'
)


def _xml(body: str | bytes, status: int = 200) -> web.Response:
    data = body.encode() if isinstance(body, str) else body
    return web.Response(body=data, status=status, content_type=_XML)


async def _wrapper(request: web.Request) -> web.Response:
    n = int(request.match_info["n"])
    ns = request.query.get("ns") == "1"
    base = _base(request)
    if n <= 0:
        return _xml(inline_xml(base, ns=ns))
    target = f"{base}/wrapper/{n - 1}" + ("?ns=1" if ns else "")
    return _xml(wrapper_xml(base, target, ns=ns, ad_id=f"w{n}"))


async def _inline(request: web.Request) -> web.Response:
    return _xml(inline_xml(_base(request), ns=request.query.get("ns") == "1"))


async def _empty(request: web.Request) -> web.Response:
    return _xml(empty_xml(_base(request)))


async def _loop(request: web.Request) -> web.Response:
    base = _base(request)
    return _xml(wrapper_xml(base, f"{base}/loop", ad_id="loop"))


async def _pixel(request: web.Request) -> web.Response:
    return web.Response(status=204)


async def _doc(request: web.Request) -> web.Response:
    doc = request.app[DOCS].get(request.match_info["name"])
    if doc is None:
        raise web.HTTPNotFound()
    return _xml(doc.replace("{base}", _base(request)))


async def _vast_file(request: web.Request) -> web.Response:
    root = request.app[VAST_DIR]
    if root is None:
        raise web.HTTPNotFound()
    root_path = Path(str(root)).resolve()
    path = (root_path / request.match_info["path"]).resolve()
    if root_path not in path.parents or not path.is_file():  # no traversal out of vast_dir
        raise web.HTTPNotFound()
    data = path.read_bytes()
    target = request.query.get("wrapper_to")
    if target:
        repl = b"\\1<![CDATA[" + target.encode() + b"]]>\\2"
        data = _URI_TAG.sub(repl, data)
    return _xml(data)


@web.middleware
async def _knobs(request: web.Request, handler):  # type: ignore[no-untyped-def]
    q = request.query
    request.app[HITS][request.path] += 1
    if "delay_ms" in q:
        await asyncio.sleep(float(q["delay_ms"]) / 1000.0)
    if "fail_first" in q:
        key = request.path_qs
        request.app[FAILS][key] += 1
        if request.app[FAILS][key] <= int(q["fail_first"]):
            return web.Response(status=500, text="planned failure")
    if "status" in q:
        return web.Response(status=int(q["status"]), text="planned status")
    if "redirect_to" in q:
        raise web.HTTPFound(q["redirect_to"])
    if "xxe" in q:
        return _xml(XXE_DOC)
    if "billion_laughs" in q:
        return _xml(BILLION_LAUGHS_DOC)
    if "not_xml" in q:
        return web.Response(text="<html><body>definitely not VAST", content_type="text/html")
    if "huge" in q:
        return await _stream_huge(request, float(q["huge"]))
    if "gzip_bomb" in q:
        return web.Response(
            body=_gzip_bomb(int(float(q["gzip_bomb"]) * 1024 * 1024)),
            headers={"Content-Type": _XML, "Content-Encoding": "gzip"},
        )
    resp = await handler(request)
    if "gzip" in q and isinstance(resp, web.Response) and resp.body is not None:
        return web.Response(
            body=gzip.compress(bytes(resp.body)),  # type: ignore[arg-type]
            headers={"Content-Type": _XML, "Content-Encoding": "gzip"},
        )
    if "drip" in q and isinstance(resp, web.Response) and resp.body is not None:
        return await _drip(request, bytes(resp.body), max(1.0, float(q["drip"])))  # type: ignore[arg-type]
    return resp


@functools.lru_cache(maxsize=4)
def _gzip_bomb(size: int) -> bytes:
    """``<VAST version="4.2">`` + ``size`` bytes of blanks, gzip-compressed (~1000:1)."""
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [c.compress(b'<VAST version="4.2">')]
    block = b" " * (1 << 20)
    for _ in range(size // len(block)):
        parts.append(c.compress(block))
    parts.append(c.compress(b"</VAST>"))
    parts.append(c.flush())
    return b"".join(parts)


async def _stream_huge(request: web.Request, mb: float) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": _XML})
    resp.enable_chunked_encoding()  # no Content-Length: the client must cap while streaming
    await resp.prepare(request)
    chunk = b"<!-- " + b"x" * (64 * 1024 - 10) + b" -->\n"
    total = int(mb * 1024 * 1024)
    await resp.write(b'<VAST version="4.2">')
    sent = 0
    try:
        while sent < total:
            await resp.write(chunk)
            sent += len(chunk)
        await resp.write(b"</VAST>")
    except (ConnectionError, RuntimeError):
        pass  # the client hung up at its size cap, as it should
    return resp


async def _drip(request: web.Request, body: bytes, rate: float) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": _XML})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    step = max(1, int(rate / 10))
    try:
        for i in range(0, len(body), step):
            await resp.write(body[i : i + step])
            await asyncio.sleep(step / rate)
    except (ConnectionError, RuntimeError):
        pass
    return resp


def make_app(
    vast_dir: str | Path | None = None, docs: dict[str, str] | None = None
) -> web.Application:
    """Build the mock application (routes and knobs as in the module docstring)."""
    app = web.Application(middlewares=[_knobs])
    app[HITS] = collections.Counter()
    app[FAILS] = collections.Counter()
    app[DOCS] = dict(docs or {})
    app[VAST_DIR] = str(vast_dir) if vast_dir else None
    app.router.add_get("/wrapper/{n:-?\\d+}", _wrapper)
    app.router.add_get("/inline", _inline)
    app.router.add_get("/empty", _empty)
    app.router.add_get("/loop", _loop)
    app.router.add_get("/doc/{name}", _doc)
    app.router.add_get("/pixel/{tail:.*}", _pixel)
    app.router.add_get("/vast/{path:.+}", _vast_file)
    return app


def _check_host(host: str) -> None:
    if host != "127.0.0.1":
        raise ValueError("the mock ad server binds to 127.0.0.1 only")


async def start_mock_adserver(
    host: str = "127.0.0.1",
    port: int = 0,
    vast_dir: str | Path | None = None,
    docs: dict[str, str] | None = None,
) -> tuple[web.AppRunner, str]:
    """Start the server on loopback; return ``(runner, base_url)``.

    ``port=0`` picks a free port. Stop it with ``await runner.cleanup()``;
    the app (hit counters, registered docs) is ``runner.app``.
    """
    _check_host(host)
    runner = web.AppRunner(make_app(vast_dir, docs), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    server = site._server
    assert server is not None and server.sockets  # type: ignore[attr-defined]
    real_port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return runner, f"http://{host}:{real_port}"


def run_mock_adserver(
    host: str = "127.0.0.1", port: int = 8089, vast_dir: str | Path | None = None
) -> None:
    """Run the mock server in the foreground until interrupted (CLI entry)."""
    _check_host(host)
    print(f"mock ad server on http://{host}:{port}", file=sys.stderr)
    web.run_app(make_app(vast_dir), host=host, port=port, access_log=None, print=None)


if __name__ == "__main__":  # pragma: no cover
    run_mock_adserver(vast_dir=sys.argv[1] if len(sys.argv) > 1 else None)
