"""Resolver throughput and parser cost, measured on loopback.

Usage: ``python -m benchmarks.bench_resolve [--quick] [--json-out PATH]``

Starts the mock ad server in a separate process (so server CPU is not charged
to the client under test), then for 1-hop (``/wrapper/0``) and 3-hop
(``/wrapper/2``) chains at concurrency 1/16/64/256 measures resolutions/s and
p50/p99 latency for:
  (a) ``httpx-default``: our resolver on httpx's own transport,
  (b) ``httpx-aiohttp``: our resolver with httpx's API over httpx-aiohttp
      (the previous default transport),
  (c) ``xsp-aiohttp``: our resolver on the default transport (aiohttp driven
      directly),
  (d) ``raw-aiohttp``: a bare aiohttp client doing the same GETs (the ceiling;
      it finds the next hop with a regex instead of parsing, checks nothing).
Every client talks to the same server, the same chain, the same concurrency,
in the same run. Each cell is measured ``reps`` times; the modes take turns
within a repetition (in rotating order), so a load spike on a shared machine
hits all of them alike, and the table shows the median repetition. The
3-hop/c=64 target is then measured as back-to-back (raw, ours) pairs of short
runs, alternating which goes first; the verdict uses best ours / best raw.

Then parse µs/doc over the IAB corpus: ``parse_vast`` vs plain
``lxml.etree.fromstring`` in many short alternating pairs (one corpus pass
each); the verdict uses the ratio of the best (least disturbed) times.

Each target gets a "MET" / "NOT MET" line; ``--json-out`` writes every sample.
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

from benchmarks.cpu import machine_busy_s, proc_cpu_s
from streams.vast.http import FetchConfig, VastHttpClient
from streams.vast.parser import parse_vast
from streams.vast.resolver import resolve_chain

CONCURRENCY = (1, 16, 64, 256)
CHAINS = {"1-hop": "/wrapper/0", "3-hop": "/wrapper/2"}
MODES = ("httpx-default", "httpx-aiohttp", "xsp-aiohttp", "raw-aiohttp")
TRANSPORT = {"httpx-default": "httpx", "httpx-aiohttp": "httpx-aiohttp", "xsp-aiohttp": "aiohttp"}
TARGET_CELL = ("3-hop", 64)
TARGET_HTTP = 0.40  # ours >= 40 % of the raw-aiohttp ceiling
TARGET_PARSE = 2.0  # parse_vast <= 2x lxml.etree.fromstring
OTHERS_CORES_WARN = 0.25  # CPU used by other processes that makes a verdict doubtful
_NEXT = re.compile(rb"<VASTAdTagURI><!\[CDATA\[(.*?)\]\]>")
Op = Callable[[], Awaitable[bool]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server() -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    code = (
        "from streams.mock_adserver import run_mock_adserver; "
        f"run_mock_adserver('127.0.0.1', {port})"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stderr=subprocess.DEVNULL,
        cwd=str(Path(__file__).resolve().parent.parent),
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("mock ad server did not start")


async def _load(fn: Op, concurrency: int, duration: float) -> dict[str, Any]:
    """Run ``concurrency`` closed-loop workers for ``duration`` seconds.

    Workers start no new operation after ``duration``; rps counts every
    completed operation over the time until the last one finished.
    """
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


def _ops(base: str, clients: dict[str, Any]) -> dict[tuple[str, str], Op]:
    ops: dict[tuple[str, str], Op] = {}
    for chain, path in CHAINS.items():
        url = base + path
        for mode in MODES:
            if mode == "raw-aiohttp":
                session: aiohttp.ClientSession = clients[mode]

                async def raw(url: str = url, session: aiohttp.ClientSession = session) -> bool:
                    nxt: str | None = url
                    while nxt:
                        async with session.get(nxt) as resp:
                            body = await resp.read()
                        m = _NEXT.search(body)
                        nxt = m.group(1).decode() if m else None
                    return True

                ops[(mode, chain)] = raw
            else:
                client: VastHttpClient = clients[mode]

                async def ours(url: str = url, client: VastHttpClient = client) -> bool:
                    r = await resolve_chain(url, client=client)
                    return r.status == "filled"

                ops[(mode, chain)] = ours
    return ops


async def _bench_http(
    base: str, duration: float, reps: int, pairs: int, pair_s: float
) -> dict[str, Any]:
    cfg = {
        "allowed_networks": ("127.0.0.1/32",),
        "pool_size": 512,
        "total_timeout_s": 10.0,
        "per_hop_timeout_s": 10.0,
        "pool_timeout_s": 10.0,
    }
    clients: dict[str, Any] = {
        m: VastHttpClient(FetchConfig(transport=t, **cfg))  # type: ignore[arg-type]
        for m, t in TRANSPORT.items()
    }
    clients["raw-aiohttp"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512))
    samples: list[dict[str, Any]] = []
    pair_ratios: list[float] = []
    pair_rps: list[tuple[float, float]] = []
    try:
        ops = _ops(base, clients)
        for op in ops.values():  # warm-up: pools, imports, caches
            await _load(op, 16, 0.1 if duration < 0.5 else 0.3)
        turn = 0
        for rep in range(reps):
            for chain in CHAINS:
                for c in CONCURRENCY:
                    order = MODES[turn % len(MODES) :] + MODES[: turn % len(MODES)]
                    turn += 1
                    for mode in order:
                        op = ops[(mode, chain)]
                        await _load(op, c, min(0.1, duration / 8))  # per-cell warm-up
                        res = await _load(op, c, duration)
                        res.update(mode=mode, chain=chain, concurrency=c, rep=rep)
                        samples.append(res)
                        print(
                            f"  rep {rep} {mode:14s} {chain} c={c:<4d} {res['rps']:8.0f}/s "
                            f"p50 {res['p50_ms']:7.1f} ms p99 {res['p99_ms']:7.1f} ms "
                            f"err {res['errors']}",
                            file=sys.stderr,
                            flush=True,
                        )
        # The target cell once more, as adjacent short (raw, ours) pairs: on a
        # shared machine load comes and goes within seconds, so a ratio from
        # two measurements taken back to back is the stable statistic.
        chain, c = TARGET_CELL
        for i in range(pairs):
            pair = ("raw-aiohttp", "xsp-aiohttp") if i % 2 == 0 else ("xsp-aiohttp", "raw-aiohttp")
            got = {}
            for mode in pair:
                await _load(ops[(mode, chain)], c, 0.05)
                got[mode] = await _load(ops[(mode, chain)], c, pair_s)
            pair_ratios.append(got["xsp-aiohttp"]["rps"] / got["raw-aiohttp"]["rps"])
            pair_rps.append((got["raw-aiohttp"]["rps"], got["xsp-aiohttp"]["rps"]))
            print(
                f"  pair {i} {chain} c={c}: raw {got['raw-aiohttp']['rps']:.0f}/s ours "
                f"{got['xsp-aiohttp']['rps']:.0f}/s ratio {pair_ratios[-1]:.2f}",
                file=sys.stderr,
                flush=True,
            )
    finally:
        for cl in clients.values():
            await (cl.close() if isinstance(cl, aiohttp.ClientSession) else cl.aclose())
    cells = []
    for mode in MODES:
        for chain in CHAINS:
            for c in CONCURRENCY:
                ss = [
                    s
                    for s in samples
                    if s["mode"] == mode and s["chain"] == chain and s["concurrency"] == c
                ]
                ss.sort(key=lambda s: s["rps"])
                med = ss[(len(ss) - 1) // 2]  # the median repetition (lower one if even)
                cells.append(
                    {
                        "mode": mode,
                        "chain": chain,
                        "concurrency": c,
                        "rps": statistics.median(s["rps"] for s in ss),
                        "p50_ms": med["p50_ms"],
                        "p99_ms": med["p99_ms"],
                        "rps_samples": [s["rps"] for s in ss],
                        "errors": sum(s["errors"] for s in ss),
                    }
                )
    return {
        "samples": samples,
        "cells": cells,
        "target_pair_ratios": pair_ratios,
        "target_pair_rps": pair_rps,
    }


def _rep_ratios(samples: list[dict[str, Any]], mode: str) -> list[float]:
    chain, c = TARGET_CELL
    by_rep: dict[int, dict[str, float]] = {}
    for s in samples:
        if s["chain"] == chain and s["concurrency"] == c:
            by_rep.setdefault(s["rep"], {})[s["mode"]] = s["rps"]
    return [r[mode] / r["raw-aiohttp"] for _, r in sorted(by_rep.items()) if r.get("raw-aiohttp")]


def _bench_parse(quick: bool) -> dict[str, Any]:
    corpus = Path(os.environ.get("XSP_VAST_FIXTURES", "/work/shared/fixtures/vast/iab"))
    datas = [p.read_bytes() for p in sorted(corpus.rglob("*.xml"))] if corpus.is_dir() else []
    if not datas:
        return {"skipped": f"no corpus at {corpus}"}

    def per_doc(fn: Callable[[bytes], object]) -> float:
        t0 = time.perf_counter()
        for d in datas:
            fn(d)
        return (time.perf_counter() - t0) / len(datas) * 1e6

    for _ in range(20):  # warm-up
        per_doc(etree.fromstring)
        per_doc(parse_vast)
    raw: list[float] = []
    ours: list[float] = []
    ratios: list[float] = []
    # Many short pairs (one corpus pass each, a few ms), alternating which goes
    # first: a load spike from another process then hits both sides of a pair.
    for i in range(40 if quick else 400):
        if i % 2:
            o = per_doc(parse_vast)
            r = per_doc(etree.fromstring)
        else:
            r = per_doc(etree.fromstring)
            o = per_doc(parse_vast)
        raw.append(r)
        ours.append(o)
        ratios.append(o / r)
    return {
        "docs": len(datas),
        "rounds": len(ratios),
        "raw_lxml_us": statistics.median(raw),
        "parse_vast_us": statistics.median(ours),
        "ratio": statistics.median(ratios),
        "ratio_of_mins": min(ours) / min(raw),
        "ratio_p10": statistics.quantiles(ratios, n=10)[0],
        "ratio_p90": statistics.quantiles(ratios, n=10)[-1],
    }


def _loadavg() -> list[float] | None:
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print a table and the target verdicts; write JSON if asked."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs (< 30 s total)")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args(argv)
    duration, reps = (0.15, 2) if args.quick else (0.8, 3)
    pairs, pair_s = (3, 0.2) if args.quick else (10, 0.6)
    load_before = _loadavg()
    t_start = time.perf_counter()
    proc, base = _start_server()
    busy_start, own_start = machine_busy_s(), time.process_time() + proc_cpu_s(proc.pid)
    http_start = time.perf_counter()
    try:
        http = asyncio.run(_bench_http(base, duration, reps, pairs, pair_s))
        busy_end, own_end = machine_busy_s(), time.process_time() + proc_cpu_s(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=5)
    http_s = time.perf_counter() - http_start
    # What the machine did besides this benchmark's two processes (client and
    # server), in cores on average over the HTTP part of the run.
    others_cores = (
        None
        if busy_start is None or busy_end is None
        else max(0.0, (busy_end - busy_start) - (own_end - own_start)) / http_s
    )
    parse = _bench_parse(args.quick)
    cells = http["cells"]

    def cell(mode: str, chain: str, c: int) -> dict[str, Any]:
        return next(
            x for x in cells if x["mode"] == mode and x["chain"] == chain and x["concurrency"] == c
        )

    print(f"\n{'mode':15s}{'chain':7s}" + "".join(f"{'c=' + str(c):>24s}" for c in CONCURRENCY))
    for mode in MODES:
        for chain in CHAINS:
            row = [cell(mode, chain, c) for c in CONCURRENCY]
            print(
                f"{mode:15s}{chain:7s}"
                + "".join(f"{r['rps']:8.0f}/s {r['p50_ms']:6.1f}/{r['p99_ms']:6.1f}ms" for r in row)
            )
    print(f"(cells: median of {reps} repetitions x {duration:.2f} s: resolutions/s, p50/p99)")

    ratios = {m: _rep_ratios(http["samples"], m) for m in MODES if m != "raw-aiohttp"}
    pair_ratios = http["target_pair_ratios"]
    # Verdict: best ours / best raw over the pairs. Contention from other
    # processes only ever slows a run down (and starving the server process
    # hurts raw more than ours, inflating ratios), so the best run of each side
    # is the least disturbed one; the median pair ratio is printed alongside.
    best_raw = max(r for r, _ in http["target_pair_rps"])
    best_ours = max(o for _, o in http["target_pair_rps"])
    http_ratio = best_ours / best_raw
    chain, c = TARGET_CELL
    targets: dict[str, Any] = {
        "http_3hop_c64": {
            "ratio": http_ratio,
            "best_ours_rps": best_ours,
            "best_raw_rps": best_raw,
            "median_pair_ratio": statistics.median(pair_ratios),
            "pair_ratios": pair_ratios,
            "table_rep_ratios": ratios["xsp-aiohttp"],
            "threshold": TARGET_HTTP,
            "met": http_ratio >= TARGET_HTTP,
            "ours_rps": cell("xsp-aiohttp", chain, c)["rps"],
            "raw_rps": cell("raw-aiohttp", chain, c)["rps"],
            "other_modes_vs_raw": {
                m: statistics.median(v) for m, v in ratios.items() if m != "xsp-aiohttp"
            },
        },
    }
    if "ratio" in parse:
        # Verdict on best times (min per side), the least-disturbed measurement;
        # the median per-pair ratio is printed alongside.
        targets["parse"] = {
            "ratio": parse["ratio_of_mins"],
            "median_pair_ratio": parse["ratio"],
            "threshold": TARGET_PARSE,
            "met": parse["ratio_of_mins"] <= TARGET_PARSE,
        }
        print(
            f"parse: parse_vast {parse['parse_vast_us']:.1f} µs/doc vs lxml.etree.fromstring "
            f"{parse['raw_lxml_us']:.1f} µs/doc (medians) over {parse['docs']} docs; per-pair "
            f"ratio median {parse['ratio']:.2f}x (p10 {parse['ratio_p10']:.2f}, p90 "
            f"{parse['ratio_p90']:.2f}, {parse['rounds']} pairs); ratio of best times "
            f"{parse['ratio_of_mins']:.2f}x"
        )
    else:
        print(f"parse: skipped ({parse.get('skipped')})")
    t = targets["http_3hop_c64"]
    print(
        f"TARGET 3-hop c=64 >= {TARGET_HTTP:.0%} of raw-aiohttp: "
        f"{'MET' if t['met'] else 'NOT MET'} ({t['ratio']:.2f}x = best {best_ours:.0f}/s vs "
        f"best {best_raw:.0f}/s over {len(pair_ratios)} back-to-back pairs; pair ratios "
        + ", ".join(f"{r:.2f}" for r in pair_ratios)
        + "; table repetitions: "
        + ", ".join(f"{r:.2f}" for r in t["table_rep_ratios"])
        + "; httpx modes: "
        + ", ".join(f"{m} {v:.2f}x" for m, v in t["other_modes_vs_raw"].items())
        + ")"
    )
    if "parse" in targets:
        p = targets["parse"]
        print(
            f"TARGET parse <= {TARGET_PARSE:.1f}x lxml: {'MET' if p['met'] else 'NOT MET'} "
            f"({p['ratio']:.2f}x)"
        )
    load_after = _loadavg()
    if others_cores is not None and others_cores > OTHERS_CORES_WARN:
        print(
            f"WARNING: other processes used {others_cores:.2f} cores on average during the "
            "HTTP runs; absolute numbers and ratios are disturbed, re-run on a quiet "
            "machine for a firm verdict."
        )
    others = "unknown" if others_cores is None else f"{others_cores:.2f} cores"
    print(
        f"(cpus {os.cpu_count()}, other processes during the HTTP runs: {others}; load average "
        f"before {load_before}, after {load_after}; {time.perf_counter() - t_start:.0f} s)"
    )
    out = {
        "quick": args.quick,
        "duration_s": duration,
        "reps": reps,
        "cpus": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "other_processes_cores": others_cores,
        "wall_s": time.perf_counter() - t_start,
        "http": http,
        "parse": parse,
        "targets": targets,
    }
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
