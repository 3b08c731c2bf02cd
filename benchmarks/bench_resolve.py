"""Resolver throughput and parser cost, measured on loopback.

Usage: ``python -m benchmarks.bench_resolve [--quick] [--json-out PATH]``

Starts the mock ad server in a separate process (so server CPU does not
distort the client under test), then for 1-hop (``/wrapper/0``) and 3-hop
(``/wrapper/2``) chains at concurrency 1/16/64/256 measures resolutions/s and
p50/p99 latency for:
  (a) ``httpx-default``: our resolver on httpx's own transport,
  (b) ``xsp-aiohttp``: our resolver on the chosen transport (httpx-aiohttp),
  (c) ``raw-aiohttp``: a bare aiohttp client doing the same GETs (the ceiling;
      it finds the next hop with a regex instead of parsing).
Then parse µs/doc over the IAB corpus for ``parse_vast`` vs ``lxml.etree.fromstring``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from lxml import etree

from streams.vast.http import FetchConfig, VastHttpClient
from streams.vast.parser import parse_vast
from streams.vast.resolver import resolve_chain

CONCURRENCY = (1, 16, 64, 256)
CHAINS = {"1-hop": "/wrapper/0", "3-hop": "/wrapper/2"}
_NEXT = re.compile(rb"<VASTAdTagURI><!\[CDATA\[(.*?)\]\]>")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server() -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    code = ("from streams.mock_adserver import run_mock_adserver; "
            f"run_mock_adserver('127.0.0.1', {port})")
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL,
                            cwd=str(Path(__file__).resolve().parent.parent))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("mock ad server did not start")


async def _load(fn: Callable[[], Awaitable[bool]], concurrency: int,
                duration: float) -> dict[str, Any]:
    lat: list[float] = []
    errors = 0
    stop = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            ok = await fn()
            lat.append((time.perf_counter() - t0) * 1000)
            errors += 0 if ok else 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    lat.sort()
    return {
        "rps": len(lat) / elapsed,
        "p50_ms": statistics.median(lat) if lat else None,
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else None,
        "n": len(lat),
        "errors": errors,
    }


async def _bench_http(base: str, duration: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cfg = {"allowed_networks": ("127.0.0.1/32",), "pool_size": 512, "total_timeout_s": 10.0,
           "per_hop_timeout_s": 10.0, "pool_timeout_s": 10.0}
    for mode in ("httpx-default", "xsp-aiohttp", "raw-aiohttp"):
        client: VastHttpClient | None = None
        session: aiohttp.ClientSession | None = None
        if mode == "raw-aiohttp":
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512))
        else:
            transport = "httpx" if mode == "httpx-default" else "aiohttp"
            client = VastHttpClient(FetchConfig(transport=transport, **cfg))  # type: ignore[arg-type]
        try:
            for chain, path in CHAINS.items():
                url = base + path

                async def op(url: str = url, session: aiohttp.ClientSession | None = session,
                             client: VastHttpClient | None = client) -> bool:
                    if session is not None:
                        nxt: str | None = url
                        while nxt:
                            async with session.get(nxt) as resp:
                                body = await resp.read()
                            m = _NEXT.search(body)
                            nxt = m.group(1).decode() if m else None
                        return True
                    assert client is not None
                    r = await resolve_chain(url, client=client)
                    return r.status == "filled"

                await _load(op, 8, min(0.2, duration))  # warm the pool
                for c in CONCURRENCY:
                    res = await _load(op, c, duration)
                    res.update(mode=mode, chain=chain, concurrency=c)
                    rows.append(res)
                    print(f"  {mode:14s} {chain} c={c:<4d} {res['rps']:8.0f}/s "
                          f"p50 {res['p50_ms']:7.1f} ms p99 {res['p99_ms']:7.1f} ms "
                          f"err {res['errors']}", file=sys.stderr)
        finally:
            if session is not None:
                await session.close()
            if client is not None:
                await client.aclose()
    return rows


def _bench_parse(quick: bool) -> dict[str, Any]:
    corpus = Path(os.environ.get("XSP_VAST_FIXTURES", "/work/shared/fixtures/vast/iab"))
    datas = [p.read_bytes() for p in sorted(corpus.rglob("*.xml"))] if corpus.is_dir() else []
    if not datas:
        return {"skipped": f"no corpus at {corpus}"}

    def per_doc(fn: Callable[[bytes], object]) -> float:
        best = float("inf")
        for _ in range(3 if quick else 7):
            reps = 10 if quick else 40
            t0 = time.perf_counter()
            for _ in range(reps):
                for d in datas:
                    fn(d)
            best = min(best, (time.perf_counter() - t0) / (reps * len(datas)) * 1e6)
        return best

    raw = per_doc(etree.fromstring)
    ours = per_doc(parse_vast)
    return {"docs": len(datas), "raw_lxml_us": raw, "parse_vast_us": ours, "ratio": ours / raw}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print a table; write JSON if asked. Returns 0."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs (< 30 s total)")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args(argv)
    duration = 0.4 if args.quick else 2.0
    proc, base = _start_server()
    try:
        rows = asyncio.run(_bench_http(base, duration))
    finally:
        proc.terminate()
        proc.wait(timeout=5)
    parse = _bench_parse(args.quick)

    def rps(mode: str, chain: str, c: int) -> float:
        return next(r["rps"] for r in rows
                    if r["mode"] == mode and r["chain"] == chain and r["concurrency"] == c)

    ceiling = rps("raw-aiohttp", "3-hop", 64)
    targets = {
        "3hop_c64_ours_vs_raw": rps("xsp-aiohttp", "3-hop", 64) / ceiling,
        "3hop_c64_httpx_default_vs_raw": rps("httpx-default", "3-hop", 64) / ceiling,
        "3hop_c64_target_met": rps("xsp-aiohttp", "3-hop", 64) / ceiling >= 0.40,
        "parse_target_met": parse.get("ratio", 99) <= 2.0,
    }
    print(f"\n{'mode':15s}{'chain':7s}" + "".join(f"{'c=' + str(c):>22s}" for c in CONCURRENCY))
    for mode in ("httpx-default", "xsp-aiohttp", "raw-aiohttp"):
        for chain in CHAINS:
            cells = []
            for c in CONCURRENCY:
                r = next(x for x in rows if x["mode"] == mode and x["chain"] == chain
                         and x["concurrency"] == c)
                cells.append(f"{r['rps']:7.0f}/s {r['p50_ms']:5.1f}/{r['p99_ms']:5.1f}ms")
            print(f"{mode:15s}{chain:7s}" + "".join(f"{cell:>22s}" for cell in cells))
    print("(cells: resolutions/s p50/p99)")
    if "ratio" in parse:
        print(f"parse: parse_vast {parse['parse_vast_us']:.1f} µs/doc vs raw lxml "
              f"{parse['raw_lxml_us']:.1f} µs/doc = {parse['ratio']:.2f}x "
              f"over {parse['docs']} docs")
    for k, v in targets.items():
        print(f"{k}: {v:.2f}" if isinstance(v, float) else f"{k}: {v}")
    out = {"quick": args.quick, "duration_s": duration, "cpus": os.cpu_count(), "http": rows,
           "parse": parse, "targets": targets}
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
