"""End-to-end pipeline benchmark: one xsp worker process against a real local Apache Kafka.

Usage: ``python -m benchmarks.bench_pipeline [--quick] [--only memory|throughput]
[--latency-rate R] [--json-out PATH] [--store memory|rocksdb]
[--guarantee at_least_once|exactly_once] [--commit-interval-ms MS] [--linger-ms MS]``

Everything runs on 127.0.0.1 in one temporary folder, in one run:

1. **ceiling**: a raw aiokafka consume -> produce loop in this process (consumer
   ``fetch_max_wait_ms=10``, producer ``linger_ms=2``, send every record, wait
   for the acks and commit once per fetched batch) over a pre-produced backlog:
   messages/s and CPU µs per message.
1b. **floor** (``benchmarks.faust_floor``): one Faust agent with xsp's settings
   and nothing else, in a worker process: CPU µs per event with one send, and
   with four table writes (xsp's way and Faust's). With the main burst's events
   and changelog writes per decision, the least a decision can cost the
   worker in this topology, whatever xsp's own code does.
2. **peak**: one ``xsp worker`` (``--store``, default memory), warmed by one
   request, then N requests (many users, a few campaigns with a big budget and
   no caps, VAST ``{mock}/inline``: one hop) produced as one burst; decisions/s
   = N / (last decision's broker time - start of the burst). Worker CPU per
   decision from ``/proc/<pid>/stat``; Kafka messages per decision from the end
   offsets of every topic of the run (changelogs included) before and after.
3. **latency at half of peak**: paced requests at 50 % of the measured peak;
   latency = decision's broker timestamp - the request's send time. The mock ad
   server's own time is measured by direct GETs of ``/inline`` at the same rate
   from this process and subtracted (p50 from p50, p99 from p99: "added" latency).
   A raw aiokafka 3-hop chain at the same rate is the comparison.
4. **memory**: the frequency-table rows one user really has after one served
   ad (``handle_ad_request`` on a dict store, campaign ``bench-capped``: 1 ad
   per user per day) are templated for N distinct users (1M, ``--quick``
   100,000; the template is checked byte for byte against the handlers for
   ~1,000 of them) and produced straight into the
   ``<app_id>-frequency-changelog`` topic, each into its user's ``ad-requests``
   partition (a table's changelog partition is its source partition). A
   ``rocksdb://`` worker on an empty data dir restores them. RSS (``VmRSS``) when
   the restore starts, after it, after the first pruning tick (60 s after
   recovery; it scans every record key), and the peak (``VmHWM``, plus a 0.5 s
   sample of the restore). Measured, not extrapolated. Probes prove the rows are
   live: seeded users (two per partition) must get ``capped``, a fresh user must
   not; sent again behind the pruning tick, they also time it.
5. **recovery**: records/s = seeded records / restore time, from Faust's
   "Restoring state" and "Done reading from changelog topics" log lines. If the
   restore outlasts its budget (600 s, ``--quick`` 240 s), the rate so far comes
   from Faust's "total remaining" lines and only the whole restore's *time* is
   extrapolated, labelled so. The worker is then SIGKILLed.

Every process it starts (broker, mock ad server, workers) is stopped at the end,
also on Ctrl-C, SIGTERM or an error. The machine is shared by the worker, the
broker (a JVM), the mock ad server and this process: on 2 cores they compete,
which is part of what a per-worker number on such a box means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from benchmarks.cpu import proc_cpu_s
from benchmarks.faust_floor import bench_faust_floor, floor_ms_per_decision
from streams.admission import validate_ad_request
from streams.campaign_admin import put_campaigns
from streams.campaign_directory import DirectoryView
from streams.devstack import MockAdServerProcess, WorkerProcess
from streams.faust_router import partition_of
from streams.kafka_io import create_topics, create_xsp_topics
from streams.kafka_local import LocalKafka
from streams.pipeline import PipelineConfig, handle_ad_request
from streams.records import AdRequest, encode, parse
from streams.replay import changelog_topic
from streams.settings import Settings, SettingsError
from streams.topics import TopicNames

TARGET_DPS = 1_500  # decisions/s per worker process
TARGET_P99_ADDED_MS = 50.0  # p99 added latency at half of peak (at-least-once)
TARGET_RSS_MB = 400.0  # worker RSS at 1M users (rocksdb)
MILLION = 1_000_000
CAMPAIGNS = 4
ROOT = Path(__file__).resolve().parent.parent
_STATUS = re.compile(rb'"status":"([a-z_]+)"')


@dataclass(frozen=True)
class Plan:
    """Sizes of one run (full or --quick)."""

    ceiling_n: int
    floor_n: int  # events through the minimal Faust agent, per mode
    pilot_n: int  # a first burst that sizes the main one
    peak_n: int  # at most this many requests in the main burst
    peak_target_s: float  # main burst sized to take about this long at the pilot's rate
    peak_users: int
    peak_timeout_s: float
    latency_s: float
    side_s: float  # mock-server GETs and the raw 3-hop chain
    seed_users: int  # distinct users seeded into the frequency changelog
    restore_budget_s: float  # wall time the worker's restore may take before we stop waiting


FULL = Plan(60_000, 20_000, 1_000, 20_000, 60.0, 10_000, 150.0, 15.0, 5.0, MILLION, 600.0)
QUICK = Plan(20_000, 10_000, 400, 3_000, 15.0, 2_000, 60.0, 5.0, 3.0, 100_000, 240.0)


# --------------------------------------------------------------------------- processes


def _log(message: str) -> None:
    print(f"[bench_pipeline {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _proc_status_mb(pid: int, field: str) -> float:
    """A kB field of /proc/<pid>/status (VmRSS, VmHWM = peak RSS) in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def proc_rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MB (VmRSS)."""
    return _proc_status_mb(pid, "VmRSS")


class Cleanup:
    """Stops what the benchmark started, newest first, whatever happened."""

    def __init__(self) -> None:
        self._stops: list[tuple[str, Callable[[], None]]] = []

    def add(self, name: str, stop: Callable[[], None]) -> None:
        self._stops.append((name, stop))

    def run(self) -> None:
        while self._stops:
            name, stop = self._stops.pop()
            try:
                stop()
            except Exception as exc:  # keep stopping the rest
                _log(f"stopping {name} failed: {exc!r}")


def _kill_worker(worker: WorkerProcess) -> None:
    worker.kill()


def _cpu(pids: dict[str, int | None]) -> dict[str, float]:
    out = {}
    for name, pid in pids.items():
        if pid is None:
            continue
        with contextlib.suppress(OSError):
            out[name] = proc_cpu_s(pid)
    out["bench"] = time.process_time()
    return out


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _lat_summary(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50_ms": _pct(values, 0.50),
        "p99_ms": _pct(values, 0.99),
        "max_ms": max(values) if values else None,
        "mean_ms": statistics.fmean(values) if values else None,
    }


# --------------------------------------------------------------------------- kafka helpers


def _request(rid: str, user: str, cid: str, now_ms: int) -> bytes:
    return encode(
        AdRequest(
            request_id=rid,
            user_id=user,
            timestamp=now_ms,
            correlator=rid,
            cachebusting="7",
            params={"placement": "pre-roll", "campaign_id": cid, "device_ip": "203.0.113.7"},
        )
    )


def _campaigns(ad_server: str) -> list[dict[str, Any]]:
    return [
        {
            "campaign_id": f"bench-{i}",
            "advertiser_id": "bench",
            "price": {"model": "cpm", "amount": "2", "currency": "USD"},
            "budget": {"total": "100000000", "timezone": "UTC"},
            "caps": [],
            "vast_url": f"{ad_server}/inline",
        }
        for i in range(CAMPAIGNS)
    ]


async def _bulk_producer(bootstrap: str) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=256 * 1024
    )
    await producer.start()
    return producer


async def _send_all(producer: AIOKafkaProducer, topic: str, items: list[tuple[bytes, bytes]]):
    futures = [await producer.send(topic, key=k, value=v) for k, v in items]
    await asyncio.gather(*futures)


async def _end_offsets(bootstrap: str, match: Callable[[str], bool]) -> dict[str, int]:
    """Sum of (end - beginning) offsets per topic whose name ``match``es."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        names = sorted(t for t in await consumer.topics() if match(t))
        tps = [
            TopicPartition(t, p) for t in names for p in sorted(consumer.partitions_for_topic(t))
        ]
        if not tps:
            return {}
        ends = await consumer.end_offsets(tps)
        begins = await consumer.beginning_offsets(tps)
        out: dict[str, int] = dict.fromkeys(names, 0)
        for tp in tps:
            out[tp.topic] += ends[tp] - begins[tp]
        return out
    finally:
        await consumer.stop()


class DecisionWatcher:
    """Follows the ad-responses topic: first broker timestamp and status per request id."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            fetch_max_wait_ms=10,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        self.seen: dict[str, tuple[int, str]] = {}
        self.copies = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> DecisionWatcher:
        await self.consumer.start()
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=100, max_records=20_000)
            for records in batch.values():
                for r in records:
                    self.copies += 1
                    rid = (r.key or b"").decode()
                    if rid not in self.seen:
                        m = _STATUS.search(r.value or b"")
                        self.seen[rid] = (r.timestamp, m.group(1).decode() if m else "?")

    async def wait(self, ids: list[str], timeout_s: float, worker: WorkerProcess | None) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(i in self.seen for i in ids):
                return True
            if worker is not None and not worker.alive:
                raise RuntimeError(f"the worker died:\n{worker.log_tail()}")
            await asyncio.sleep(0.02)
        return False

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.consumer.stop()


# --------------------------------------------------------------------------- 1. ceiling


def _backlog(prefix: str, n: int) -> list[tuple[bytes, bytes]]:
    """``n`` (key, request) pairs over 10,000 users, one campaign: ceiling and floor input."""
    now = int(time.time() * 1000)
    return [
        (f"u{i % 10_000}".encode(), _request(f"{prefix}-{i}", f"u{i % 10_000}", "bench-0", now))
        for i in range(n)
    ]


async def bench_ceiling(bootstrap: str, prefix: str, n: int) -> dict[str, Any]:
    """Raw aiokafka consume -> produce over a backlog of ``n`` request-sized messages."""
    src, dst = f"{prefix}ceiling-in", f"{prefix}ceiling-out"
    await create_topics(bootstrap, [src, dst], partitions=4)
    items = _backlog("c", n)
    producer = await _bulk_producer(bootstrap)
    try:
        await _send_all(producer, src, items)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        src,
        bootstrap_servers=bootstrap,
        group_id=f"{prefix}ceiling",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=10,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
    await producer.start()
    await consumer.start()
    try:
        done = 0
        t0 = c0 = 0.0
        deadline = time.monotonic() + 120
        while done < n and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200, max_records=1000)
            if not batch:
                continue
            if done == 0:
                t0, c0 = time.perf_counter(), time.process_time()
            futures = []
            for records in batch.values():
                for r in records:
                    futures.append(await producer.send(dst, key=r.key, value=r.value))
            await asyncio.gather(*futures)
            await consumer.commit()
            done += len(futures)
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - c0
    finally:
        await consumer.stop()
        await producer.stop()
    return {
        "messages": done,
        "elapsed_s": elapsed,
        "msgs_per_s": done / elapsed if elapsed else None,
        "cpu_us_per_msg": cpu / done * 1e6 if done else None,
        "message_bytes": len(items[0][1]),
    }


def _run_floor(base: Settings, workdir: Path, run: str, n: int) -> dict[str, Any]:
    """Phase 1b (``benchmarks.faust_floor``); a failure is reported, not fatal to the run."""
    try:
        floor = asyncio.run(bench_faust_floor(base, workdir, run, _backlog("f", n)))
    except RuntimeError as exc:
        _log(f"floor: failed: {exc}")
        return {"error": str(exc)}
    _log(
        f"floor: {floor['send']['cpu_us_per_event']:.0f} µs per event with a send, "
        f"+{floor['table_write_us']:.0f} µs per table write"
    )
    return floor


def floor_model(
    peak: dict[str, Any], floor: dict[str, Any], settings: Settings
) -> dict[str, Any] | None:
    """The burst's floor: its events and changelog writes per decision at the floor's prices.

    Events are the messages the worker consumed (``ad-requests`` and
    ``budget-requests``), writes every changelog message, both counted from
    the topics' end offsets around the main burst. None without both phases.
    """
    got = peak.get("decided")
    if not got or "error" in floor or "send" not in floor:
        return None
    by_topic: dict[str, int] = peak["messages_by_topic"]
    names = TopicNames.from_prefix(settings.topic_prefix)
    events = (by_topic.get(names.ad_requests, 0) + by_topic.get(names.budget_requests, 0)) / got
    writes = sum(v for t, v in by_topic.items() if t.endswith("-changelog")) / got
    floor_ms = floor_ms_per_decision(events, writes, floor)
    worker_ms = peak.get("worker_cpu_ms_per_decision")
    return {
        "events_per_decision": events,
        "changelog_writes_per_decision": writes,
        "floor_ms_per_decision": floor_ms,
        "floor_decisions_per_s": 1000 / floor_ms if floor_ms > 0 else None,
        "worker_ms_per_decision": worker_ms,
        "floor_share_of_worker": floor_ms / worker_ms if worker_ms else None,
        "target_ms_per_decision": 1000 / TARGET_DPS,
    }


async def bench_raw_chain(bootstrap: str, prefix: str, rate: float, duration_s: float):
    """Paced messages through three raw aiokafka consume -> produce hops: latency."""
    topics = [f"{prefix}chain-{i}" for i in range(4)]
    await create_topics(bootstrap, topics, partitions=4)
    run = uuid.uuid4().hex[:6]
    consumers = [
        AIOKafkaConsumer(
            t,
            bootstrap_servers=bootstrap,
            group_id=f"{prefix}chain-{run}-{i}",
            enable_auto_commit=False,
            auto_offset_reset="latest",
            fetch_max_wait_ms=10,
        )
        for i, t in enumerate(topics)
    ]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1)
    await producer.start()
    for c in consumers:
        await c.start()
    latencies: list[float] = []
    sent_at: dict[bytes, float] = {}

    async def hop(consumer: AIOKafkaConsumer, out: str) -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=100, max_records=1000)
            futures = [
                await producer.send(out, key=r.key, value=r.value)
                for rs in batch.values()
                for r in rs
            ]
            if futures:
                await asyncio.gather(*futures)
                await consumer.commit()

    async def sink(consumer: AIOKafkaConsumer) -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=100, max_records=1000)
            for rs in batch.values():
                for r in rs:
                    if r.key in sent_at:
                        latencies.append(r.timestamp - sent_at.pop(r.key))

    tasks = [asyncio.create_task(hop(consumers[i], topics[i + 1])) for i in range(3)]
    tasks.append(asyncio.create_task(sink(consumers[3])))
    try:
        # Wait until every consumer has its partitions (latest offsets), then warm up.
        deadline = time.monotonic() + 60
        while any(not c.assignment() for c in consumers) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        total = int(rate * duration_s)
        value = b"x" * 300
        started = time.monotonic()
        for i in range(total):
            due = started + i / rate
            if (delay := due - time.monotonic()) > 0:
                await asyncio.sleep(delay)
            key = f"k{i}".encode()
            sent_at[key] = time.time() * 1000
            await producer.send(topics[0], key=key, value=value)
        deadline = time.monotonic() + 15
        while sent_at and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        warm = min(len(latencies), max(1, int(rate * 0.5)))  # drop the first 0.5 s
        result = _lat_summary(latencies[warm:])
        result.update(rate=rate, sent=total, lost=len(sent_at))
        return result
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in consumers:
            await c.stop()
        await producer.stop()


async def bench_mock_http(url: str, rate: float, duration_s: float) -> dict[str, Any]:
    """Paced direct GETs of the mock ad server (open loop, keep-alive pool): its own latency."""
    latencies: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:

        async def one() -> None:
            nonlocal errors
            t0 = time.perf_counter()
            try:
                async with session.get(url) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1
            latencies.append((time.perf_counter() - t0) * 1000)

        for _ in range(20):
            await one()
        latencies.clear()
        tasks = []
        total = int(rate * duration_s)
        started = time.monotonic()
        for i in range(total):
            due = started + i / rate
            if (delay := due - time.monotonic()) > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    result = _lat_summary(latencies)
    result.update(rate=rate, errors=errors)
    return result


# --------------------------------------------------------------------------- 2+3. peak, latency


async def _warm_up(
    producer: AIOKafkaProducer, watcher: DecisionWatcher, names: TopicNames, worker: WorkerProcess
) -> float:
    """Send one request and wait for its decision; return the seconds it took."""
    t0 = time.monotonic()
    rid = f"warm-{uuid.uuid4().hex[:8]}"
    value = _request(rid, "warm-user", "bench-0", int(time.time() * 1000))
    await producer.send_and_wait(names.ad_requests, key=b"warm-user", value=value)
    if not await watcher.wait([rid], 120, worker):
        raise RuntimeError(f"the worker did not answer the warm-up request:\n{worker.log_tail()}")
    return time.monotonic() - t0


def _run_topics(prefix: str, app_id: str) -> Callable[[str], bool]:
    return lambda t: t.startswith(prefix) or t.startswith(f"{app_id}-")


def _cpu_spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds each process spent between two ``_cpu`` readings."""
    return {k: after[k] - before.get(k, after[k]) for k in after}


async def _messages_since(
    bootstrap: str, match: Callable[[str], bool], before: dict[str, int]
) -> dict[str, int]:
    """Messages written per topic since the ``before`` end offsets (topics with none left out)."""
    await asyncio.sleep(1.5)  # the last settles and changelog writes
    after = await _end_offsets(bootstrap, match)
    per_topic = {t: after.get(t, 0) - before.get(t, 0) for t in after}
    return {t: v for t, v in per_topic.items() if v}


async def _burst(
    bootstrap: str,
    producer: AIOKafkaProducer,
    watcher: DecisionWatcher,
    worker: WorkerProcess,
    names: TopicNames,
    match: Callable[[str], bool],
    pids: dict[str, int | None],
    plan: Plan,
    *,
    prefix: str,
    n: int,
    profile: Path | None,
) -> dict[str, Any]:
    """Produce ``n`` requests at once; measure until the last decision arrived."""
    assert worker.process is not None
    wpid = worker.process.pid
    now = int(time.time() * 1000)
    ids = [f"{prefix}-{i}" for i in range(n)]
    items = [
        (
            f"user-{i % plan.peak_users}".encode(),
            _request(rid, f"user-{i % plan.peak_users}", f"bench-{i % CAMPAIGNS}", now),
        )
        for i, rid in enumerate(ids)
    ]
    offsets_before = await _end_offsets(bootstrap, match)
    spy = _start_profiler(wpid, profile)
    cpu0 = _cpu({"worker": wpid, **pids})
    t0 = time.time()
    await _send_all(producer, names.ad_requests, items)
    produced_s = time.time() - t0
    complete = await watcher.wait(ids, plan.peak_timeout_s, worker)
    cpu1 = _cpu({"worker": wpid, **pids})
    _stop_profiler(spy)
    decided = [watcher.seen[i] for i in ids if i in watcher.seen]
    t_end = max(ts for ts, _ in decided) / 1000 if decided else time.time()
    elapsed = t_end - t0
    rss = proc_rss_mb(wpid)
    per_topic = await _messages_since(bootstrap, match, offsets_before)
    got = len(decided)
    cpu = _cpu_spent(cpu0, cpu1)
    return {
        "requests": n,
        "users": plan.peak_users,
        "campaigns": CAMPAIGNS,
        "decided": got,
        "complete": complete,
        "produce_s": produced_s,
        "elapsed_s": elapsed,
        "decisions_per_s": got / elapsed if elapsed > 0 else 0.0,
        "statuses": dict(Counter(s for _, s in decided)),
        "worker_cpu_s": cpu.get("worker"),
        "worker_cpu_ms_per_decision": cpu["worker"] / got * 1000 if got else None,
        "worker_cpu_utilisation": cpu["worker"] / elapsed if elapsed else None,
        "cpu_ms_per_decision_by_process": {k: v / got * 1000 for k, v in cpu.items() if got},
        "messages_per_decision": sum(per_topic.values()) / got if got else None,
        "messages_by_topic": per_topic,
        "worker_rss_mb": rss,
        "profile": str(profile) if spy is not None else None,
    }


def _start_profiler(pid: int, path: Path | None) -> subprocess.Popen[bytes] | None:
    """py-spy (if installed and asked for) sampling the worker during the burst."""
    if path is None:
        return None
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        _log("--profile: py-spy not found; not profiling")
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--rate",
            "250",
            "--format",
            "raw",
            "--nonblocking",
            "--output",
            str(path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stop_profiler(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is None:
        return
    spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
    try:
        spy.wait(timeout=30)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()


async def bench_peak_and_latency(
    bootstrap: str,
    settings: Settings,
    worker_log: Path,
    ad_server: str,
    pids: dict[str, int | None],
    plan: Plan,
    cleanup: Cleanup,
    profile: Path | None,
    latency_rate: float | None = None,
) -> dict[str, Any]:
    names = TopicNames.from_prefix(settings.topic_prefix)
    await create_xsp_topics(bootstrap, names, partitions=settings.partitions)
    await put_campaigns(bootstrap, names, json.dumps(_campaigns(ad_server)).encode())
    watcher = await DecisionWatcher(bootstrap, names.ad_responses).start()
    producer = await _bulk_producer(bootstrap)
    worker = WorkerProcess(settings, worker_log)
    out: dict[str, Any] = {}
    try:
        t_start = time.monotonic()
        worker.start()
        cleanup.add("peak worker", lambda: _kill_worker(worker))
        await _warm_up(producer, watcher, names, worker)
        out["worker_ready_s"] = time.monotonic() - t_start
        await asyncio.sleep(2.0)  # let the warm-up's settle and the first ticks pass
        _log(f"worker ready in {out['worker_ready_s']:.1f} s; pilot burst of {plan.pilot_n}")

        # ---- peak: a pilot burst sizes the main one, so a slow worker cannot eat the run
        match = _run_topics(settings.topic_prefix, settings.app_id)
        pilot = await _burst(
            bootstrap,
            producer,
            watcher,
            worker,
            names,
            match,
            pids,
            plan,
            prefix="pilot",
            n=plan.pilot_n,
            profile=None,
        )
        out["pilot"] = pilot
        n_main = int(pilot["decisions_per_s"] * plan.peak_target_s) // 1000 * 1000
        n_main = max(plan.pilot_n, min(plan.peak_n, n_main))
        _log(f"pilot: {pilot['decisions_per_s']:.0f} decisions/s; main burst {n_main}")
        await asyncio.sleep(2.0)
        out["peak"] = await _burst(
            bootstrap,
            producer,
            watcher,
            worker,
            names,
            match,
            pids,
            plan,
            prefix="p",
            n=n_main,
            profile=profile,
        )
        out["peak"]["store"] = settings.store
        out["peak"]["guarantee"] = settings.processing_guarantee
        out["peak"]["commit_interval_s"] = settings.effective_commit_interval_s
        dps = out["peak"]["decisions_per_s"]
        _log(
            f"peak: {out['peak']['decided']}/{n_main} decisions in "
            f"{out['peak']['elapsed_s']:.1f} s = {dps:.0f}/s; worker CPU "
            f"{out['peak']['worker_cpu_ms_per_decision'] or 0:.2f} ms/decision"
        )

        # ---- latency at half of peak (or at the rate asked for)
        rate = latency_rate or max(dps / 2, 5.0)
        _log(f"latency: {rate:.0f} requests/s for {plan.latency_s:.0f} s")
        await asyncio.sleep(3.0)
        paced = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1)
        await paced.start()
        sent_at: dict[str, float] = {}
        assert worker.process is not None
        wpid = worker.process.pid
        # Paced traffic batches little: its cost per decision is not the burst's.
        offsets_before = await _end_offsets(bootstrap, match)
        cpu0 = _cpu({"worker": wpid, **pids})
        try:
            total = int(rate * plan.latency_s)
            started = time.monotonic()
            for i in range(total):
                due = started + i / rate
                if (delay := due - time.monotonic()) > 0:
                    await asyncio.sleep(delay)
                rid = f"l-{i}"
                user = f"lat-user-{i % 50_000}"
                now_ms = time.time() * 1000
                value = _request(rid, user, f"bench-{i % CAMPAIGNS}", int(now_ms))
                sent_at[rid] = now_ms
                await paced.send(names.ad_requests, key=user.encode(), value=value)
            behind_s = time.monotonic() - started - total / rate
            await paced.flush()
        finally:
            await paced.stop()
        lat_ids = list(sent_at)
        lat_complete = await watcher.wait(lat_ids, 60, worker)
        cpu1 = _cpu({"worker": wpid, **pids})
        moved_by_topic = await _messages_since(bootstrap, match, offsets_before)
        moved = sum(moved_by_topic.values())
        latencies = [watcher.seen[r][0] - sent_at[r] for r in lat_ids if r in watcher.seen]
        lat = _lat_summary(latencies)
        got = len(latencies)
        cpu = _cpu_spent(cpu0, cpu1)
        lat["cpu_ms_per_decision_by_process"] = {k: v / got * 1000 for k, v in cpu.items() if got}
        lat["messages_per_decision"] = moved / got if got else None
        lat["messages_by_topic"] = moved_by_topic
        lat.update(
            rate=rate,
            rate_given=latency_rate is not None,
            duration_s=plan.latency_s,
            sent=len(lat_ids),
            complete=lat_complete,
            sender_behind_s=behind_s,
            statuses=dict(Counter(watcher.seen[r][1] for r in lat_ids if r in watcher.seen)),
        )
        out["latency"] = lat
        _log(f"latency: p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms")
    finally:
        worker.stop(timeout_s=10)
        await producer.stop()
        await watcher.stop()
    side_rate = out["latency"]["rate"]
    _log(f"mock ad server direct GETs at {side_rate:.0f}/s")
    out["mock_http"] = await bench_mock_http(f"{ad_server}/inline", side_rate, plan.side_s)
    _log(f"raw aiokafka 3-hop chain at {side_rate:.0f}/s")
    out["raw_chain"] = await bench_raw_chain(
        bootstrap, settings.topic_prefix, side_rate, plan.side_s
    )
    return out


# --------------------------------------------------------------------------- 4+5. memory, recovery

# Faust's text lines start with the time, bracketed or not ("2026-12-01 22:06:25,652 INFO").
_TS_TEXT = re.compile(r"^\[?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]?")
_TS_JSON = re.compile(r'"ts":\s*"([^"]+)"')
_RECOVERY_LINES = {
    "restoring": "Restoring state from changelog topics",
    "done_reading": "Done reading from changelog topics",
    "recovery_complete": "Recovery complete",
    "worker_ready": "Worker ready",
}


def _line_time(line: str) -> float | None:
    m = _TS_JSON.search(line)
    if m:
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
    m = _TS_TEXT.search(line)
    if m:
        with contextlib.suppress(ValueError):
            return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


def _recovery_marks(log_path: Path, since: float) -> dict[str, float]:
    """Wall times of Faust's recovery log lines (first occurrence after ``since``)."""
    marks: dict[str, float] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in log_path.read_text(errors="replace").splitlines():
            for key, text in _RECOVERY_LINES.items():
                if key not in marks and text in line:
                    at = _line_time(line)
                    if at is not None and at >= since - 1:
                        marks[key] = at
    return marks


_REMAINING = re.compile(r"total remaining=(\d+)")
SEED_CAMPAIGN = "bench-capped"
_ADMIT_DELAY_MS = 3  # request event time -> its broker time, as admit sees it (wall_ms)
_SEED_BATCH_BYTES = 512 * 1024  # below the broker's default message.max.bytes (1 MiB)
_SEED_IN_FLIGHT = 32  # batches awaiting acks: bounds this process's memory while seeding


def _remaining_records(log_path: Path, since: float) -> int | None:
    """The last "total remaining" count Faust's recovery logged (every few seconds)."""
    last = None
    with contextlib.suppress(FileNotFoundError):
        for line in log_path.read_text(errors="replace").splitlines():
            m = _REMAINING.search(line)
            at = _line_time(line)
            if m and (at is None or at >= since - 1):
                last = int(m.group(1))
    return last


def _memory_campaigns(ad_server: str) -> list[dict[str, Any]]:
    """The bench's campaigns plus ``bench-capped``: 1 ad per user per rolling day.

    Every seeded user has used that ad, so a probe for a seeded user must come
    back ``capped`` — which a worker with an empty table would never answer.
    """
    capped = {
        **_campaigns(ad_server)[0],
        "campaign_id": SEED_CAMPAIGN,
        "caps": [{"limit": 1, "window": "1d"}],
    }
    return [*_campaigns(ad_server), capped]


class _DictStore:
    """A ``RowStore`` over a dict: what the handlers write, key by key."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def put(self, key: str, value: bytes) -> None:
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)

    def scan(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        yield from [(k, v) for k, v in self.data.items() if k.startswith(prefix)]


def _user_rows(
    view: DirectoryView, config: PipelineConfig, user: str, rid: str, ts: int
) -> dict[str, bytes]:
    """The frequency-table rows of a user after one served ad, from the real handlers.

    admit takes the slot and counts it as served (``handle_ad_request``); a
    fill sends no cap settle back: the user's ``u:`` row and the request's
    ``r:`` outcome record.
    """
    store = _DictStore()
    request = validate_ad_request(
        parse(_request(rid, user, SEED_CAMPAIGN, ts)), now_ms=ts, max_future_skew_ms=0
    )
    outputs = handle_ad_request(store, request, view, config, wall_ms=ts + _ADMIT_DELAY_MS)
    if [o.route for o in outputs] != ["budget"]:
        raise RuntimeError(f"seed request {rid!r} was not admitted: {outputs!r}")
    return store.data


class SeedRows:
    """The rows of N distinct users: one user's handler output, templated and checked.

    User ``i`` is ``mu-<i>`` with request ``m-<i>`` at ``base_ms + i`` (1 ms
    apart). The handlers take ~100 µs a user, ~2 minutes of a shared core for
    1M; the template takes a few µs, and ``verify`` runs the handlers for a
    sample and requires byte-equal rows.
    """

    _USER, _RID = "SEEDUSER", "SEEDREQ"

    def __init__(self, view: DirectoryView, config: PipelineConfig, base_ms: int) -> None:
        self.view, self.config, self.base_ms = view, config, base_ms
        # Longest first: the sentinels are equal-length numbers, none inside another.
        fields = [
            (str(base_ms + _ADMIT_DELAY_MS), "{admit}"),
            (str(base_ms), "{ts}"),
            (self._USER, "{user}"),
            (self._RID, "{rid}"),
        ]
        self.templates: list[tuple[str, str]] = []
        for key, value in _user_rows(view, config, self._USER, self._RID, base_ms).items():
            parts = [key, value.decode("ascii")]
            for i, text in enumerate(parts):
                text = text.replace("{", "{{").replace("}", "}}")
                for sentinel, name in fields:
                    text = text.replace(sentinel, name)
                parts[i] = text
            self.templates.append((parts[0], parts[1]))

    def user(self, i: int) -> str:
        return f"mu-{i}"

    def rows(self, i: int) -> list[tuple[bytes, bytes]]:
        ts = self.base_ms + i
        values = {
            "user": self.user(i),
            "rid": f"m-{i}",
            "ts": ts,
            "admit": ts + _ADMIT_DELAY_MS,
        }
        return [
            (k.format(**values).encode(), v.format(**values).encode()) for k, v in self.templates
        ]

    def verify(self, indices: Iterable[int]) -> int:
        """Run the handlers for ``indices``; raise unless the template wrote the same bytes."""
        checked = 0
        for i in indices:
            expected = _user_rows(self.view, self.config, self.user(i), f"m-{i}", self.base_ms + i)
            got = {k.decode(): v for k, v in self.rows(i)}
            if got != expected:
                raise RuntimeError(f"seed template differs from the handlers for user {i}")
            checked += 1
        return checked


async def _seed_changelog(
    bootstrap: str, topic: str, partitions: int, seed: SeedRows, users: int
) -> dict[str, Any]:
    """Produce every seeded row into the changelog partition of its user.

    A table's changelog partition is the partition of the event that wrote
    it, here ``ad-requests`` keyed by user id (murmur2, as any producer).
    Faust would create the topic compacted with the table's partition count;
    we create it the same way first, and the worker finds it there.
    """
    await create_topics(bootstrap, [topic], partitions=partitions, compacted={topic})
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=50, max_batch_size=_SEED_BATCH_BYTES
    )
    await producer.start()
    t0 = time.perf_counter()
    records = value_bytes = 0
    per_partition = [0] * partitions
    in_flight: deque[asyncio.Future[Any]] = deque()
    try:
        batches = [producer.create_batch() for _ in range(partitions)]

        async def ship(p: int) -> None:
            in_flight.append(await producer.send_batch(batches[p], topic, partition=p))
            batches[p] = producer.create_batch()
            while len(in_flight) > _SEED_IN_FLIGHT:
                await in_flight.popleft()

        for i in range(users):
            p = partition_of(seed.user(i).encode(), partitions)
            for key, value in seed.rows(i):
                if batches[p].append(key=key, value=value, timestamp=None) is None:
                    await ship(p)
                    batches[p].append(key=key, value=value, timestamp=None)
                records += 1
                value_bytes += len(key) + len(value)
                per_partition[p] += 1
        for p in range(partitions):
            if batches[p].record_count():
                await ship(p)
        await asyncio.gather(*in_flight)
    finally:
        await producer.stop()
    elapsed = time.perf_counter() - t0
    ends = await _end_offsets(bootstrap, lambda t: t == topic)
    if ends.get(topic) != records:
        raise RuntimeError(f"seeded {records} records but {topic} holds {ends.get(topic)}")
    return {
        "records": records,
        "records_per_partition": per_partition,
        "key_value_bytes": value_bytes,
        "produce_s": elapsed,
        "produce_records_per_s": records / elapsed if elapsed else None,
    }


async def _sample_rss(pid: int, samples: list[tuple[float, float]], t0: float) -> None:
    """Append (seconds since ``t0``, RSS MB) every 0.5 s until cancelled."""
    while True:
        with contextlib.suppress(OSError):
            samples.append((time.monotonic() - t0, proc_rss_mb(pid)))
        await asyncio.sleep(0.5)


def _probe_users(seed: SeedRows, users: int, partitions: int) -> list[str]:
    """Two seeded users per changelog partition, plus the last one written."""
    chosen: dict[int, list[str]] = {p: [] for p in range(partitions)}
    for i in range(0, users, max(1, users // 1000)):
        bucket = chosen[partition_of(seed.user(i).encode(), partitions)]
        if len(bucket) < 2:
            bucket.append(seed.user(i))
    last = seed.user(users - 1)
    return [u for bucket in chosen.values() for u in bucket if u != last] + [last]


async def _probe(
    producer: AIOKafkaProducer,
    watcher: DecisionWatcher,
    worker: WorkerProcess,
    names: TopicNames,
    seeded_users: list[str],
    timeout_s: float,
) -> dict[str, Any]:
    """One request per seeded user plus one for a fresh user, all for ``bench-capped``.

    Rows are live if every seeded user is ``capped`` and the fresh one is not
    (a worker with an empty table would admit them all).
    """
    control = f"probe-fresh-{uuid.uuid4().hex[:8]}"
    rids = {u: f"probe-{uuid.uuid4().hex[:8]}" for u in [*seeded_users, control]}
    sent_ms = time.time() * 1000
    for user, rid in rids.items():
        value = _request(rid, user, SEED_CAMPAIGN, int(time.time() * 1000))
        await producer.send(names.ad_requests, key=user.encode(), value=value)
    await producer.flush()
    answered = await watcher.wait(list(rids.values()), timeout_s, worker)
    status = {u: watcher.seen[r][1] if r in watcher.seen else None for u, r in rids.items()}
    control_status = status.pop(control)
    return {
        "campaign": SEED_CAMPAIGN,
        "seeded_users": status,
        "control_user": control_status,
        "answered": answered,
        "max_latency_ms": max(
            (watcher.seen[r][0] - sent_ms for r in rids.values() if r in watcher.seen),
            default=None,
        ),
        "ok": answered
        and all(s == "capped" for s in status.values())
        and control_status not in (None, "capped"),
    }


async def bench_memory_and_recovery(
    bootstrap: str,
    settings: Settings,
    workdir: Path,
    ad_server: str,
    plan: Plan,
    cleanup: Cleanup,
) -> dict[str, Any]:
    """Seed N users' rows into the frequency changelog; a fresh rocksdb worker restores them."""
    names = TopicNames.from_prefix(settings.topic_prefix)
    await create_xsp_topics(bootstrap, names, partitions=settings.partitions)
    campaigns = _memory_campaigns(ad_server)
    await put_campaigns(bootstrap, names, json.dumps(campaigns).encode())
    # The worker's directory holds every campaign of the topics (CampaignDirectory).
    view = DirectoryView()
    for config in campaigns:
        view.apply_campaign(config["campaign_id"], json.dumps(config).encode())
    # As streams.app.create_app builds it for these settings.
    pipeline = PipelineConfig(
        budget_ttl_ms=settings.reservation_ttl_ms,
        frequency_ttl_ms=3 * settings.reservation_ttl_ms,
        max_hops=settings.vast_max_hops,
    )
    users = plan.seed_users
    # Seeded requests end a minute before now: inside the 1-day cap window and the
    # dedupe horizon when the probes come, never in the future.
    base_ms = int(time.time() * 1000) - users - 60_000
    seed = SeedRows(view, pipeline, base_ms)
    step = max(1, users // 1000)
    verified = seed.verify([*range(0, users, step), users - 1])
    changelog = changelog_topic(settings.app_id, "frequency")
    _log(
        f"memory: seeding {users:,} users ({len(seed.templates)} rows each, template checked "
        f"against the handlers for {verified}) into {changelog}"
    )
    seeded = await _seed_changelog(bootstrap, changelog, settings.partitions, seed, users)
    _log(f"memory: {seeded['records']:,} records produced in {seeded['produce_s']:.1f} s")
    out: dict[str, Any] = {
        "store": settings.store,
        "users": users,
        "scale": "measured, not extrapolated" if users >= MILLION else "not a 1M measurement",
        "changelog_topic": changelog,
        "bytes_per_row": {k.decode()[:2]: len(k) + len(v) for k, v in seed.rows(0)},
        "template_verified_users": verified,
        **seeded,
    }

    watcher = await DecisionWatcher(bootstrap, names.ad_responses).start()
    producer = await _bulk_producer(bootstrap)
    worker_settings = settings.with_overrides(data_dir=workdir / "mem-worker")
    shutil.rmtree(worker_settings.data_dir, ignore_errors=True)  # a fresh store, always
    worker = WorkerProcess(worker_settings, workdir / "mem-worker.log")
    samples: list[tuple[float, float]] = []
    sampler: asyncio.Task[None] | None = None
    try:
        t0 = time.monotonic()
        wall0 = time.time()
        worker.start()
        cleanup.add("memory worker", lambda: _kill_worker(worker))
        assert worker.process is not None
        wpid = worker.process.pid
        sampler = asyncio.create_task(_sample_rss(wpid, samples, t0))
        _log(f"memory: rocksdb worker restoring (budget {plan.restore_budget_s:.0f} s)")
        marks: dict[str, float] = {}
        last_report = t0
        while "recovery_complete" not in marks and time.monotonic() - t0 < plan.restore_budget_s:
            if not worker.alive:
                raise RuntimeError(f"the rocksdb worker died:\n{worker.log_tail()}")
            await asyncio.sleep(0.5)
            marks = _recovery_marks(worker.log_path, wall0)
            if time.monotonic() - last_report > 30:
                last_report = time.monotonic()
                _log(
                    f"memory: restoring, {_remaining_records(worker.log_path, wall0)} records "
                    f"remaining, RSS {samples[-1][1] if samples else float('nan'):.0f} MB"
                )
        rel = {k: v - wall0 for k, v in marks.items()}
        complete = "done_reading" in marks and "restoring" in marks
        rss_after = proc_rss_mb(wpid)
        restore: dict[str, Any] = {"complete": complete, "marks_rel_s": rel}
        start_rel = rel.get("restoring")
        if complete:
            restore_s = marks["done_reading"] - marks["restoring"]
            restore.update(
                restore_s=restore_s,
                records_per_s=seeded["records"] / restore_s if restore_s > 0 else None,
            )
        else:
            # Out of time: the rate so far, and the whole restore's time at that
            # rate (only the time is extrapolated; RSS is what it is now).
            remaining = _remaining_records(worker.log_path, wall0)
            so_far = time.time() - marks["restoring"] if "restoring" in marks else None
            done = seeded["records"] - remaining if remaining is not None else None
            rate = done / so_far if done and so_far else None
            restore.update(
                remaining_records=remaining,
                elapsed_s=so_far,
                records_per_s=rate,
                restore_s_extrapolated=seeded["records"] / rate if rate else None,
            )
        out["restore"] = restore
        _log(f"memory: restore {restore}; RSS {rss_after:.0f} MB")

        probe: dict[str, Any] = {}
        settle: dict[str, Any] = {}
        probe_users = _probe_users(seed, users, settings.partitions)
        if complete:
            probe = await _probe(producer, watcher, worker, names, probe_users, 90.0)
            _log(f"memory: probe {probe}")
            # Faust starts app tasks (the tick clock) only when recovery is complete;
            # the first pruning tick comes 60 s later and scans every record key. A
            # second probe behind it in every partition shows when it is done.
            settle_until = marks["recovery_complete"] + 65.0
            while time.time() < settle_until and worker.alive:
                await asyncio.sleep(0.5)
            settle = await _probe(producer, watcher, worker, names, probe_users, 300.0)
            settle["after_recovery_s"] = time.time() - marks["recovery_complete"]
            _log(f"memory: probe after the first pruning tick {settle}")
        out["probe"] = probe
        out["probe_after_prune"] = settle
        rss_settled = proc_rss_mb(wpid) if settle else None
        hwm = _proc_status_mb(wpid, "VmHWM")
        sampler.cancel()
        restoring = [
            mb
            for t, mb in samples
            if start_rel is not None and start_rel <= t <= rel.get("done_reading", float("inf"))
        ]
        out["rss"] = {
            "at_restore_start_mb": restoring[0] if restoring else None,
            "after_restore_mb": rss_after,
            "after_first_prune_mb": rss_settled,
            "peak_during_restore_sampled_mb": max(restoring) if restoring else None,
            "peak_hwm_mb": hwm,
            "timeline": [(round(t, 1), round(mb)) for t, mb in samples[::4]],
        }
        _log(
            f"memory: RSS {out['rss']['after_restore_mb']:.0f} MB after restore, "
            f"{_fmt(rss_settled)} MB after the first pruning tick, peak {hwm:.0f} MB; SIGKILL"
        )
        worker.kill()
    finally:
        if sampler is not None:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        worker.kill()
        await producer.stop()
        await watcher.stop()
    return out


# --------------------------------------------------------------------------- report


def _fmt(value: Any, spec: str = ".0f", unit: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:{spec}}{unit}"


def _verdicts(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    peak = r.get("peak", {})
    lat = r.get("latency", {})
    mock = r.get("mock_http", {})
    mem = r.get("memory", {})
    restore = mem.get("restore", {})
    rss = mem.get("rss", {})
    probe = mem.get("probe", {})
    added99 = (
        lat["p99_ms"] - mock["p99_ms"]
        if lat.get("p99_ms") is not None and mock.get("p99_ms") is not None
        else None
    )
    added50 = (
        lat["p50_ms"] - mock["p50_ms"]
        if lat.get("p50_ms") is not None and mock.get("p50_ms") is not None
        else None
    )
    skipped = r.get("only") == "memory"  # phases 1-3 not run: no verdict, not a failure
    peak_rss = rss.get("peak_hwm_mb")
    # Only a complete 1M restore whose probes passed can meet the target; a
    # partial or small one can only fail it (already over at fewer rows).
    full = (mem.get("users") or 0) >= MILLION and restore.get("complete") and probe.get("ok")
    over = peak_rss is not None and peak_rss > TARGET_RSS_MB
    rss_met = (not over) if full else (False if over and mem.get("users", 0) >= MILLION else None)
    dps = peak.get("decisions_per_s")
    return {
        "decisions_per_s": {
            "target": f">= {TARGET_DPS:,} /s per worker",
            "value": dps,
            "met": None
            if skipped
            else dps is not None and dps >= TARGET_DPS and peak.get("complete", False),
        },
        "p99_added_latency_ms": {
            "target": f"<= {TARGET_P99_ADDED_MS:.0f} ms at half of peak",
            "value": added99,
            "p50_added_ms": added50,
            "met": None if skipped else added99 is not None and added99 <= TARGET_P99_ADDED_MS,
        },
        "rss_1m_users_mb": {
            "target": f"<= {TARGET_RSS_MB:.0f} MB peak RSS, 1M users (rocksdb)",
            "value": peak_rss,
            "users": mem.get("users"),
            "scale": mem.get("scale"),
            "after_first_prune_mb": rss.get("after_first_prune_mb"),
            "met": rss_met,
        },
        "recovery_records_per_s": {
            "target": "(no target, reported)",
            "value": restore.get("records_per_s"),
            "complete": restore.get("complete"),
            "met": None,
        },
    }


def _floor_lines(floor: dict[str, Any] | None, model: dict[str, Any] | None) -> list[str]:
    """Phase 1b's rows: the floor itself, then the burst's cost at the floor's prices."""
    if not floor:
        return []
    if "error" in floor:
        return [f"1b. floor    failed: {floor['error'].splitlines()[0]}"]
    send, write, faust = floor["send"], floor["write"], floor["faust-write"]
    lines = [
        "1b. floor    one Faust agent with xsp's settings, nothing else (1 process, "
        f"{send['events']} events per mode)",
        f"            event + send {_fmt(send['cpu_us_per_event'])} µs CPU "
        f"({_fmt(send['events_per_s'])} events/s); + {floor['writes_per_event']} table writes "
        f"xsp's way {_fmt(write['cpu_us_per_event'])} µs ({_fmt(write['events_per_s'])} "
        f"events/s), Faust's {_fmt(faust['cpu_us_per_event'])} µs "
        f"({_fmt(faust['events_per_s'])} events/s)",
        f"            a table write: xsp's {_fmt(floor['table_write_us'])} µs, "
        f"Faust's {_fmt(floor['faust_table_write_us'])} µs",
    ]
    if model:
        lines.append(
            f"            the burst below at these prices: {model['events_per_decision']:.2f} "
            f"events + {model['changelog_writes_per_decision']:.2f} changelog writes per "
            f"decision = {model['floor_ms_per_decision']:.2f} ms "
            f"(at most {_fmt(model['floor_decisions_per_s'])} decisions/s on one core; "
            f"{TARGET_DPS:,}/s needs <= {model['target_ms_per_decision']:.2f} ms)"
        )
    return lines


def render(r: dict[str, Any]) -> str:
    ceil = r.get("ceiling", {})
    peak = r.get("peak", {})
    lat = r.get("latency", {})
    mock = r.get("mock_http", {})
    chain = r.get("raw_chain", {})
    mem = r.get("memory", {})
    restore = mem.get("restore", {})
    rss = mem.get("rss", {})
    probe = mem.get("probe", {})
    late = mem.get("probe_after_prune", {})
    v = r["verdicts"]
    lines = ["", "xsp pipeline benchmark" + (" (--quick)" if r["quick"] else ""), "=" * 72]
    lines.append(
        f"machine: {r['cpus']} CPUs, load avg before {r['loadavg_before']}, "
        f"after {r['loadavg_after']}; broker Apache Kafka {r['broker']}"
    )
    phases_from = len(lines)
    lines.append(
        "1. ceiling   raw aiokafka consume->produce (1 process, fetch wait 10 ms, linger 2 ms)"
    )
    lines.append(
        f"            {_fmt(ceil.get('msgs_per_s'))} msgs/s, "
        f"{_fmt(ceil.get('cpu_us_per_msg'))} µs CPU/msg over {ceil.get('messages')} msgs"
    )
    lines.extend(_floor_lines(r.get("faust_floor"), r.get("floor_model")))
    pilot = r.get("pilot", {})
    lines.append(
        f"            pilot burst {pilot.get('requests')}: "
        f"{_fmt(pilot.get('decisions_per_s'))} decisions/s (sizes the main burst)"
    )
    lines.append(
        f"2. peak      {peak.get('decided')}/{peak.get('requests')} decisions "
        f"({peak.get('users')} users, {peak.get('campaigns')} campaigns, "
        f"store {peak.get('store')}, {peak.get('guarantee', 'at_least_once')}, "
        f"commits every {_fmt(peak.get('commit_interval_s'), '.1f')} s)"
        f" in {_fmt(peak.get('elapsed_s'), '.1f')} s"
    )
    lines.append(
        f"            {_fmt(peak.get('decisions_per_s'))} decisions/s; worker CPU "
        f"{_fmt(peak.get('worker_cpu_ms_per_decision'), '.2f')} ms/decision "
        f"({_fmt(peak.get('worker_cpu_utilisation'), '.2f')} cores busy); "
        f"{_fmt(peak.get('messages_per_decision'), '.1f')} Kafka msgs/decision"
    )
    by_proc = peak.get("cpu_ms_per_decision_by_process", {})
    lines.append(
        "            CPU ms/decision by process: "
        + ", ".join(f"{k} {val:.2f}" for k, val in sorted(by_proc.items()))
    )
    lines.append(
        f"            statuses {peak.get('statuses')}; worker RSS "
        f"{_fmt(peak.get('worker_rss_mb'))} MB"
    )
    lines.append(
        f"3. latency   at {_fmt(lat.get('rate'))} req/s "
        + ("(--latency-rate) for " if lat.get("rate_given") else "(50 % of peak) for ")
        + f"{_fmt(lat.get('duration_s'))} s: request->decision p50 {_fmt(lat.get('p50_ms'))} ms, "
        f"p99 {_fmt(lat.get('p99_ms'))} ms, max {_fmt(lat.get('max_ms'))} ms "
        f"({lat.get('sent')} sent, complete {lat.get('complete')})"
    )
    paced_cpu = lat.get("cpu_ms_per_decision_by_process") or {}
    if paced_cpu:
        lines.append(
            "            paced: CPU ms/decision by process: "
            + ", ".join(f"{k} {v:.2f}" for k, v in sorted(paced_cpu.items()))
            + f"; {_fmt(lat.get('messages_per_decision'), '.1f')} Kafka msgs/decision"
        )
    lines.append(
        f"            mock ad server alone (direct GET /inline, same rate): p50 "
        f"{_fmt(mock.get('p50_ms'), '.1f')} ms, p99 {_fmt(mock.get('p99_ms'), '.1f')} ms"
    )
    lines.append(
        f"            added by the pipeline: p50 {_fmt(v['p99_added_latency_ms']['p50_added_ms'])}"
        f" ms, p99 {_fmt(v['p99_added_latency_ms']['value'])} ms"
    )
    lines.append(
        f"            raw aiokafka 3-hop chain, same rate: p50 {_fmt(chain.get('p50_ms'))} ms, "
        f"p99 {_fmt(chain.get('p99_ms'))} ms"
    )
    if r.get("only") == "memory":  # phases 1-3 were not run
        lines[phases_from:] = ["1.-3.       skipped (--only memory)"]
    memory_from = len(lines)
    sizes = ", ".join(f"{k} {n} B" for k, n in mem.get("bytes_per_row", {}).items())
    lines.append(
        f"4. memory    store {mem.get('store')}: {_fmt(mem.get('users'), ',')} distinct users "
        f"({mem.get('scale')}), {_fmt(mem.get('records'), ',')} changelog records ({sizes})"
    )
    lines.append(
        f"            seeded in {_fmt(mem.get('produce_s'), '.1f')} s "
        f"({_fmt(mem.get('produce_records_per_s'))} records/s); rows = the handlers' bytes "
        f"(checked for {mem.get('template_verified_users')} users)"
    )
    lines.append(
        f"            RSS {_fmt(rss.get('at_restore_start_mb'))} MB at restore start, "
        f"{_fmt(rss.get('after_restore_mb'))} MB "
        + ("after restore, " if restore.get("complete") else "when we stopped waiting, ")
        + f"{_fmt(rss.get('after_first_prune_mb'))} MB after the first pruning tick; peak "
        f"{_fmt(rss.get('peak_hwm_mb'))} MB (VmHWM; sampled during restore "
        f"{_fmt(rss.get('peak_during_restore_sampled_mb'))} MB)"
    )
    seeded_probe = probe.get("seeded_users", {})
    capped = sum(1 for s in seeded_probe.values() if s == "capped")
    lines.append(
        (
            f"            probe ({probe.get('campaign')}, 1/day): seeded users capped "
            f"{capped}/{len(seeded_probe)}, fresh user {probe.get('control_user')} -> rows are "
            + ("live (OK)" if probe.get("ok") else "NOT shown live")
        )
        if probe
        else "            probe: not run (the restore did not complete)"
    )
    if late:
        late_capped = sum(1 for s in late.get("seeded_users", {}).values() if s == "capped")
        lines.append(
            f"            again {_fmt(late.get('after_recovery_s'))} s after recovery, behind the "
            f"first pruning tick: capped {late_capped}/{len(late.get('seeded_users', {}))}, "
            f"fresh {late.get('control_user')}, answered in "
            f"{_fmt(late.get('max_latency_ms'))} ms"
        )
    if restore.get("complete"):
        lines.append(
            f"5. recovery  {_fmt(mem.get('records'), ',')} changelog records restored in "
            f"{_fmt(restore.get('restore_s'), '.1f')} s (Faust log) = "
            f"{_fmt(restore.get('records_per_s'))} records/s"
        )
    else:
        done = (
            mem["records"] - restore["remaining_records"]
            if restore.get("remaining_records") is not None and mem.get("records")
            else None
        )
        lines.append(
            f"5. recovery  NOT complete in {_fmt(restore.get('elapsed_s'))} s: "
            f"{_fmt(done, ',')} of {_fmt(mem.get('records'), ',')} records = "
            f"{_fmt(restore.get('records_per_s'))} records/s; whole restore "
            f"{_fmt(restore.get('restore_s_extrapolated'))} s (EXTRAPOLATED, time only)"
        )
    if r.get("only") == "throughput":  # phases 4-5 were not run
        lines[memory_from:] = ["4.-5.       skipped (--only throughput)"]
    lines.append("-" * 72)
    lines.append(f"{'target':44s}{'result':>16s}  verdict")
    rows = [
        ("decisions_per_s", ".0f", " /s"),
        ("p99_added_latency_ms", ".1f", " ms"),
        ("rss_1m_users_mb", ".0f", " MB*"),
        ("recovery_records_per_s", ".0f", " rec/s"),
    ]
    for key, spec, unit in rows:
        item = v[key]
        verdict = "-" if item["met"] is None else ("MET" if item["met"] else "NOT MET")
        lines.append(f"{item['target']:44s}{_fmt(item['value'], spec, unit):>16s}  {verdict}")
    lines.append(
        f"* peak RSS of the worker that restored {_fmt(mem.get('users'), ',')} users "
        f"({mem.get('scale')})"
        + ("" if (mem.get("users") or 0) >= MILLION else "; no verdict below 1M users")
    )
    met = [v[k]["met"] for k in v if v[k]["met"] is not None]
    lines.append(
        f"RESULT: {sum(met)}/{len(met)} targets met"
        + ("" if all(met) else " (NOT all met)")
        + f"; wall time {r['wall_s']:.0f} s"
    )
    if r.get("busy_warning"):
        lines.append("WARNING: " + r["busy_warning"])
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run every phase; print the table and the verdicts; write the JSON."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller run (about 2 minutes)")
    ap.add_argument(
        "--json-out",
        type=Path,
        default=None,
        help="where to write the JSON (default bench-results/bench_pipeline*.json)",
    )
    ap.add_argument(
        "--store",
        choices=("memory", "rocksdb"),
        default="memory",
        help="table store of the peak/latency worker (memory phase is rocksdb)",
    )
    ap.add_argument(
        "--guarantee",
        choices=("at_least_once", "exactly_once"),
        default="at_least_once",
        help="processing guarantee of the peak/latency worker (the targets are at-least-once)",
    )
    ap.add_argument(
        "--commit-interval-ms",
        type=int,
        default=0,
        help="XSP_COMMIT_INTERVAL_MS of the peak/latency worker (default 0: by guarantee)",
    )
    ap.add_argument(
        "--linger-ms",
        type=int,
        default=Settings().producer_linger_ms,
        help="XSP_PRODUCER_LINGER_MS of the peak/latency worker (throughput against latency)",
    )
    ap.add_argument(
        "--only",
        choices=("memory", "throughput"),
        default=None,
        help="run only these phases (throughput = 1-3, memory = 4 and 5), to iterate on them",
    )
    ap.add_argument(
        "--latency-rate",
        type=float,
        default=None,
        help="requests/s of phase 3 (default: half of the measured peak)",
    )
    ap.add_argument(
        "--keep", action="store_true", help="keep the temporary folder (worker and broker logs)"
    )
    ap.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy raw profile of the worker during the main burst (if installed)",
    )
    args = ap.parse_args(argv)
    try:  # a bad worker setting is a one-line usage error, before anything starts
        Settings().with_overrides(
            producer_linger_ms=args.linger_ms, commit_interval_ms=args.commit_interval_ms
        )
    except SettingsError as exc:
        ap.error(str(exc))
    plan = QUICK if args.quick else FULL
    json_out = args.json_out or ROOT / "bench-results" / (
        "bench_pipeline-quick.json" if args.quick else "bench_pipeline.json"
    )
    signal.signal(signal.SIGTERM, _on_sigterm)
    t_start = time.perf_counter()
    load_before = _loadavg()
    workdir = Path(tempfile.mkdtemp(prefix="xsp-bench-pipeline-"))
    cleanup = Cleanup()
    if not args.keep:
        cleanup.add("workdir", lambda: shutil.rmtree(workdir, ignore_errors=True))
    result: dict[str, Any] = {
        "quick": args.quick,
        "only": args.only,
        "cpus": os.cpu_count(),
        "loadavg_before": load_before,
        "plan": plan.__dict__,
    }
    code = 0
    try:
        _log(f"starting Apache Kafka in {workdir}")
        broker = LocalKafka(workdir / "kafka")
        cleanup.add("broker", broker.stop)
        info = broker.start()
        bootstrap = info.bootstrap_servers
        result["broker"] = f"{bootstrap} (up in {info.started_in_s:.1f} s)"
        mock = MockAdServerProcess(workdir / "mock-adserver.log")
        cleanup.add("mock ad server", mock.stop)
        mock.start()
        pids = {
            "broker": info.pid,
            "mock": mock.process.pid if mock.process else None,
        }
        run = uuid.uuid4().hex[:6]

        base = Settings(
            bootstrap_servers=bootstrap,
            partitions=4,
            web_enabled=False,
            vast_allowed_networks="127.0.0.1/32",
            log_level="info",
        )
        if args.only != "memory":
            _log(f"ceiling: raw aiokafka loop over {plan.ceiling_n} messages")
            result["ceiling"] = asyncio.run(bench_ceiling(bootstrap, f"raw{run}.", plan.ceiling_n))
            _log(f"ceiling: {result['ceiling']['msgs_per_s']:.0f} msgs/s")
            _log(f"floor: a Faust agent with xsp's settings over {plan.floor_n} events, twice")
            result["faust_floor"] = _run_floor(base, workdir, run, plan.floor_n)
            peak_settings = base.with_overrides(
                app_id=f"bench-{run}",
                topic_prefix=f"bench{run}.",
                store=f"{args.store}://",
                data_dir=workdir / "peak-worker",
                processing_guarantee=args.guarantee,
                commit_interval_ms=args.commit_interval_ms,
                producer_linger_ms=args.linger_ms,
            )
            result.update(
                asyncio.run(
                    bench_peak_and_latency(
                        bootstrap,
                        peak_settings,
                        workdir / "peak-worker.log",
                        mock.base_url,
                        pids,
                        plan,
                        cleanup,
                        args.profile,
                        args.latency_rate,
                    )
                )
            )
            result["floor_model"] = floor_model(
                result.get("peak", {}), result["faust_floor"], peak_settings
            )
        if args.only != "throughput":
            mem_settings = base.with_overrides(
                app_id=f"mem-{run}", topic_prefix=f"mem{run}.", store="rocksdb://"
            )
            result["memory"] = asyncio.run(
                bench_memory_and_recovery(
                    bootstrap, mem_settings, workdir, mock.base_url, plan, cleanup
                )
            )
    except KeyboardInterrupt:
        _log("interrupted; stopping everything")
        code = 130
    except Exception as exc:
        _log(f"error: {exc!r}")
        result["error"] = repr(exc)
        code = 1
    finally:
        _log("stopping workers, mock ad server and broker")
        cleanup.run()
    result["loadavg_after"] = _loadavg()
    result["wall_s"] = time.perf_counter() - t_start
    busy = [x for x in (load_before, result["loadavg_after"]) if x and x[0] > (os.cpu_count() or 1)]
    if busy:
        result["busy_warning"] = (
            "the load average exceeded the CPU count before or after the run: other "
            "processes competed for the CPUs, so the numbers are lower than on a quiet box."
        )
    result["verdicts"] = _verdicts(result)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(result, indent=2, default=str))
    if code != 130:
        print(render(result))
    print(f"JSON written to {json_out}" + (f"; logs kept in {workdir}" if args.keep else ""))
    return code


if __name__ == "__main__":
    sys.exit(main())
