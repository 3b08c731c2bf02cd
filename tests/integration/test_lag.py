"""Acceptance: a paused consumer group on a real broker shows lag N in `xsp lag` and in metrics.

The group is "paused" the way a stopped worker leaves it: it committed
offsets once and nobody consumes. Then N messages arrive; `consumer_lag`,
`xsp lag --json` and the Prometheus exposition must all say N (per partition
and in total), and 0 once a consumer caught up and committed.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from streams.kafka_io import create_topics
from streams.lag import PartitionLag, consumer_lag, lag_command
from streams.metrics import Metrics, exposition, refresh_lag, start_metrics_server

pytestmark = pytest.mark.kafka

PER_PARTITION = {0: 5, 1: 3, 2: 0}
N = sum(PER_PARTITION.values())


async def commit(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    """Commit ``offsets`` for ``group`` and leave, as a worker that stopped would."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


async def produce_to_partitions(bootstrap: str, topic: str, counts: dict[int, int]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for partition, count in counts.items():
            for i in range(count):
                await producer.send_and_wait(
                    topic, value=f"m{i}".encode(), key=b"k", partition=partition
                )
    finally:
        await producer.stop()


async def consume_all_and_commit(bootstrap: str, group: str, topic: str, expected: int) -> int:
    """Read from the committed offsets to the end and commit, like a worker catching up."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
    )
    await consumer.start()
    read = 0
    try:
        consumer.assign([TopicPartition(topic, p) for p in PER_PARTITION])
        deadline = time.monotonic() + 30
        while read < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            read += sum(len(records) for records in batch.values())
        await consumer.commit()
    finally:
        await consumer.stop()
    return read


def lag_in_exposition(body: bytes, group: str, topic: str) -> dict[int, float]:
    found: dict[int, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        if family.name != "xsp_consumer_lag":
            continue
        for s in family.samples:
            if s.labels["group"] == group and s.labels["topic"] == topic:
                found[int(s.labels["partition"])] = s.value
    return found


def run_lag_cli(bootstrap: str, *args: str) -> dict[str, object]:
    result = CliRunner().invoke(
        lag_command, ["--bootstrap", bootstrap, "--json", *args], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_paused_group_reports_lag_n_then_zero_in_lag_cli_and_metrics(
    kafka_bootstrap: str, unique: str
) -> None:
    topic = f"lag-{unique}"
    group = f"lag-group-{unique}"
    partitions = [TopicPartition(topic, p) for p in PER_PARTITION]
    asyncio.run(create_topics(kafka_bootstrap, [topic], partitions=len(PER_PARTITION)))
    asyncio.run(commit(kafka_bootstrap, group, {tp: 0 for tp in partitions}))

    # Before any message: the paused group is not behind.
    rows = asyncio.run(consumer_lag(kafka_bootstrap, group))
    assert [(r.topic, r.partition, r.committed, r.lag) for r in rows] == [
        (topic, p, 0, 0) for p in PER_PARTITION
    ]

    asyncio.run(produce_to_partitions(kafka_bootstrap, topic, PER_PARTITION))

    rows = asyncio.run(consumer_lag(kafka_bootstrap, group))
    assert rows == [PartitionLag(topic, p, n, 0, n) for p, n in PER_PARTITION.items()]
    assert sum(r.lag for r in rows) == N

    document = run_lag_cli(kafka_bootstrap, "--group", group)
    assert document["total_lag"] == N
    assert document["topics"] == {topic: N}
    assert {p["partition"]: p["lag"] for p in document["partitions"]} == PER_PARTITION

    metrics = Metrics()
    asyncio.run(refresh_lag(metrics, kafka_bootstrap, group))
    _, body = exposition(metrics)
    assert lag_in_exposition(body, group, topic) == PER_PARTITION
    # The same numbers over HTTP, as Prometheus scrapes them.
    server = start_metrics_server(metrics)
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            assert lag_in_exposition(response.read(), group, topic) == PER_PARTITION
    finally:
        server.close()

    read = asyncio.run(consume_all_and_commit(kafka_bootstrap, group, topic, N))
    assert read == N

    rows = asyncio.run(consumer_lag(kafka_bootstrap, group, [topic]))
    assert rows == [PartitionLag(topic, p, n, n, 0) for p, n in PER_PARTITION.items()]
    assert run_lag_cli(kafka_bootstrap, "--group", group, "--topic", topic)["total_lag"] == 0
    asyncio.run(refresh_lag(metrics, kafka_bootstrap, group))
    _, body = exposition(metrics)
    assert lag_in_exposition(body, group, topic) == dict.fromkeys(PER_PARTITION, 0)


async def delete_before(bootstrap: str, tp: TopicPartition, offset: int) -> None:
    """Advance the log start offset of ``tp`` to ``offset``, as retention would."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_records({tp: RecordsToDelete(before_offset=offset)})
    finally:
        await admin.close()


def test_partition_without_commit_counts_from_log_start_and_table_shows_dash(
    kafka_bootstrap: str, unique: str
) -> None:
    topic = f"lag-{unique}"
    group = f"lag-group-{unique}"
    asyncio.run(create_topics(kafka_bootstrap, [topic], partitions=2))
    asyncio.run(commit(kafka_bootstrap, group, {TopicPartition(topic, 0): 0}))
    asyncio.run(produce_to_partitions(kafka_bootstrap, topic, {0: 2, 1: 5}))
    # Retention removed partition 1's first record: the group would consume 4, not 5.
    asyncio.run(delete_before(kafka_bootstrap, TopicPartition(topic, 1), 1))

    rows = asyncio.run(consumer_lag(kafka_bootstrap, group))
    assert rows == [PartitionLag(topic, 0, 2, 0, 2), PartitionLag(topic, 1, 5, None, 4)]

    result = CliRunner().invoke(
        lag_command, ["--bootstrap", kafka_bootstrap, "--group", group], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"consumer group {group}"
    partition_1 = next(line for line in lines if line.startswith(topic) and line.split()[1] == "1")
    assert partition_1.split()[2:] == ["-", "5", "4"]
    assert lines[-1].split() == ["TOTAL", "6"]


def test_unknown_group_and_unknown_topic(kafka_bootstrap: str, unique: str) -> None:
    assert asyncio.run(consumer_lag(kafka_bootstrap, f"nobody-{unique}")) == []
    result = CliRunner().invoke(
        lag_command, ["--bootstrap", kafka_bootstrap, "--group", f"nobody-{unique}"]
    )
    assert result.exit_code == 0
    assert "no committed offsets" in result.output

    result = CliRunner().invoke(
        lag_command,
        ["--bootstrap", kafka_bootstrap, "--group", "g", "--topic", f"missing-{unique}"],
    )
    assert result.exit_code == 2
    assert f"no such topic: missing-{unique}" in result.output


def test_watch_json_prints_one_document_per_refresh_in_a_subprocess(
    kafka_bootstrap: str, unique: str
) -> None:
    """`--watch --json --count 2` in a real process; the group comes from XSP_APP_ID."""
    topic = f"lag-{unique}"
    group = f"xsp-test-{unique}"
    asyncio.run(create_topics(kafka_bootstrap, [topic], partitions=1))
    asyncio.run(commit(kafka_bootstrap, group, {TopicPartition(topic, 0): 0}))
    asyncio.run(produce_to_partitions(kafka_bootstrap, topic, {0: 3}))
    env = {
        **os.environ,
        "XSP_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "XSP_APP_ID": group,
    }
    code = "from streams.lag import lag_command; lag_command(prog_name='xsp lag')"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", code, "--watch", "--json", "--interval", "0.5", "--count", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    docs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(docs) == 2
    assert all(d["group"] == group and d["total_lag"] == 3 for d in docs)
    assert time.monotonic() - started >= 0.5  # it waited between the refreshes
