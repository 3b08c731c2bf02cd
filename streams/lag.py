"""Consumer-group lag per topic-partition, and the ``xsp lag`` command.

Lag is ``end offset - committed offset`` per partition, read with the Kafka
admin API (``OffsetFetch`` for the group's committed offsets) and a
group-less consumer (``ListOffsets`` for the end offsets). Nothing here joins
the group, so looking at a group never triggers a rebalance of its workers.

Pure of Faust: works against any broker and any group, including groups that
are not xsp's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import click
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError

from streams.settings import Settings, SettingsError

__all__ = [
    "LagError",
    "PartitionLag",
    "consumer_lag",
    "lag_command",
    "lag_document",
    "render_lag_table",
]

# Kafka's UNKNOWN_TOPIC_OR_PARTITION error code in a metadata response.
_UNKNOWN_TOPIC = 3
# Retriable errors right after a broker starts (coordinator not loaded yet,
# leader moving) clear within seconds; a dead broker does not.
_RETRY_FOR_S = 10.0


class LagError(click.ClickException):
    """Lag cannot be computed (broker unreachable, unknown topic); the message says why.

    A ``ClickException`` with exit code 2 so the CLI prints it as one line.
    """

    exit_code = 2


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """Lag of one consumer group on one topic-partition.

    ``committed`` is ``None`` when the group has no committed offset there;
    ``lag`` then counts from the partition's first retained offset, because
    xsp's groups reset to ``earliest`` and would consume all of it.
    """

    topic: str
    partition: int
    end_offset: int
    committed: int | None
    lag: int


async def consumer_lag(
    bootstrap: str, group_id: str, topics: list[str] | None = None
) -> list[PartitionLag]:
    """Lag of ``group_id`` on every partition of ``topics``, sorted by (topic, partition).

    With ``topics=None`` it covers every topic the group has committed
    offsets for (all partitions of those topics, committed or not). A group
    that committed nothing gives an empty list for ``topics=None``.

    Guarantees: never joins or disturbs the group; ``lag >= 0`` (a committed
    offset past the end, possible after a topic was truncated, reads as 0).
    Raises ``LagError`` if the broker cannot be reached or a named topic does
    not exist.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    # group_id=None: a consumer outside any group, used only for ListOffsets.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    try:
        await _start(admin.start(), bootstrap)
        await _start(consumer.start(), bootstrap)
        committed = await _retrying(lambda: admin.list_consumer_group_offsets(group_id))
        wanted = sorted(set(topics)) if topics else sorted({tp.topic for tp in committed})
        if not wanted:
            return []
        partitions = await _partitions(admin, wanted)
        ends = await consumer.end_offsets(partitions)
        starts = await consumer.beginning_offsets(partitions)
    finally:
        await consumer.stop()
        await admin.close()
    rows = []
    for tp in partitions:
        meta = committed.get(tp)
        # OffsetFetch reports "no offset" as -1 for partitions asked for by name.
        offset = meta.offset if meta is not None and meta.offset >= 0 else None
        base = starts[tp] if offset is None else offset
        rows.append(
            PartitionLag(
                topic=tp.topic,
                partition=tp.partition,
                end_offset=ends[tp],
                committed=offset,
                lag=max(0, ends[tp] - base),
            )
        )
    return rows


async def _start(starting: Any, bootstrap: str) -> None:
    try:
        await starting
    except KafkaConnectionError as exc:
        raise LagError(f"cannot reach Kafka at {bootstrap} ({type(exc).__name__})") from None


async def _retrying(call: Any) -> Any:
    deadline = time.monotonic() + _RETRY_FOR_S
    while True:
        try:
            return await call()
        except KafkaError as exc:
            if not exc.retriable or time.monotonic() > deadline:
                raise LagError(f"cannot read consumer group offsets: {exc!r}") from None
            await asyncio.sleep(0.2)


async def _partitions(admin: AIOKafkaAdminClient, topics: list[str]) -> list[TopicPartition]:
    """Every partition of ``topics``; ``LagError`` naming the topics that do not exist."""
    deadline = time.monotonic() + _RETRY_FOR_S
    while True:
        described = await admin.describe_topics(topics)
        missing = sorted(t["topic"] for t in described if t.get("error_code") == _UNKNOWN_TOPIC)
        if missing:
            raise LagError(f"no such topic: {', '.join(missing)}")
        pending = [t for t in described if t.get("error_code") or not t.get("partitions")]
        if not pending:
            return sorted(
                (
                    TopicPartition(t["topic"], p["partition"])
                    for t in described
                    for p in t["partitions"]
                ),
                key=lambda tp: (tp.topic, tp.partition),
            )
        if time.monotonic() > deadline:
            names = ", ".join(t["topic"] for t in pending)
            raise LagError(f"no partition metadata for {names}")
        await asyncio.sleep(0.2)


def lag_document(group_id: str, rows: Sequence[PartitionLag]) -> dict[str, Any]:
    """The JSON form of ``rows``: per-partition rows, totals per topic, and the grand total.

    Guarantees: ``total_lag == sum(topics.values()) == sum(p["lag"] for p in partitions)``.
    """
    per_topic = _totals(rows)
    return {
        "group": group_id,
        "partitions": [asdict(row) for row in rows],
        "topics": per_topic,
        "total_lag": sum(per_topic.values()),
    }


def _totals(rows: Iterable[PartitionLag]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for row in rows:
        totals[row.topic] = totals.get(row.topic, 0) + row.lag
    return totals


def render_lag_table(rows: Sequence[PartitionLag], group_id: str | None = None) -> str:
    """A plain-text table: one line per partition, a total line per topic, a grand total.

    Partitions without a committed offset show ``-`` as committed. An empty
    ``rows`` gives a one-line explanation instead of an empty table.
    """
    title = f"consumer group {group_id}" if group_id else "consumer group lag"
    if not rows:
        return f"{title}: no committed offsets (unknown group, or nothing consumed yet)"
    header = ("TOPIC", "PARTITION", "COMMITTED", "END", "LAG")
    lines: list[tuple[str, ...]] = []
    totals = _totals(rows)
    for index, row in enumerate(rows):
        committed = "-" if row.committed is None else str(row.committed)
        lines.append((row.topic, str(row.partition), committed, str(row.end_offset), str(row.lag)))
        last_of_topic = index + 1 == len(rows) or rows[index + 1].topic != row.topic
        if last_of_topic:
            lines.append(("", "total", "", "", str(totals[row.topic])))
    lines.append(("TOTAL", "", "", "", str(sum(totals.values()))))
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]

    def fmt(cells: tuple[str, ...]) -> str:
        # Topic left-aligned, numbers right-aligned, as a reader scans them.
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    return "\n".join([title, fmt(header), *(fmt(cells) for cells in lines)])


@click.command("lag")
@click.option(
    "--group",
    "group_id",
    default=None,
    help="Consumer group id (default: XSP_APP_ID, the worker's group).",
)
@click.option(
    "--topic",
    "topics",
    multiple=True,
    help="Only this topic (repeatable; default: every topic the group committed to).",
)
@click.option(
    "--bootstrap",
    default=None,
    help="Kafka bootstrap servers (default: XSP_BOOTSTRAP_SERVERS).",
)
@click.option("--watch", is_flag=True, help="Refresh until interrupted.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Seconds between refreshes with --watch (default 2).",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=None,
    help="With --watch: stop after this many refreshes.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON (with --watch: one object per line per refresh).",
)
def lag_command(
    group_id: str | None,
    topics: tuple[str, ...],
    bootstrap: str | None,
    watch: bool,
    interval: float | None,
    count: int | None,
    as_json: bool,
) -> None:
    """Show consumer-group lag per topic-partition (end offset - committed offset)."""
    if interval is not None and not watch:
        raise click.UsageError("--interval needs --watch")
    if count is not None and not watch:
        raise click.UsageError("--count needs --watch")
    if group_id is not None and not group_id.strip():
        raise click.UsageError("--group must not be empty")
    if any(not topic.strip() for topic in topics):
        raise click.UsageError("--topic must not be empty")
    if bootstrap is not None and not bootstrap.strip():
        raise click.UsageError("--bootstrap must not be empty")
    if group_id is None or bootstrap is None:
        try:
            settings = Settings.from_env()
        except SettingsError as exc:
            raise LagError(str(exc)) from None
        group_id = group_id or settings.app_id
        bootstrap = bootstrap or settings.bootstrap_servers
    wanted = list(topics) or None
    # aiokafka logs each failed connection attempt itself; the command reports
    # an unreachable broker as one line of its own (LagError) instead.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    if not watch:
        _show(asyncio.run(consumer_lag(bootstrap, group_id, wanted)), group_id, as_json, False)
        return
    try:
        asyncio.run(_watch(bootstrap, group_id, wanted, interval or 2.0, count, as_json))
    except KeyboardInterrupt:
        # Ctrl-C is how a watch ends; not an error.
        return


async def _watch(
    bootstrap: str,
    group_id: str,
    topics: list[str] | None,
    interval: float,
    count: int | None,
    as_json: bool,
) -> None:
    done = 0
    while count is None or done < count:
        rows = await consumer_lag(bootstrap, group_id, topics)
        _show(rows, group_id, as_json, clear=not as_json)
        done += 1
        if count is None or done < count:
            await asyncio.sleep(interval)


def _show(rows: list[PartitionLag], group_id: str, as_json: bool, clear: bool) -> None:
    if as_json:
        click.echo(json.dumps(lag_document(group_id, rows), sort_keys=True))
        return
    stdout = click.get_text_stream("stdout")
    if clear and stdout.isatty():
        click.clear()
    stamp = time.strftime("%H:%M:%S")
    click.echo(render_lag_table(rows, group_id) + (f"\n(at {stamp})" if clear else ""))
