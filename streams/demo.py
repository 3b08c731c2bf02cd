"""The embedded demo behind ``xsp dev`` (the README's first command).

Starts, all on loopback and in a temporary folder: a local Apache Kafka
broker, the mock ad server, one real ``xsp worker`` process and three
campaigns; then sends paced ad-request traffic from simulated users (plus a
few malformed events), waits for every decision and prints a summary:
decisions by status, VAST error codes, spend per campaign against its
budget, decision latency and dead letters. Ctrl-C stops everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.campaign_admin import put_campaigns
from streams.devstack import MockAdServerProcess, WorkerProcess
from streams.kafka_io import create_xsp_topics, read_topic
from streams.kafka_local import KafkaLaunchError, LocalKafka
from streams.records import AdRequest, DeadLetter, Decision, decode, encode
from streams.settings import Settings
from streams.topics import TopicNames

__all__ = ["DemoSummary", "demo_campaigns", "run_demo"]

MALFORMED = [
    b"this is not json",
    b'{"user_id": "user-1", "timestamp": 1}',
    b'{"request_id": "bad-ts", "user_id": "user-1", "timestamp": "yesterday"}',
    b"[1, 2, 3]",
    b'{"request_id": "future", "user_id": "user-1", "timestamp": 99999999999999}',
]


@dataclass
class CampaignSpend:
    campaign_id: str
    filled: int
    spend_micros: int
    budget_micros: int
    currency: str


@dataclass
class DemoSummary:
    """What the demo saw; printed as a table or as JSON."""

    bootstrap_servers: str = ""
    broker_start_s: float = 0.0
    duration_s: float = 0.0
    sent_valid: int = 0
    sent_invalid: int = 0
    decided: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    vast_errors: dict[str, int] = field(default_factory=dict)
    campaigns: list[CampaignSpend] = field(default_factory=list)
    latency_ms: dict[str, float] = field(default_factory=dict)
    dead_lettered: int = 0
    dlq_reasons: dict[str, int] = field(default_factory=dict)
    complete: bool = False

    def as_table(self) -> str:
        lines = ["", "xsp demo summary", "================"]
        lines.append(
            f"broker        Apache Kafka on {self.bootstrap_servers} "
            f"(up in {self.broker_start_s:.1f} s)"
        )
        lines.append(
            f"traffic       {self.sent_valid} ad requests in {self.duration_s:.0f} s "
            f"+ {self.sent_invalid} malformed events"
        )
        lines.append(f"decisions     {self.decided} of {self.sent_valid}")
        for status, count in sorted(self.by_status.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {status:<18}{count:>6}")
        if self.vast_errors:
            codes = ", ".join(f"{code}: {n}" for code, n in sorted(self.vast_errors.items()))
            lines.append(f"VAST errors   {codes}")
        lines.append("spend         campaign            fills        spent / budget")
        for c in self.campaigns:
            lines.append(
                f"              {c.campaign_id:<18}{c.filled:>6}   "
                f"{c.spend_micros / 1e6:>9.2f} / {c.budget_micros / 1e6:.2f} {c.currency}"
            )
        if self.latency_ms:
            lat = self.latency_ms
            lines.append(
                f"latency       p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms, "
                f"max {lat['max']:.0f} ms (request to decision)"
            )
        lines.append(f"dead letters  {self.dead_lettered}")
        for reason, count in sorted(self.dlq_reasons.items()):
            lines.append(f"  {count:>3} x {reason}")
        verdict = "OK: every request got exactly its decision" if self.complete else "INCOMPLETE"
        lines.append(f"result        {verdict}")
        return "\n".join(lines)


def demo_campaigns(ad_server: str) -> list[dict[str, Any]]:
    """Three campaigns that together show fills, caps, an exhausted budget and no-fills."""
    return [
        {
            "campaign_id": "brand-preroll",
            "advertiser_id": "acme",
            "priority": 10,
            "price": {"model": "cpi", "amount": "0.50", "currency": "USD"},
            "budget": {"total": "60", "timezone": "UTC"},
            "caps": [
                {"limit": 3, "window": "1h"},
                {"limit": 10, "window": "1d", "kind": "calendar"},
            ],
            "vast_url": f"{ad_server}/wrapper/2?cb=[CACHEBUSTING]",
        },
        {
            "campaign_id": "sports-midroll",
            "advertiser_id": "sportsco",
            "priority": 5,
            "price": {"model": "cpm", "amount": "8", "currency": "USD"},
            "budget": {"total": "5", "timezone": "Europe/Berlin"},
            "caps": [{"limit": 4, "window": "1h"}],
            "allow_vast_pricing": True,
            "vast_url": f"{ad_server}/wrapper/1",
        },
        {
            "campaign_id": "remnant",
            "advertiser_id": "house",
            "priority": 1,
            "price": {"model": "cpi", "amount": "0.01", "currency": "USD"},
            "budget": {"total": "1", "timezone": "UTC"},
            "caps": [{"limit": 2, "window": "1h"}],
            "vast_url": f"{ad_server}/empty",
        },
    ]


def run_demo(
    settings: Settings,
    *,
    duration_s: float = 20.0,
    rate: float = 40.0,
    users: int = 40,
    as_json: bool = False,
) -> int:
    """Run the whole demo; return the exit code (0 when every request got its decision)."""
    with tempfile.TemporaryDirectory(prefix="xsp-demo-") as tmp:
        workdir = Path(tmp)
        broker = LocalKafka(workdir / "kafka")
        ad_server = MockAdServerProcess(workdir / "mock-adserver.log")
        worker: WorkerProcess | None = None
        summary = DemoSummary(duration_s=duration_s)
        try:
            _progress("starting Apache Kafka (the first run downloads the jars with Maven)…")
            info = broker.start()
            summary.bootstrap_servers = info.bootstrap_servers
            summary.broker_start_s = info.started_in_s
            _progress(f"Kafka up on {info.bootstrap_servers}; starting the mock ad server…")
            ad_server.start()
            demo_settings = settings.with_overrides(
                bootstrap_servers=info.bootstrap_servers,
                app_id=f"xsp-demo-{uuid.uuid4().hex[:6]}",
                data_dir=workdir / "worker-data",
                web_enabled=False,
                vast_allowed_networks="127.0.0.1/32",
            )
            names = TopicNames.from_prefix(demo_settings.topic_prefix)
            asyncio.run(
                create_xsp_topics(
                    info.bootstrap_servers, names, partitions=demo_settings.partitions
                )
            )
            configs = demo_campaigns(ad_server.base_url)
            asyncio.run(put_campaigns(info.bootstrap_servers, names, json.dumps(configs).encode()))
            _progress(f"{len(configs)} campaigns loaded; starting an xsp worker…")
            worker = WorkerProcess(demo_settings, workdir / "worker.log").start()
            asyncio.run(_traffic(info.bootstrap_servers, names, summary, duration_s, rate, users))
            _collect(info.bootstrap_servers, names, configs, summary)
            if not summary.complete:
                _progress("worker log tail:\n" + worker.log_tail())
        except KafkaLaunchError as exc:
            print(f"xsp: error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            _progress("interrupted; stopping…")
            return 130
        finally:
            _progress("stopping worker, ad server and Kafka…")
            if worker is not None:
                worker.stop()
            ad_server.stop()
            broker.stop()
        if as_json:
            print(json.dumps(asdict(summary), sort_keys=True))
        else:
            print(summary.as_table())
        return 0 if summary.complete else 1


async def _traffic(
    bootstrap: str,
    names: TopicNames,
    summary: DemoSummary,
    duration_s: float,
    rate: float,
    users: int,
) -> None:
    """Send paced requests while counting decisions; return when all are decided or late."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)
    consumer = AIOKafkaConsumer(
        names.ad_responses,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=20,
    )
    await producer.start()
    await consumer.start()
    latencies: list[float] = []
    decided: set[str] = set()
    sent_at: dict[str, int] = {}
    try:
        reader = asyncio.create_task(_read_decisions(consumer, decided, sent_at, latencies))
        await _warm_up(producer, names, decided)
        latencies.clear()
        for raw in MALFORMED:
            await producer.send(names.ad_requests, key=b"user-bad", value=raw)
        summary.sent_invalid = len(MALFORMED)
        total = int(duration_s * rate)
        started = time.monotonic()
        last_report = 0.0
        for index in range(total):
            due = started + index / rate
            if (delay := due - time.monotonic()) > 0:
                await asyncio.sleep(delay)
            now_ms = int(time.time() * 1000)
            request = AdRequest(
                request_id=f"demo-{index:05d}-{uuid.uuid4().hex[:6]}",
                user_id=f"viewer-{index % users:03d}",
                timestamp=now_ms,
                correlator=uuid.uuid4().hex,
                cachebusting=str(index),
                params={"placement": "pre-roll", "device_ip": "203.0.113.7"},
            )
            sent_at[request.request_id] = now_ms
            await producer.send(
                names.ad_requests, key=request.user_id.encode(), value=encode(request)
            )
            if time.monotonic() - last_report >= 1.0:
                last_report = time.monotonic()
                _progress(f"sent {index + 1}/{total}, decided {len(decided)}", end="\r")
        await producer.flush()
        summary.sent_valid = total
        deadline = time.monotonic() + 30
        while len(decided) < total and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        _progress(f"sent {total}/{total}, decided {len(decided)}            ")
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    finally:
        await producer.stop()
        await consumer.stop()
    if latencies:
        ordered = sorted(latencies)
        summary.latency_ms = {
            "p50": ordered[len(ordered) // 2],
            "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
            "max": ordered[-1],
        }


async def _warm_up(producer: AIOKafkaProducer, names: TopicNames, decided: set[str]) -> None:
    """Wait until the worker answers one request, so start-up is not counted as latency."""
    request = AdRequest(
        request_id=f"warm-up-{uuid.uuid4().hex[:8]}",
        user_id="warm-up",
        timestamp=int(time.time() * 1000),
        params={"campaign_id": "remnant"},
    )
    await producer.send_and_wait(names.ad_requests, key=b"warm-up", value=encode(request))
    deadline = time.monotonic() + 60
    while request.request_id not in decided and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    decided.discard(request.request_id)
    _progress("worker is answering; sending traffic…")


async def _read_decisions(
    consumer: AIOKafkaConsumer, decided: set[str], sent_at: dict[str, int], latencies: list[float]
) -> None:
    while True:
        batch = await consumer.getmany(timeout_ms=200)
        for records in batch.values():
            for record in records:
                rid = (record.key or b"").decode()
                if rid in decided:
                    continue
                decided.add(rid)
                if rid in sent_at:
                    latencies.append(float(record.timestamp - sent_at[rid]))


def _collect(
    bootstrap: str, names: TopicNames, configs: list[dict[str, Any]], summary: DemoSummary
) -> None:
    decisions = {
        d.request_id: d
        for d in (
            decode(Decision, m.value or b"")
            for m in asyncio.run(read_topic(bootstrap, names.ad_responses, timeout_s=10))
        )
        if not d.request_id.startswith("warm-up-")
    }
    summary.decided = len(decisions)
    summary.by_status = dict(Counter(d.status.value for d in decisions.values()))
    summary.vast_errors = dict(
        Counter(str(d.vast_error_code) for d in decisions.values() if d.vast_error_code)
    )
    for config in configs:
        cid = config["campaign_id"]
        mine = [d for d in decisions.values() if d.campaign_id == cid and d.spend_micros]
        summary.campaigns.append(
            CampaignSpend(
                campaign_id=cid,
                filled=len(mine),
                spend_micros=sum(d.spend_micros for d in mine),
                budget_micros=int(float(config["budget"]["total"]) * 1_000_000),
                currency=config["price"]["currency"],
            )
        )
    dead = [
        decode(DeadLetter, m.value or b"")
        for m in asyncio.run(read_topic(bootstrap, names.dlq, timeout_s=5))
    ]
    summary.dead_lettered = len(dead)
    summary.dlq_reasons = dict(Counter(_short(d.reason) for d in dead))
    within_budget = all(c.spend_micros <= c.budget_micros for c in summary.campaigns)
    summary.complete = (
        summary.decided == summary.sent_valid
        and summary.dead_lettered == summary.sent_invalid
        and within_budget
    )


def _short(reason: str) -> str:
    return reason if len(reason) <= 70 else reason[:67] + "..."


def _progress(message: str, end: str = "\n") -> None:
    print(f"[xsp dev] {message}", file=sys.stderr, end=end, flush=True)
