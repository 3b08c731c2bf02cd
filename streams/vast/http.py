"""The VAST HTTP fetcher: pooled keep-alive (aiohttp or httpx), SSRF-guarded, bounded.

Guarantees of :meth:`VastHttpClient.get`:
- returns within ``min(deadline, start + per_hop_timeout_s)`` (asyncio
  timeout around connect, redirects, retries and body), so slow-drip servers
  are cut off by the clock, not by the server;
- never holds more than ``max_body_bytes`` of body in memory (checked against
  Content-Length up front and again while streaming);
- retries only on connect errors and 5xx, with exponential backoff + jitter,
  and never sleeps past the hop deadline;
- follows at most ``max_redirects`` redirects by hand, and checks every URL
  (first hop and each redirect target) against the SSRF rule *before* any
  request is made: the host is resolved and every address must be public
  (or allow-listed);
- cookies are per resolution and per exact host (never shared between
  requests or hosts), X-Device-IP / X-Device-User-Agent are forwarded.

Transports (``FetchConfig.transport``), all behind the same policy code:
- ``"aiohttp"`` (default): a pooled ``aiohttp.ClientSession`` driven directly.
  The httpx layer on top of aiohttp cost about twice aiohttp's own per-request
  CPU (URL re-parsing, header objects, stream wrappers), which capped a 3-hop
  chain at ~1/3 of what aiohttp alone does; see benchmarks/bench_resolve.py.
  Compressed bodies are inflated here with a bounded ``zlib`` decoder, so the
  size cap bounds the *decompressed* size exactly (a gzip bomb stops at the cap).
- ``"httpx-aiohttp"``: httpx's API over httpx-aiohttp's AiohttpTransport (the
  previous default, kept for comparison).
- ``"httpx"``: httpx's own httpcore transport. An explicit ``transport=``
  (any ``httpx.AsyncBaseTransport``, e.g. a mock) also uses the httpx API.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import time
import weakref
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.cookiejar import DefaultCookiePolicy
from http.cookies import CookieError, SimpleCookie
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

import httpx

__all__ = [
    "FetchConfig",
    "FetchContext",
    "FetchError",
    "FetchResult",
    "HostCookieJar",
    "SsrfGuard",
    "VastHttpClient",
    "get_shared_client",
]

FetchErrorKind = Literal[
    "timeout", "connect", "status", "too_large", "blocked", "redirect", "invalid_url", "protocol"
]
TransportName = Literal["aiohttp", "httpx-aiohttp", "httpx"]
_REDIRECTS = frozenset({301, 302, 303, 307, 308})

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class FetchConfig:
    """Knobs of the fetcher; defaults suit a server-side resolver.

    ``total_timeout_s`` (~3 s, like IMA's overall VAST budget) bounds a whole
    chain; ``per_hop_timeout_s`` bounds one document including its retries.
    ``allowed_networks`` are CIDRs allowed even though private/loopback;
    ``allow_private_networks`` switches the SSRF rule off entirely.
    """

    pool_size: int = 256
    pool_timeout_s: float = 1.0
    keep_alive: bool = True
    keepalive_expiry_s: float = 30.0
    connect_timeout_s: float = 1.0
    per_hop_timeout_s: float = 1.5
    total_timeout_s: float = 3.0
    max_retries: int = 2
    backoff_base_s: float = 0.05
    backoff_max_s: float = 0.5
    backoff_jitter_s: float = 0.05
    max_body_bytes: int = 1 << 20
    max_redirects: int = 3
    allow_private_networks: bool = False
    allowed_networks: tuple[str, ...] = ()
    user_agent: str = "xsp-vast/0.1"
    transport: TransportName = "aiohttp"
    dns_cache_ttl_s: float = 30.0


class FetchError(Exception):
    """A fetch that produced no usable body; ``kind`` says why."""

    def __init__(
        self, kind: FetchErrorKind, message: str, *, url: str = "", status: int | None = None
    ) -> None:
        self.kind: FetchErrorKind = kind
        self.url = url
        self.status = status
        super().__init__(f"{kind}: {message} ({url})" if url else f"{kind}: {message}")


class _Retryable(Exception):
    def __init__(self, error: FetchError) -> None:
        self.error = error


@dataclass(slots=True)
class FetchResult:
    """A successful (2xx, size-capped) response body."""

    url: str
    final_url: str
    status: int
    body: bytes
    elapsed_ms: float
    attempts: int = 1
    redirects: int = 0


class HostCookieJar:
    """Cookies scoped to the exact host that set them, for one resolution only.

    Deliberately simpler than RFC 6265: ``Domain`` never widens the scope, so a
    tracker on one host can never read or plant cookies for another.
    """

    def __init__(self, initial: dict[str, dict[str, str]] | None = None) -> None:
        self._jar: dict[str, dict[str, str]] = {
            h.lower(): dict(c) for h, c in (initial or {}).items()
        }

    def header_for(self, host: str) -> str | None:
        """The Cookie header value for ``host`` or ``None``."""
        c = self._jar.get(host.lower())
        if not c:
            return None
        return "; ".join(f"{k}={v}" for k, v in c.items())

    def store(self, host: str, set_cookie_values: Iterable[str]) -> None:
        """Remember cookies from Set-Cookie headers of a response from ``host``."""
        for raw in set_cookie_values:
            sc: SimpleCookie = SimpleCookie()
            try:
                sc.load(raw)
            except CookieError:
                continue  # malformed cookie: ignore, never fail the fetch over it
            for name, morsel in sc.items():
                self._jar.setdefault(host.lower(), {})[name] = morsel.value

    def get(self, host: str) -> dict[str, str]:
        """A copy of the cookies stored for ``host``."""
        return dict(self._jar.get(host.lower(), {}))


@dataclass(slots=True)
class FetchContext:
    """Per-request data the fetcher forwards: device headers and the cookie jar."""

    device_ip: str | None = None
    device_ua: str | None = None
    cookies: HostCookieJar = field(default_factory=HostCookieJar)


class SsrfGuard:
    """Decides whether a host may be contacted; resolves names (small TTL cache).

    Rule: an address is allowed iff the guard is disabled, or it lies in an
    allow-listed network, or it is globally routable and not multicast (this
    blocks private, loopback, link-local, CGNAT, reserved, unspecified and
    IPv4-mapped forms of those). A host is allowed iff *all* its addresses are.
    """

    def __init__(
        self, *, enabled: bool = True, allowed: Iterable[str] = (), dns_ttl_s: float = 30.0
    ) -> None:
        self.enabled = enabled
        self.allowed: tuple[IpNetwork, ...] = tuple(
            ipaddress.ip_network(c, strict=False) for c in allowed
        )
        self._ttl = dns_ttl_s
        self._cache: dict[tuple[str, int], tuple[float, list[str]]] = {}
        # Successful checks, keyed by the host as written: IP literals forever
        # (the rule is a pure function of the address), names for the DNS TTL.
        self._checked: dict[tuple[str, int], tuple[float, list[str]]] = {}

    def address_allowed(self, addr: str) -> bool:
        """True if a request to IP ``addr`` is allowed by the rule above."""
        if not self.enabled:
            return True
        try:
            ip: IpAddress = ipaddress.ip_address(addr.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        for net in self.allowed:
            if ip.version == net.version and ip in net:
                return True
        return ip.is_global and not ip.is_multicast

    async def resolve(self, host: str, port: int) -> list[str]:
        """All IP addresses ``host`` resolves to (IP literals returned as is)."""
        h = host.strip("[]")
        try:
            ipaddress.ip_address(h.split("%", 1)[0])
            return [h]
        except ValueError:
            pass
        key = (h.lower(), port)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit and hit[0] > now:
            return hit[1]
        infos = await asyncio.get_running_loop().getaddrinfo(
            h, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
        addrs = sorted({str(i[4][0]) for i in infos})
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (now + self._ttl, addrs)
        return addrs

    def check_cached(self, host: str, port: int) -> list[str] | None:
        """The addresses of an earlier successful :meth:`check` still valid now, else ``None``.

        Synchronous and allocation-free on a hit, so a chain's hops to an
        already checked host cost one dict look-up instead of a resolution.
        """
        hit = self._checked.get((host, port))
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        return None

    async def check(self, host: str, port: int) -> list[str]:
        """Resolve and return the addresses, or raise ``FetchError('blocked')``."""
        hit = self.check_cached(host, port)
        if hit is not None:
            return hit
        literal = _is_ip_literal(host)
        try:
            addrs = await self.resolve(host, port)
        except OSError as exc:
            raise FetchError("connect", f"cannot resolve {host}: {exc}") from None
        if not addrs:
            raise FetchError("connect", f"{host} has no address")
        if self.enabled:
            bad = [a for a in addrs if not self.address_allowed(a)]
            if bad:
                raise FetchError("blocked", f"{host} resolves to non-public {bad[0]}")
        if len(self._checked) > 10_000:  # bounded: hostile chains could invent hosts
            self._checked.clear()
        expires = float("inf") if literal else time.monotonic() + self._ttl
        self._checked[(host, port)] = (expires, addrs)
        return addrs


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    return True


def _guarded_resolver(guard: SsrfGuard) -> Any:
    import aiohttp
    from aiohttp.abc import AbstractResolver, ResolveResult

    class _GuardedResolver(AbstractResolver):
        """Re-applies the SSRF rule at connect time, so a DNS answer that
        changed after the pre-check (rebinding) still cannot reach a private IP."""

        def __init__(self) -> None:
            self._inner = aiohttp.ThreadedResolver()

        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            res = await self._inner.resolve(host, port, family)
            ok = [r for r in res if guard.address_allowed(r["host"])]
            if not ok:
                raise OSError(f"SSRF guard: {host} resolves only to blocked addresses")
            return ok

        async def close(self) -> None:
            await self._inner.close()

    return _GuardedResolver()


def _aiohttp_session(
    cfg: FetchConfig, guard: SsrfGuard, *, headers: dict[str, str] | None = None
) -> Any:
    import aiohttp

    connector = aiohttp.TCPConnector(
        limit=cfg.pool_size,
        limit_per_host=0,
        keepalive_timeout=cfg.keepalive_expiry_s if cfg.keep_alive else None,
        force_close=not cfg.keep_alive,
        resolver=_guarded_resolver(guard) if guard.enabled else None,
        ttl_dns_cache=int(cfg.dns_cache_ttl_s),
    )
    # DummyCookieJar: cookies are handled per resolution by HostCookieJar,
    # a process-wide jar would leak one user's cookies into another's request.
    return aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar(), headers=headers, trust_env=False
    )


def _make_httpx_transport(cfg: FetchConfig, guard: SsrfGuard) -> httpx.AsyncBaseTransport:
    limits = httpx.Limits(
        max_connections=cfg.pool_size,
        max_keepalive_connections=cfg.pool_size if cfg.keep_alive else 0,
        keepalive_expiry=cfg.keepalive_expiry_s,
    )
    if cfg.transport == "httpx-aiohttp":
        from httpx_aiohttp import AiohttpTransport

        return AiohttpTransport(limits=limits, client=lambda: _aiohttp_session(cfg, guard))
    return httpx.AsyncHTTPTransport(limits=limits, retries=0)


# One exchange = (status, Set-Cookie values, Location, body); the body is read
# (size-capped) only for a usable 2xx, never for redirects or errors.
_Reply = tuple[int, list[str], str | None, bytes | None]


def _wants_body(status: int) -> bool:
    return 200 <= status < 300 and status != 204


class _CappedInflater:
    """Incremental gzip/deflate decoder that never produces more than ``cap`` + 1 bytes."""

    def __init__(self, encoding: str) -> None:
        self._gzip = encoding in ("gzip", "x-gzip")
        self._d = zlib.decompressobj(zlib.MAX_WBITS | 16 if self._gzip else zlib.MAX_WBITS)
        self._first = True

    def feed(self, data: bytes, room: int) -> bytes:
        """Decode ``data``; output is at most ``room`` + 1 bytes (so "over the cap" shows)."""
        try:
            out = self._d.decompress(data, room + 1)
        except zlib.error:
            if not (self._first and not self._gzip):
                raise
            # "deflate" in the wild is sometimes raw DEFLATE without the zlib header.
            self._d = zlib.decompressobj(-zlib.MAX_WBITS)
            out = self._d.decompress(data, room + 1)
        self._first = False
        return out

    def flush(self) -> bytes:
        return self._d.flush()


class _AiohttpBackend:
    """Exchanges over one pooled ``aiohttp.ClientSession`` (created on first use,
    inside the running loop; bound to that loop like any aiohttp session)."""

    def __init__(self, cfg: FetchConfig, guard: SsrfGuard, headers: dict[str, str]) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self._cfg = cfg
        self._guard = guard
        # Only encodings _CappedInflater handles are ever advertised.
        self._headers = {**headers, "Accept-Encoding": "gzip, deflate"}
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        # Pool wait and connect as before (httpx-aiohttp's mapping). No sock_read:
        # the hop deadline in get() is never later than per_hop_timeout_s, so a
        # per-read timer (re-armed on every chunk) could never fire first.
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=cfg.pool_timeout_s, sock_connect=cfg.connect_timeout_s
        )

    @property
    def closed(self) -> bool:
        return self._closed

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()

    async def exchange(self, url: str, headers: dict[str, str]) -> _Reply:
        aiohttp = self._aiohttp
        session = self._session
        if session is None:
            if self._closed:
                raise FetchError("protocol", "client is closed", url=url)
            session = self._session = _aiohttp_session(
                self._cfg, self._guard, headers=self._headers
            )
        try:
            resp = await session.request(
                "GET",
                url,
                headers=headers,
                allow_redirects=False,
                auto_decompress=False,
                timeout=self._timeout,
            )
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise _Retryable(
                FetchError("connect", str(exc) or type(exc).__name__, url=url)
            ) from None
        except aiohttp.ServerTimeoutError as exc:
            raise FetchError("timeout", str(exc) or type(exc).__name__, url=url) from None
        except aiohttp.ClientConnectionError as exc:
            # e.g. a pooled keep-alive connection closed by the server under us
            raise _Retryable(
                FetchError("connect", str(exc) or type(exc).__name__, url=url)
            ) from None
        except (aiohttp.ClientError, ValueError) as exc:  # bad URL, malformed response
            raise FetchError("protocol", str(exc) or type(exc).__name__, url=url) from None
        try:
            status = resp.status
            hdrs = resp.headers
            cookies = hdrs.getall("Set-Cookie", [])
            if not _wants_body(status):
                return status, cookies, hdrs.get("Location"), None
            return status, cookies, None, await self._read_capped(resp, url)
        finally:
            resp.release()  # back to the pool, or closed if the body was not consumed

    async def _read_capped(self, resp: Any, url: str) -> bytes:
        aiohttp = self._aiohttp
        cap = self._cfg.max_body_bytes
        clen = resp.content_length
        if clen is not None and clen > cap:
            raise FetchError("too_large", f"Content-Length {clen} > {cap}", url=url)
        enc = (resp.headers.get("Content-Encoding") or "identity").strip().lower()
        content = resp.content
        try:
            if enc not in ("gzip", "x-gzip", "deflate"):
                # Identity (or an encoding we never asked for, passed through
                # as httpx did). With a Content-Length within the cap aiohttp's
                # parser delivers exactly that many bytes: one read, no loop.
                if clen is not None:
                    return await content.read()
                buf = bytearray()
                while chunk := await content.readany():
                    buf += chunk
                    if len(buf) > cap:
                        raise FetchError("too_large", f"body > {cap} bytes", url=url)
                return bytes(buf)
            inflater = _CappedInflater(enc)
            buf = bytearray()
            while chunk := await content.readany():
                buf += inflater.feed(chunk, cap - len(buf))
                if len(buf) > cap:
                    raise FetchError("too_large", f"decoded body > {cap} bytes", url=url)
            buf += inflater.flush()
            if len(buf) > cap:
                raise FetchError("too_large", f"decoded body > {cap} bytes", url=url)
            return bytes(buf)
        except aiohttp.ServerTimeoutError as exc:
            raise FetchError("timeout", str(exc) or "read timeout", url=url) from None
        except (aiohttp.ClientError, zlib.error) as exc:
            raise FetchError("protocol", str(exc) or type(exc).__name__, url=url) from None


class _HttpxBackend:
    """Exchanges through an ``httpx.AsyncClient`` (any httpx transport)."""

    def __init__(
        self, cfg: FetchConfig, transport: httpx.AsyncBaseTransport, headers: dict[str, str]
    ) -> None:
        self._cfg = cfg
        self.client = httpx.AsyncClient(
            transport=transport,
            follow_redirects=False,
            trust_env=False,  # never route ad calls through an env-configured proxy
            headers=headers,
            timeout=httpx.Timeout(
                cfg.per_hop_timeout_s, connect=cfg.connect_timeout_s, pool=cfg.pool_timeout_s
            ),
        )
        # The client-level jar would be shared by every request of the process.
        self.client.cookies.jar.set_policy(DefaultCookiePolicy(allowed_domains=()))

    @property
    def closed(self) -> bool:
        return self.client.is_closed

    async def aclose(self) -> None:
        await self.client.aclose()

    async def exchange(self, url: str, headers: dict[str, str]) -> _Reply:
        try:
            req = self.client.build_request("GET", url, headers=headers)
            resp = await self.client.send(req, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise _Retryable(
                FetchError("connect", str(exc) or type(exc).__name__, url=url)
            ) from None
        except httpx.PoolTimeout as exc:
            raise FetchError("timeout", f"pool: {exc}", url=url) from None
        except httpx.TimeoutException as exc:
            raise FetchError("timeout", str(exc) or type(exc).__name__, url=url) from None
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            raise FetchError("protocol", str(exc) or type(exc).__name__, url=url) from None
        try:
            status = resp.status_code
            cookies = resp.headers.get_list("set-cookie")
            if not _wants_body(status):
                return status, cookies, resp.headers.get("location"), None
            return status, cookies, None, await self._read_capped(resp, url)
        finally:
            await resp.aclose()

    async def _read_capped(self, resp: httpx.Response, url: str) -> bytes:
        cap = self._cfg.max_body_bytes
        clen = resp.headers.get("content-length")
        if clen is not None and clen.isdigit() and int(clen) > cap:
            raise FetchError("too_large", f"Content-Length {clen} > {cap}", url=url)
        buf = bytearray()
        try:
            # aiter_bytes decodes gzip/deflate incrementally, so the cap also
            # bounds decompressed size (a small gzip bomb stops at `cap`).
            async for chunk in resp.aiter_bytes():
                buf += chunk
                if len(buf) > cap:
                    raise FetchError("too_large", f"body > {cap} bytes", url=url)
        except httpx.TimeoutException as exc:
            raise FetchError("timeout", str(exc) or "read timeout", url=url) from None
        except (httpx.TransportError, httpx.DecodingError) as exc:
            raise FetchError("protocol", str(exc) or type(exc).__name__, url=url) from None
        return bytes(buf)


class VastHttpClient:
    """One pooled keep-alive connection pool plus the VAST fetch policy.

    Bound to the event loop it is first used on (every transport is); use
    :func:`get_shared_client` for one instance per process/loop.
    """

    def __init__(
        self,
        config: FetchConfig | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = cfg = config or FetchConfig()
        self.guard = SsrfGuard(
            enabled=not cfg.allow_private_networks,
            allowed=cfg.allowed_networks,
            dns_ttl_s=cfg.dns_cache_ttl_s,
        )
        headers = {"User-Agent": cfg.user_agent, "Accept": "application/xml, text/xml, */*"}
        self._backend: _AiohttpBackend | _HttpxBackend
        if transport is None and cfg.transport == "aiohttp":
            self._backend = _AiohttpBackend(cfg, self.guard, headers)
        else:
            self._backend = _HttpxBackend(
                cfg, transport or _make_httpx_transport(cfg, self.guard), headers
            )
        self._exchange = self._backend.exchange

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` ran."""
        return self._backend.closed

    async def __aenter__(self) -> VastHttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pool (idempotent)."""
        await self._backend.aclose()

    async def get(
        self, url: str, *, ctx: FetchContext | None = None, deadline: float | None = None
    ) -> FetchResult:
        """GET one VAST document under the policy in the module docstring.

        ``deadline`` is an absolute ``loop.time()``; default ``now + total_timeout_s``.
        Raises :class:`FetchError` (never an httpx or aiohttp exception).
        """
        cfg = self.config
        ctx = ctx or FetchContext()
        loop = asyncio.get_running_loop()
        start = loop.time()
        if deadline is None:
            deadline = start + cfg.total_timeout_s
        hop_deadline = min(deadline, start + cfg.per_hop_timeout_s)
        attempt = 0
        while True:
            attempt += 1
            try:
                async with asyncio.timeout_at(hop_deadline):
                    res = await self._get_once(url, ctx)
                res.attempts = attempt
                res.elapsed_ms = (loop.time() - start) * 1000.0
                return res
            except TimeoutError:
                raise FetchError("timeout", "deadline reached", url=url) from None
            except _Retryable as r:
                if attempt > cfg.max_retries:
                    raise r.error from None
                delay = min(cfg.backoff_max_s, cfg.backoff_base_s * 2 ** (attempt - 1))
                delay += random.uniform(0, cfg.backoff_jitter_s)
                if loop.time() + delay >= hop_deadline:
                    raise r.error from None  # a retry that cannot finish is pointless
                await asyncio.sleep(delay)

    async def _get_once(self, url: str, ctx: FetchContext) -> FetchResult:
        cfg = self.config
        guard = self.guard
        current = url
        for redirects in range(cfg.max_redirects + 1):
            parts = urlsplit(current)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise FetchError("invalid_url", "only absolute http(s) URLs", url=current)
            try:
                port = parts.port or (443 if parts.scheme == "https" else 80)
            except ValueError:
                raise FetchError("invalid_url", "bad port", url=current) from None
            host = parts.hostname
            if guard.check_cached(host, port) is None:
                await guard.check(host, port)  # raises before any byte is sent
            headers: dict[str, str] = {}
            if ctx.device_ip:
                headers["X-Device-IP"] = ctx.device_ip
            if ctx.device_ua:
                headers["X-Device-User-Agent"] = ctx.device_ua
            cookie = ctx.cookies.header_for(host)
            if cookie:
                headers["Cookie"] = cookie
            status, set_cookies, location, body = await self._exchange(current, headers)
            if set_cookies:
                ctx.cookies.store(host, set_cookies)
            if status in _REDIRECTS:
                if not location:
                    raise FetchError(
                        "status", "redirect without Location", url=current, status=status
                    )
                current = urljoin(current, location)
                continue
            if status >= 500:
                raise _Retryable(FetchError("status", f"HTTP {status}", url=current, status=status))
            if body is None:  # not a usable 2xx (4xx, 204, 1xx, other 3xx)
                raise FetchError("status", f"HTTP {status}", url=current, status=status)
            return FetchResult(
                url=url,
                final_url=current,
                status=status,
                body=body,
                elapsed_ms=0.0,
                redirects=redirects,
            )
        raise FetchError("redirect", f"more than {cfg.max_redirects} redirects", url=url)


_shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, VastHttpClient] = (
    weakref.WeakKeyDictionary()
)


def get_shared_client(config: FetchConfig | None = None) -> VastHttpClient:
    """The process's pooled client for the running event loop (created on first use).

    ``config`` only applies when the client is created; later calls return
    the same instance so every resolution shares one keep-alive pool.
    """
    loop = asyncio.get_running_loop()
    client = _shared.get(loop)
    if client is None or client.closed:
        client = VastHttpClient(config)
        _shared[loop] = client
    return client
