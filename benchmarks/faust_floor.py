"""What one Faust event costs with xsp's settings: the floor under the pipeline's cost per decision.

``bench_pipeline`` runs this module as a worker process (``python -m
benchmarks.faust_floor``) in three modes, one after the other, on the same
broker as the rest of the run:

- ``send``: one agent, each event sends one message (``agents.wiring.publish``,
  as xsp's agents send);
- ``write``: the same, plus four table writes the way xsp's agents write
  (``agents.wiring.TableStore``: the store, then the changelog records handed
  to the producer);
- ``faust-write``: the same, plus four ``table[key] = value`` (Faust's own
  changelog path, which xsp used until session 18).

The app is ``streams.app.create_app`` without xsp's agents: the same
transport, stream iteration, commit rule, fetch wait, producer and tables as
an ``xsp worker``, and an agent that does nothing else. CPU per event is read
from ``/proc`` over a backlog produced at once, as in the pipeline's burst.

They give a floor for a topology: a decision costs the worker at least
(events it consumes) x (cost of an event with a send) + (changelog writes) x
(cost of a write), before any handler, HTTP or batching logic of xsp's own.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from agents.wiring import TableStore, publish
from benchmarks.cpu import proc_cpu_s
from streams.app import XspApp, create_app
from streams.kafka_io import create_topics, produce
from streams.replay import changelog_topic
from streams.settings import Settings

__all__ = ["FloorTopics", "bench_faust_floor", "build_app", "floor_ms_per_decision"]

_MODE_ENV = "XSP_FLOOR_MODE"
MODES = ("send", "write", "faust-write")
WARM_UP_EVENTS = 200
# Table writes per event in the write modes, about what a decision writes: a
# write's cost is the difference from ``send`` divided by this, so the box's
# drift between two modes weighs a quarter as much as with one write.
WRITES_PER_EVENT = 4


@dataclass(frozen=True)
class FloorTopics:
    """The floor agent's source and sink for one deployment prefix."""

    source: str
    sink: str

    @classmethod
    def from_prefix(cls, prefix: str) -> FloorTopics:
        return cls(source=f"{prefix}floor-in", sink=f"{prefix}floor-out")


def build_app(settings: Settings, *, mode: str) -> XspApp:
    """xsp's Faust app with one agent: each event (written to a table, by ``mode``) sent on."""
    app = create_app(settings, register_agents=False)
    names = FloorTopics.from_prefix(settings.topic_prefix)
    source = app.topic(names.source, key_serializer="raw", value_serializer="raw")
    table = app.xsp_tables.frequency
    store = TableStore(table)

    @app.agent(source, name="floor", concurrency=1)
    async def floor(stream: Any) -> None:
        async for event in stream.events():
            if mode == "write":
                for key in _write_keys(event.key):
                    store.put(key.decode(), event.value)
                await store.send_changelog()
            elif mode == "faust-write":
                for key in _write_keys(event.key):
                    table[key] = event.value
            await publish(app, names.sink, event.key, event.value)

    return app


def _write_keys(key: bytes) -> list[bytes]:
    """The keys one event writes: several, so that a write's cost stands out of the noise."""
    return [key + b"#" + str(i).encode() for i in range(WRITES_PER_EVENT)]


def floor_ms_per_decision(
    events_per_decision: float, writes_per_decision: float, floor: dict[str, Any]
) -> float:
    """The model's floor: events x (event with a send) + writes x (one table write), in ms."""
    event_us: float = floor["send"]["cpu_us_per_event"]
    write_us: float = floor["table_write_us"]
    return (events_per_decision * event_us + writes_per_decision * write_us) / 1000


async def _wait_for(
    consumer: AIOKafkaConsumer,
    tps: list[TopicPartition],
    count: int,
    process: subprocess.Popen[bytes],
    log_path: Path,
    timeout_s: float,
) -> float:
    """Poll the sink's end offsets until they sum to ``count``; return the time it happened."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ends = await consumer.end_offsets(tps)
        if sum(ends.values()) >= count:
            return time.time()
        if process.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"the floor worker died:\n{tail}")
        await asyncio.sleep(0.02)
    raise RuntimeError(f"the floor worker did not send {count} messages in {timeout_s:.0f} s")


async def _one_mode(
    settings: Settings,
    log_path: Path,
    items: list[tuple[bytes, bytes]],
    *,
    mode: str,
    timeout_s: float,
) -> dict[str, Any]:
    names = FloorTopics.from_prefix(settings.topic_prefix)
    changelog = changelog_topic(settings.app_id, "frequency")
    await create_topics(
        settings.bootstrap_servers,
        [names.source, names.sink, changelog],
        partitions=settings.partitions,
        compacted={changelog},
    )
    env = {**os.environ, **settings.to_env(), _MODE_ENV: mode}
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.faust_floor"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    bootstrap = settings.bootstrap_servers
    watcher = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await watcher.start()
    try:
        tps = [TopicPartition(names.sink, p) for p in range(settings.partitions)]
        warm = items[:WARM_UP_EVENTS]
        await produce(bootstrap, names.source, warm)
        await _wait_for(watcher, tps, len(warm), process, log_path, timeout_s)
        cpu0, t0 = proc_cpu_s(process.pid), time.time()
        await produce(bootstrap, names.source, items)
        t1 = await _wait_for(watcher, tps, len(warm) + len(items), process, log_path, timeout_s)
        cpu = proc_cpu_s(process.pid) - cpu0
    finally:
        await watcher.stop()
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    elapsed = t1 - t0
    return {
        "events": len(items),
        "elapsed_s": elapsed,
        "events_per_s": len(items) / elapsed if elapsed > 0 else None,
        "cpu_us_per_event": cpu / len(items) * 1e6,
    }


async def bench_faust_floor(
    base: Settings, workdir: Path, run: str, items: list[tuple[bytes, bytes]]
) -> dict[str, Any]:
    """Every mode over the same ``items`` (key, value), each in a fresh worker process.

    Returns each mode's events/s and CPU µs per event, and the differences:
    the cost of one table write, xsp's (``table_write_us``) and Faust's
    (``faust_table_write_us``).
    """
    result: dict[str, Any] = {}
    for mode in MODES:
        settings = base.with_overrides(
            app_id=f"floor-{mode}-{run}",
            topic_prefix=f"floor{mode}{run}.",
            store="memory://",
            data_dir=workdir / f"floor-{mode}",
        )
        result[mode] = await _one_mode(
            settings, workdir / f"floor-{mode}.log", items, mode=mode, timeout_s=120.0
        )
    send_us = result["send"]["cpu_us_per_event"]
    for mode, name in (("write", "table_write_us"), ("faust-write", "faust_table_write_us")):
        result[name] = (result[mode]["cpu_us_per_event"] - send_us) / WRITES_PER_EVENT
    result["writes_per_event"] = WRITES_PER_EVENT
    return result


def main() -> None:
    """The floor worker: settings from ``XSP_*``, its mode from ``XSP_FLOOR_MODE``."""
    from faust.cli.faust import cli

    settings = Settings.from_env()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    mode = os.environ.get(_MODE_ENV, "")
    if mode not in MODES:
        raise SystemExit(
            f"faust_floor: {_MODE_ENV} must be one of {', '.join(MODES)}, not {mode!r}"
        )
    app = build_app(settings, mode=mode)
    app.finalize()
    app.worker_init()
    args = ["worker", "--without-web", "--loglevel", settings.log_level]
    cli.main(args=args, prog_name="faust-floor", standalone_mode=False, app=app)


if __name__ == "__main__":
    main()
