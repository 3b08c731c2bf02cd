"""The embedded demo behind ``xsp dev`` (the README's first command).

Starts a local Apache Kafka broker in a temporary folder, creates the
topics, starts one real ``xsp worker`` subprocess, sends a mix of valid and
invalid ad requests, waits until every one was routed, prints a summary and
stops everything (also on Ctrl-C).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from streams.devstack import WorkerProcess
from streams.kafka_io import create_xsp_topics, produce, read_topic
from streams.kafka_local import KafkaLaunchError, LocalKafka
from streams.records import AdRequest, DeadLetter, decode, encode
from streams.settings import Settings
from streams.topics import TopicNames

__all__ = ["DemoSummary", "demo_requests", "run_demo"]


@dataclass
class DemoSummary:
    """What the demo saw; printed as a table or as JSON."""

    bootstrap_servers: str = ""
    broker_start_s: float = 0.0
    sent_valid: int = 0
    sent_invalid: int = 0
    forwarded: int = 0
    dead_lettered: int = 0
    dlq_reasons: dict[str, int] = field(default_factory=dict)
    first_decision_s: float = 0.0
    all_routed_s: float = 0.0
    complete: bool = False

    def as_table(self) -> str:
        rows = [
            (
                "broker",
                f"Apache Kafka on {self.bootstrap_servers} (up in {self.broker_start_s:.1f} s)",
            ),
            ("requests sent", f"{self.sent_valid} valid + {self.sent_invalid} malformed"),
            ("forwarded by admit", str(self.forwarded)),
            ("dead-lettered", str(self.dead_lettered)),
            ("all routed after", f"{self.all_routed_s:.1f} s (worker start included)"),
            ("result", "OK: every request accounted for" if self.complete else "INCOMPLETE"),
        ]
        width = max(len(name) for name, _ in rows)
        lines = ["", "xsp demo summary", "=" * 16]
        lines += [f"{name.ljust(width)}  {value}" for name, value in rows]
        if self.dlq_reasons:
            lines.append("dead-letter reasons:")
            lines += [
                f"  {count:>3} x {reason}" for reason, count in sorted(self.dlq_reasons.items())
            ]
        return "\n".join(lines)


def demo_requests(count: int, now_ms: int) -> tuple[list[tuple[bytes, bytes]], int]:
    """``count`` valid ad requests followed by one of each kind of malformed input.

    Returns the (key, value) pairs and how many of them are malformed.
    """
    items: list[tuple[bytes, bytes]] = []
    for index in range(count):
        request = AdRequest(
            request_id=f"demo-{uuid.uuid4().hex[:10]}",
            user_id=f"user-{index % 7}",
            timestamp=now_ms + index,
            correlator=uuid.uuid4().hex,
            cachebusting=str(index),
            params={"placement": "pre-roll", "size": "640x360"},
        )
        items.append((request.user_id.encode(), encode(request)))
    malformed = [
        b"this is not json",
        b'{"user_id": "user-1", "timestamp": 1}',
        b'{"request_id": "bad-ts", "user_id": "user-1", "timestamp": "yesterday"}',
        b"[1, 2, 3]",
        b'{"request_id": "future", "user_id": "user-1", "timestamp": 99999999999999}',
    ]
    items += [(b"user-bad", raw) for raw in malformed]
    return items, len(malformed)


def run_demo(settings: Settings, *, timeout_s: float = 30.0, as_json: bool = False) -> int:
    """Run the whole demo; return the process exit code (0 when every request was routed)."""
    with tempfile.TemporaryDirectory(prefix="xsp-demo-") as tmp:
        workdir = Path(tmp)
        broker = LocalKafka(workdir / "kafka")
        summary = DemoSummary()
        worker: WorkerProcess | None = None
        try:
            _progress("starting Apache Kafka (first run downloads the jars with Maven)…")
            info = broker.start()
            summary.bootstrap_servers = info.bootstrap_servers
            summary.broker_start_s = info.started_in_s
            demo_settings = settings.with_overrides(
                bootstrap_servers=info.bootstrap_servers,
                app_id=f"xsp-demo-{uuid.uuid4().hex[:6]}",
                data_dir=workdir / "worker-data",
                web_enabled=False,
            )
            names = TopicNames.from_prefix(demo_settings.topic_prefix)
            asyncio.run(
                create_xsp_topics(
                    info.bootstrap_servers, names, partitions=demo_settings.partitions
                )
            )
            _progress("starting an xsp worker…")
            worker = WorkerProcess(demo_settings, workdir / "worker.log").start()
            items, invalid = demo_requests(20, int(time.time() * 1000))
            summary.sent_valid = len(items) - invalid
            summary.sent_invalid = invalid
            started = time.monotonic()
            asyncio.run(produce(info.bootstrap_servers, names.ad_requests, items))
            _progress(f"sent {len(items)} requests; waiting for the worker to route them…")
            forwarded, dead = asyncio.run(
                _await_routing(info.bootstrap_servers, names, summary, timeout_s)
            )
            summary.all_routed_s = time.monotonic() - started
            summary.forwarded = len(forwarded)
            summary.dead_lettered = len(dead)
            summary.dlq_reasons = dict(Counter(_reason_kind(d.reason) for d in dead))
            summary.complete = (
                summary.forwarded == summary.sent_valid and summary.dead_lettered == invalid
            )
            if not summary.complete and worker is not None:
                _progress("worker log tail:\n" + worker.log_tail())
        except KafkaLaunchError as exc:
            print(f"xsp: error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            _progress("interrupted; stopping…")
            return 130
        finally:
            if worker is not None:
                worker.stop()
            broker.stop()
        if as_json:
            print(json.dumps(summary.__dict__, sort_keys=True))
        else:
            print(summary.as_table())
        return 0 if summary.complete else 1


async def _await_routing(
    bootstrap: str, names: TopicNames, summary: DemoSummary, timeout_s: float
) -> tuple[list[AdRequest], list[DeadLetter]]:
    deadline = time.monotonic() + timeout_s
    forwarded: list[AdRequest] = []
    dead: list[DeadLetter] = []
    while time.monotonic() < deadline:
        forwarded = [
            decode(AdRequest, m.value or b"")
            for m in await read_topic(bootstrap, names.budget_requests, timeout_s=2)
        ]
        dead = [
            decode(DeadLetter, m.value or b"")
            for m in await read_topic(bootstrap, names.dlq, timeout_s=2)
        ]
        if len(forwarded) >= summary.sent_valid and len(dead) >= summary.sent_invalid:
            break
        await asyncio.sleep(0.5)
    return forwarded, dead


def _reason_kind(reason: str) -> str:
    return reason if len(reason) <= 70 else reason[:67] + "..."


def _progress(message: str) -> None:
    print(f"[xsp dev] {message}", file=sys.stderr, flush=True)
