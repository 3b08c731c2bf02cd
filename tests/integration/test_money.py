"""The money core on a real broker with real `xsp worker` processes: caps, budgets, replay."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from streams.faust_router import partition_of
from streams.kafka_io import produce, read_topic
from streams.lag import consumer_lag
from streams.records import (
    AdmittedBatch,
    AdRequest,
    Decision,
    DecisionStatus,
    decode,
    encode,
    kind_of,
    parse,
    request_id_in,
    unbatched,
)
from streams.replay import changelog_topic
from tests.conftest import Stack

HOUR_MS = 3_600_000


def day_start_ms() -> int:
    """00:01 UTC of a day that is at least 12 h in the past (event time, not wall clock)."""
    day = (datetime.now(UTC) - timedelta(hours=12)).date()
    return int(datetime(day.year, day.month, day.day, 0, 1, tzinfo=UTC).timestamp() * 1000)


def campaign(stack: Stack, cid: str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "campaign_id": cid,
        "advertiser_id": "adv",
        "price": {"model": "cpi", "amount": "2.5", "currency": "USD"},
        "budget": {"total": "1000000", "timezone": "UTC"},
        "caps": [],
        "vast_url": f"{stack.ad_server}/inline",
    }
    config.update(overrides)
    return config


def send_requests(stack: Stack, requests: list[AdRequest]) -> None:
    items = [(r.user_id.encode(), encode(r)) for r in requests]
    asyncio.run(produce(stack.settings.bootstrap_servers, stack.names.ad_requests, items))


def admitted_batch_partitions(stack: Stack) -> list[set[int]]:
    """For each ``AdmittedBatch`` in ``budget-requests``: the ``ad-requests`` partitions
    its requests came from (a request's key there is its user id)."""
    messages = asyncio.run(
        read_topic(stack.settings.bootstrap_servers, stack.names.budget_requests, timeout_s=30)
    )
    partitions = stack.settings.partitions
    batches = [
        AdmittedBatch.from_dict(obj)
        for obj in (parse(m.value) for m in messages if m.value)
        if kind_of(obj) == "admitted_batch"
    ]
    return [
        {partition_of(a.request.user_id.encode(), partitions) for a in batch.items}
        for batch in batches
    ]


def await_decisions(
    stack: Stack, request_ids: set[str], timeout_s: float = 120
) -> dict[str, list[Decision]]:
    """Every decision for ``request_ids`` (all copies), once each id has at least one.

    One consumer follows the topic (re-reading it whole each time would take
    the CPU the worker needs).
    """
    return asyncio.run(_follow_decisions(stack, request_ids, timeout_s))


async def _follow_decisions(
    stack: Stack, request_ids: set[str], timeout_s: float
) -> dict[str, list[Decision]]:
    consumer = AIOKafkaConsumer(
        stack.names.ad_responses,
        bootstrap_servers=stack.settings.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
        # Exactly-once workers write decisions in transactions; aborted ones never count.
        isolation_level="read_committed",
    )
    await consumer.start()
    found: dict[str, list[Decision]] = {}
    missing = set(request_ids)
    deadline = time.monotonic() + timeout_s
    try:
        while missing and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batch.values():
                for record in records:
                    rid = (record.key or b"").decode()
                    if rid in request_ids:
                        found.setdefault(rid, []).append(decode(Decision, record.value or b""))
                        missing.discard(rid)
        # Duplicates (at-least-once) that are already in the topic.
        extra = await consumer.getmany(timeout_ms=1000, max_records=5000)
        for records in extra.values():
            for record in records:
                rid = (record.key or b"").decode()
                if rid in request_ids:
                    found.setdefault(rid, []).append(decode(Decision, record.value or b""))
    finally:
        await consumer.stop()
    if missing:
        logs = "\n".join(w.log_tail(20) for w in stack.workers)
        raise AssertionError(
            f"{len(missing)} of {len(request_ids)} requests got no decision; "
            f"{await _whereabouts(stack, missing)}\n{logs}"
        )
    return found


async def _whereabouts(stack: Stack, missing: set[str]) -> str:
    """How far the undecided requests got: the furthest topology message seen for each, counted."""
    bootstrap = stack.settings.bootstrap_servers
    names = stack.names
    # Pipeline order of the message kinds (a dead letter ends a request's way).
    rank = {
        "ad_request": 0,
        "admitted": 1,
        "admitted_batch": 1,
        "resolution": 2,
        "resolutions": 2,
        "expire": 2,
    }
    last_seen: dict[str, tuple[int, str]] = {}
    # Where each missing request sits in ad-requests: told against the group's
    # commit, it says whether admit lost it (committed past it) or stalls on it.
    placed: dict[str, tuple[int, int]] = {}
    for topic in (names.ad_requests, names.budget_requests, names.dlq):
        for message in await read_topic(bootstrap, topic, timeout_s=20):
            try:
                obj = json.loads(message.value or b"")
            except ValueError:
                continue
            if not isinstance(obj, dict):
                continue
            if topic == names.ad_requests and obj.get("kind", "ad_request") == "ad_request":
                rid = request_id_in(obj)
                if rid in missing:
                    placed.setdefault(rid, (message.partition, message.offset))
            if topic == names.dlq:
                try:
                    inner = json.loads(base64.b64decode(obj.get("original_b64", "")))
                except ValueError:
                    continue
                rids = [request_id_in(inner)]
                stage = f"dead-lettered by {obj.get('stage')}: {obj.get('reason', '')[:80]}"
                step = 9
            else:
                short = topic.removeprefix(stack.settings.topic_prefix)
                kind = obj.get("kind", "ad_request")
                stage = f"{short}:{kind}"
                step = rank.get(kind, 4)
                # A batch message (Admitted, Resolutions) carries many requests.
                rids = [request_id_in(item) for _, item in unbatched(obj)]
            for rid in rids:
                if rid in missing and step >= last_seen.get(rid, (-1, ""))[0]:
                    last_seen[rid] = (step, stage)
    counted = Counter(last_seen.get(rid, (0, "never produced"))[1] for rid in missing)
    # Only requests that admit never answered say something about admit's commits.
    placed = {rid: at for rid, at in placed.items() if last_seen.get(rid, (0, ""))[0] == 0}
    where = "last seen: " + "; ".join(f"{n} at {stage}" for stage, n in counted.most_common())
    return f"{where}; {await _admit_commits(stack, placed)}; {_guard_log(stack)}"


async def _admit_commits(stack: Stack, placed: dict[str, tuple[int, int]]) -> str:
    """Per ad-requests partition holding requests admit never answered: their offsets
    beside the app group's committed offset and the log end (committed above an offset =
    admit lost it; at or below it = admit has not got there, or stalls on a hole)."""
    if not placed:
        return "no request waits for admit"
    rows = await consumer_lag(
        stack.settings.bootstrap_servers, stack.settings.app_id, [stack.names.ad_requests]
    )
    commits = {r.partition: (r.committed, r.end_offset) for r in rows}
    by_partition: dict[int, list[int]] = {}
    for partition, offset in placed.values():
        by_partition.setdefault(partition, []).append(offset)
    parts = []
    for partition, offsets in sorted(by_partition.items()):
        committed, end = commits.get(partition, (None, None))
        parts.append(
            f"p{partition}: offsets {sorted(offsets)[:5]}{'...' if len(offsets) > 5 else ''} "
            f"committed {committed} end {end}"
        )
    return "ad-requests " + ", ".join(parts)


def _guard_log(stack: Stack) -> str:
    """The commit guard's repairs in the workers' logs (faust-streaming#318 holes)."""
    lines = [
        line
        for path in sorted(stack.workdir.glob("*.log"))
        for line in path.read_text(errors="replace").splitlines()
        if "asking for a rebalance" in line
    ]
    shown = " | ".join(line[:160] for line in lines[-5:])
    return f"commit guard fired {len(lines)} times" + (f": {shown}" if shown else "")


def statuses(decisions: dict[str, list[Decision]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for copies in decisions.values():
        status = copies[0].status.value
        counts[status] = counts.get(status, 0) + 1
    return counts


def test_burst_for_one_user_respects_hourly_and_daily_caps(xsp_stack: Stack) -> None:
    """2,000 requests at once for one user, caps 5/hour and 20/day: exactly 5 per hour, 20 a day."""
    xsp_stack.put_campaigns(
        [
            campaign(
                xsp_stack,
                "burst",
                caps=[
                    {"limit": 5, "window": "1h"},
                    {"limit": 20, "window": "1d", "kind": "calendar"},
                ],
            )
        ]
    )
    xsp_stack.start_worker()
    t0 = day_start_ms()
    filled_per_hour = []
    for hour, count in enumerate([2000, 200, 200, 200, 200]):
        batch = [
            AdRequest(
                request_id=f"h{hour}-{i}", user_id="burst-user", timestamp=t0 + hour * HOUR_MS + i
            )
            for i in range(count)
        ]
        send_requests(xsp_stack, batch)
        decisions = await_decisions(xsp_stack, {r.request_id for r in batch})
        for copies in decisions.values():
            assert all(c == copies[0] for c in copies), "decisions for one request differ"
        counts = statuses(decisions)
        filled_per_hour.append(counts.get("filled", 0))
        assert counts.get("filled", 0) + counts.get("capped", 0) == count, counts
    assert filled_per_hour == [5, 5, 5, 5, 0]
    assert sum(filled_per_hour) == 20


def test_budget_is_never_overspent_even_transiently(xsp_stack: Stack) -> None:
    """Budget 100 at 2.5 per ad, 10,000 requests from 1,000 users: 40 fills, spend exactly 100."""
    xsp_stack.put_campaigns(
        [campaign(xsp_stack, "tight", budget={"total": "100", "timezone": "UTC"})]
    )
    worker = xsp_stack.start_worker()
    now = int(time.time() * 1000)
    requests = [
        AdRequest(request_id=f"b-{i}", user_id=f"user-{i % 1000}", timestamp=now + i % 1000)
        for i in range(10_000)
    ]
    send_requests(xsp_stack, requests)
    decisions = await_decisions(xsp_stack, {r.request_id for r in requests}, timeout_s=240)
    first = {rid: copies[0] for rid, copies in decisions.items()}
    filled = [d for d in first.values() if d.status == DecisionStatus.FILLED]
    assert len(filled) == 40, statuses(decisions)
    assert sum(d.spend_micros for d in filled) == 100_000_000
    assert all(
        len({json.dumps(c.to_dict(), sort_keys=True) for c in copies}) == 1
        for copies in decisions.values()
    )
    # Every state the budget row ever had, from its changelog: spent + in flight <= budget.
    history = asyncio.run(
        read_topic(
            xsp_stack.settings.bootstrap_servers,
            changelog_topic(worker.settings.app_id, "budget"),
            timeout_s=30,
        )
    )
    rows = [json.loads(m.value) for m in history if m.key == b"c:tight" and m.value]
    assert rows, "no budget row in the changelog"
    peak = 0
    for row in rows:
        spent, in_flight = row["state"]["spent_total"], row["reserved_total"]
        peak = max(peak, spent + in_flight)
        assert spent + in_flight <= 100_000_000
    assert rows[-1]["state"]["spent_total"] == 100_000_000
    assert peak == 100_000_000
    # Under at-least-once one envelope carries a batch's requests of all partitions.
    spans = admitted_batch_partitions(xsp_stack)
    assert max(len(span) for span in spans) > 1, "every AdmittedBatch held one partition"


def test_replay_rebuilds_byte_identical_tables(xsp_stack: Stack, tmp_path: Path) -> None:
    """After mixed traffic, `xsp replay` under a new app id yields the same tables."""
    xsp_stack.put_campaigns(
        [
            campaign(
                xsp_stack,
                "replay-a",
                priority=5,
                caps=[{"limit": 2, "window": "1h"}],
                budget={"total": "20", "timezone": "UTC"},
            ),
            campaign(xsp_stack, "replay-b", priority=1, vast_url=f"{xsp_stack.ad_server}/empty"),
        ]
    )
    worker = xsp_stack.start_worker()
    now = int(time.time() * 1000)
    requests = [
        AdRequest(request_id=f"r-{i}", user_id=f"u-{i % 30}", timestamp=now + i) for i in range(300)
    ]
    send_requests(xsp_stack, requests)
    decisions = await_decisions(xsp_stack, {r.request_id for r in requests})
    assert {"filled", "no_fill"} <= set(statuses(decisions))
    time.sleep(3)  # let the last cap settles reach the users' rows
    worker.stop()

    env = {**xsp_stack.settings.to_env(), "XSP_APP_ID": worker.settings.app_id}
    result = subprocess.run(
        [sys.executable, "-m", "streams", "replay", "--json", "--timeout", "120"],
        capture_output=True,
        text=True,
        timeout=240,
        env={**__import__("os").environ, **env},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["caught_up"] is True
    assert report["identical"] is True, report
    assert report["tables"]["frequency"]["live_keys"] > 30
    assert report["tables"]["budget"]["live_keys"] > 2
