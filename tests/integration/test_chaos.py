"""Chaos: two workers, 20,000 requests, workers SIGKILLed and restarted during the run.

The money must stay exact anyway: spend equals the sum of filled prices and
never exceeds a budget, no user goes over a cap, every request gets a
decision and every copy of it is identical, and no reservation is left.
A third worker joining mid-run (a rebalance) must change nothing. Finally
every source partition's committed offset must reach the end the log had
when the last decision arrived: a hole left by faust-streaming#318 (messages
dropped, commits stuck for good) fails here unless the commit guard re-read
it (``streams/commit_watch.py``).
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import Counter
from typing import Any

import pytest

from streams.kafka_io import read_topic
from streams.lag import consumer_lag
from streams.records import AdRequest, DecisionStatus
from streams.replay import table_snapshot
from tests.conftest import Stack
from tests.integration.test_money import await_decisions, campaign, send_requests

REQUESTS = 20_000
USERS = 2_000
CAPS = {"chaos-a": 3, "chaos-b": 2}


def chaos_campaigns(stack: Stack) -> list[dict[str, Any]]:
    return [
        campaign(
            stack,
            "chaos-a",
            priority=10,
            price={"model": "cpi", "amount": "1", "currency": "USD"},
            budget={"total": "900", "timezone": "UTC"},
            caps=[{"limit": CAPS["chaos-a"], "window": "1h"}],
        ),
        campaign(
            stack,
            "chaos-b",
            priority=5,
            price={"model": "cpi", "amount": "0.5", "currency": "USD"},
            budget={"total": "1500", "timezone": "UTC"},
            caps=[{"limit": CAPS["chaos-b"], "window": "1h"}],
        ),
    ]


class Killer(threading.Thread):
    """SIGKILLs a random worker every ``every_s`` and starts a replacement, ``kills`` times.

    Like a process supervisor it also restarts a worker that exited on its own
    (``crashes``), so a crash inside Faust shows up in the count, not as a hang.
    """

    def __init__(self, stack: Stack, kills: int, every_s: float) -> None:
        super().__init__(daemon=True)
        self.stack, self.kills, self.every_s = stack, kills, every_s
        self.done = 0
        self.crashes = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        rng = random.Random(7)
        last_kill = time.monotonic()
        while not self.stop_event.wait(0.5):
            for worker in list(self.stack.workers):
                if not worker.alive:
                    self.crashes += 1
                    self.stack.restart(worker)
            if self.done < self.kills and time.monotonic() - last_kill >= self.every_s:
                victim = rng.choice(self.stack.workers)
                victim.kill()
                self.stack.restart(victim)
                self.done += 1
                last_kill = time.monotonic()


@pytest.mark.timeout(900)
# All three variants are plain tests. At-least-once passed every run since session
# 11's seek fix. Exactly-once failed 3 of 11 runs in session 13 (a request with two
# different decisions); its causes, a stray Resolution of an aborted reservation and
# a commit that fell between an event's outputs and its buffered table rows, are
# fixed (streams/commit_gate.py): 24 of 24 runs in session 14, 10 of 10 in session 15,
# 9 of 9 in session 16, 8 of 8 in session 17, 6 of 6 in session 18 (README "Known limits").
@pytest.mark.parametrize(
    ("store", "guarantee"),
    [
        ("memory://", "at_least_once"),
        ("rocksdb://", "at_least_once"),
        ("memory://", "exactly_once"),
    ],
)
def test_money_stays_exact_through_sigkills_and_a_rebalance(
    xsp_stack: Stack, store: str, guarantee: str
) -> None:
    stack = xsp_stack
    stack.settings = stack.settings.with_overrides(store=store, processing_guarantee=guarantee)
    stack.put_campaigns(chaos_campaigns(stack))
    stack.start_worker()
    stack.start_worker()
    now = int(time.time() * 1000)
    requests = [
        AdRequest(request_id=f"x-{i}", user_id=f"viewer-{i % USERS}", timestamp=now + i // 50)
        for i in range(REQUESTS)
    ]
    killer = Killer(stack, kills=5, every_s=6.0)
    killer.start()
    try:
        for chunk in range(0, REQUESTS, 1000):
            send_requests(stack, requests[chunk : chunk + 1000])
            time.sleep(1.2)
            if chunk == REQUESTS // 2:
                stack.start_worker()  # a third worker joins mid-run
        decisions = await_decisions(stack, {r.request_id for r in requests}, timeout_s=420)
    finally:
        # Stop the supervisor before the fixture stops the workers, or it restarts them.
        killer.stop_event.set()
        killer.join()
    assert killer.done >= 5, f"only {killer.done} kills happened"
    assert_commits_catch_up(stack)
    assert killer.crashes == 0, f"{killer.crashes} workers exited on their own"

    # Every copy of a decision is identical.
    for rid, copies in decisions.items():
        distinct = sorted({json.dumps(c.to_dict(), sort_keys=True) for c in copies})
        assert len(distinct) == 1, f"{rid} has {len(distinct)} different decisions:\n" + "\n".join(
            distinct
        )
    first = {rid: copies[0] for rid, copies in decisions.items()}
    counts = Counter(d.status.value for d in first.values())
    assert counts["filled"] > 1000, counts

    # No user above a cap (all traffic is inside one hour of event time).
    per_user = Counter(
        (d.user_id, d.campaign_id) for d in first.values() if d.status == DecisionStatus.FILLED
    )
    for (user, cid), n in per_user.items():
        assert n <= CAPS[str(cid)], f"{user} got {n} ads of {cid}"

    # Spend == sum of filled prices, within budget, and nothing left reserved.
    app_id = stack.settings.app_id
    deadline = time.monotonic() + 60
    while True:
        rows = asyncio.run(table_snapshot(stack.settings.bootstrap_servers, app_id, "budget"))
        states = {k.decode(): json.loads(v) for k, v in rows.items() if k.startswith(b"c:")}
        if all(not s["pending_count"] for s in states.values()) or time.monotonic() > deadline:
            break
        time.sleep(2)
    for cid, budget_micros in (("chaos-a", 900_000_000), ("chaos-b", 1_500_000_000)):
        row = states[f"c:{cid}"]
        state = row["state"]
        filled_spend = sum(
            d.spend_micros
            for d in first.values()
            if d.campaign_id == cid and d.status == DecisionStatus.FILLED
        )
        assert row["pending_count"] == 0 and row["reserved_total"] == 0, (
            f"{cid} still reserves: pending_count {row['pending_count']}, reserved_total "
            f"{row['reserved_total']}; {_negative_counts(stack)}"
        )
        assert state["spent_total"] == filled_spend, cid
        assert state["spent_total"] <= budget_micros, cid
    # Cap accounting is exact: admission counts a request as served and the
    # settle releases every one that was not filled, so each user's hourly
    # log holds exactly their fills (a lost release would leave one more).
    # The last releases may still be on their way to admit: wait for them.
    deadline = time.monotonic() + 60
    while True:
        pending, wrong = _cap_accounting(stack, per_user)
        if (not pending and not wrong) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not pending, f"{len(pending)} users still hold cap reservations"
    assert not wrong, f"{len(wrong)} (user, campaign) cap counts differ from their fills: " + str(
        dict(list(wrong.items())[:5])
    )
    dlq = asyncio.run(read_topic(stack.settings.bootstrap_servers, stack.names.dlq, timeout_s=5))
    assert not dlq, [m.value for m in dlq[:3]]


def _cap_accounting(
    stack: Stack, fills: Counter[tuple[str, str | None]]
) -> tuple[list[bytes], dict[tuple[str, str], tuple[int, int]]]:
    """Users still holding reservations, and (user, campaign) hourly counts that differ
    from that user's fills (counted, filled), from the frequency table's changelog."""
    app_id = stack.settings.app_id
    users = asyncio.run(table_snapshot(stack.settings.bootstrap_servers, app_id, "frequency"))
    rows = {k: json.loads(v) for k, v in users.items() if k.startswith(b"u:")}
    pending = [k for k, row in rows.items() if row["state"]["reservations"]]
    wrong = {}
    for key, row in rows.items():
        for cid in CAPS:
            counted = len(row["state"]["logs"].get(f"campaign:{cid}:r3600", []))
            filled = fills.get((key.decode()[2:], cid), 0)
            if counted != filled:
                wrong[(key.decode()[2:], cid)] = (counted, filled)
    return pending, wrong


def _negative_counts(stack: Stack) -> list[str]:
    """The workers' log lines saying a pending count went negative (the event that did it)."""
    lines = []
    for log_path in sorted(stack.workdir.glob("*.log")):
        text = log_path.read_text(errors="replace")
        lines += [f"{log_path.name}: {ln}" for ln in text.splitlines() if "went negative" in ln]
    return lines


def assert_commits_catch_up(stack: Stack, timeout_s: float = 90) -> None:
    """The app group's committed offsets reach the source topics' ends as of now.

    Ticks keep arriving, so the target is the end offsets read once, here.
    """
    app_id = stack.settings.app_id
    sources = [stack.names.ad_requests, stack.names.budget_requests]
    target = {
        (r.topic, r.partition): r.end_offset
        for r in asyncio.run(consumer_lag(stack.settings.bootstrap_servers, app_id, sources))
    }
    deadline = time.monotonic() + timeout_s
    while True:
        rows = asyncio.run(consumer_lag(stack.settings.bootstrap_servers, app_id, sources))
        behind = {
            (r.topic, r.partition): (r.committed, target[(r.topic, r.partition)])
            for r in rows
            if (r.committed or 0) < target[(r.topic, r.partition)]
        }
        if not behind or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not behind, f"committed offsets stuck below the log end: {behind}"
