"""The resolve stage through real Kafka: resolve requests in, Resolutions out, failures included.

Each campaign points at a different mock ad-server route; a real worker
resolves the chains and the Resolutions (recorded in ``budget-requests``)
and the resulting decisions carry the right status and IAB error code.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from streams.kafka_io import read_topic
from streams.records import (
    AdRequest,
    DecisionStatus,
    Resolution,
    request_id_in,
    resolutions_in,
    unbatched,
)
from tests.conftest import Stack
from tests.integration.test_money import _whereabouts, await_decisions, campaign, send_requests

ROUTES = {
    "chain-ok": ("/wrapper/2", DecisionStatus.FILLED, None),
    "chain-empty": ("/empty", DecisionStatus.NO_FILL, None),
    "chain-too-long": ("/wrapper/7", DecisionStatus.ERROR, 302),
    "chain-broken": ("/inline?status=500", DecisionStatus.ERROR, 301),
    "chain-not-xml": ("/inline?not_xml=1", DecisionStatus.ERROR, 100),
}


def test_resolutions_are_recorded_and_decide_each_request(xsp_stack: Stack) -> None:
    xsp_stack.put_campaigns(
        [
            campaign(xsp_stack, cid, vast_url=f"{xsp_stack.ad_server}{route}")
            for cid, (route, _, _) in ROUTES.items()
        ]
    )
    worker = xsp_stack.start_worker()
    now = int(time.time() * 1000)
    requests = [
        AdRequest(
            request_id=f"{cid}-{i}",
            user_id=f"user-{cid}-{i}",
            timestamp=now,
            params={"campaign_id": cid},
        )
        for cid in ROUTES
        for i in range(3)
    ]
    send_requests(xsp_stack, requests)
    decisions = await_decisions(xsp_stack, {r.request_id for r in requests}, timeout_s=90)
    for cid, (_, status, code) in ROUTES.items():
        for i in range(3):
            decision = decisions[f"{cid}-{i}"][0]
            assert decision.status == status, (cid, decision)
            assert decision.vast_error_code == code, (cid, decision)
            if status == DecisionStatus.FILLED:
                assert decision.ad is not None and decision.ad.vast_xml
                assert decision.hops == 3
                assert decision.spend_micros == 2_500_000
            else:
                assert decision.spend_micros == 0

    # Every outcome is recorded, so a replay never has to call the ad server again.
    log = asyncio.run(
        read_topic(xsp_stack.settings.bootstrap_servers, xsp_stack.names.budget_requests)
    )
    recorded = [
        Resolution.from_dict(item)
        for m in log
        if m.value
        for item in resolutions_in(json.loads(m.value))
    ]
    assert {r.request_id for r in recorded} == {r.request_id for r in requests}
    assert all(r.timings_ms.get("total", 0) > 0 for r in recorded)
    # What a test that misses decisions reports about where they got to.
    where = asyncio.run(_whereabouts(xsp_stack, {"chain-ok-0", "chain-ok-1", "never-sent"}))
    assert where == (
        "last seen: 2 at budget-requests:resolutions; 1 at never produced; "
        "no request waits for admit; commit guard fired 0 times"
    ), where

    # The worker's Prometheus endpoint counts the same outcomes.
    samples = scrape(f"{xsp_stack.worker_url(worker)}/metrics")
    assert samples[("xsp_decisions_total", (("status", "filled"),))] == 3
    assert samples[("xsp_vast_errors_total", (("code", "302"),))] == 3
    assert samples[("xsp_vast_errors_total", (("code", "100"),))] == 3
    assert samples[("xsp_spend_micros_total", (("campaign", "chain-ok"),))] == 7_500_000
    # Batch sizes: admit took every request (and its ticks); the budget agent's batch
    # messages held each request twice, once admitted and once resolved.
    assert samples[("xsp_batch_events_sum", (("stage", "admit"),))] >= len(requests)
    assert samples[("xsp_batch_events_sum", (("stage", "budget"),))] == 2 * len(requests)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # gauges follow on the budget agent's ticks
        samples = scrape(f"{xsp_stack.worker_url(worker)}/metrics")
        if samples.get(("xsp_budget_spent_micros", (("campaign", "chain-ok"),))) == 7_500_000:
            break
        time.sleep(0.5)
    assert samples[("xsp_budget_spent_micros", (("campaign", "chain-ok"),))] == 7_500_000
    assert samples[("xsp_reservations_open", (("table", "budget"),))] == 0


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition, keyed by name and sorted labels."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_slow_ad_server_delays_only_its_own_requests(xsp_stack: Stack) -> None:
    """Requests fetched while slow chains are in flight are resolved and sent at once.

    The stage once resolved each fetched batch together and fetched nothing
    more until all of it was sent: every request behind a slow ad server
    waited for it.
    """
    xsp_stack.put_campaigns(
        [
            campaign(xsp_stack, "slow", vast_url=f"{xsp_stack.ad_server}/inline?delay_ms=1000"),
            campaign(xsp_stack, "fast", vast_url=f"{xsp_stack.ad_server}/inline"),
        ]
    )
    xsp_stack.start_worker()
    now = int(time.time() * 1000)

    def requests(cid: str) -> list[AdRequest]:
        return [
            AdRequest(
                request_id=f"{cid}-{i}",
                user_id=f"user-{cid}-{i}",
                timestamp=now,
                params={"campaign_id": cid},
            )
            for i in range(3)
        ]

    # Warm up: the worker is answering before the slow requests go out.
    warm = AdRequest(
        request_id="warm", user_id="user-warm", timestamp=now, params={"campaign_id": "fast"}
    )
    send_requests(xsp_stack, [warm])
    await_decisions(xsp_stack, {"warm"}, timeout_s=90)
    send_requests(xsp_stack, requests("slow"))
    time.sleep(0.5)  # the slow chains are in flight now
    send_requests(xsp_stack, requests("fast"))
    ids = {r.request_id for r in requests("slow") + requests("fast")}
    decisions = await_decisions(xsp_stack, ids, timeout_s=90)
    assert all(decisions[rid][0].status == DecisionStatus.FILLED for rid in ids), decisions

    log = asyncio.run(
        read_topic(xsp_stack.settings.bootstrap_servers, xsp_stack.names.budget_requests)
    )
    recorded_at = {
        item["request_id"]: m.timestamp
        for m in log
        if m.value
        for item in resolutions_in(json.loads(m.value))
    }
    first_slow = min(recorded_at[f"slow-{i}"] for i in range(3))
    last_fast = max(recorded_at[f"fast-{i}"] for i in range(3))
    assert last_fast < first_slow, (recorded_at, "fast chains waited for the slow ones")


@pytest.mark.parametrize(
    ("end", "status"), [("kill", DecisionStatus.TIMEOUT), ("stop", DecisionStatus.FILLED)]
)
def test_what_a_worker_was_resolving_when_it_ended(
    xsp_stack: Stack, end: str, status: DecisionStatus
) -> None:
    """The resolve stage keeps its queue in memory.

    A SIGKILL loses what it was resolving, and money and caps must not notice:
    the next owner finds the reservations pending, expires them, and each
    request gets a ``timeout`` decision with nothing spent and nothing left
    reserved (agents/resolve.py says why this trade is right). A stop
    (SIGTERM) lets the chains finish: their Resolutions fill the requests.
    """
    worker, ids = _slow_chains_in_flight(xsp_stack)
    getattr(worker, end)()
    xsp_stack.restart(worker)

    decisions = await_decisions(xsp_stack, ids, timeout_s=90)
    for rid in ids:
        assert [d.status for d in decisions[rid]] == [status], decisions[rid]
    filled = status == DecisionStatus.FILLED
    resolved = ids & _resolved_ids(xsp_stack)
    assert resolved == (ids if filled else set()), resolved
    budget = _get_json(f"{xsp_stack.worker_url(xsp_stack.workers[0])}/xsp/v1/budget/slow")
    assert budget["reserved_micros"] == 0, budget
    assert budget["spent_micros"] == (3 * 2_500_000 if filled else 0), budget


def _slow_chains_in_flight(stack: Stack) -> tuple[Any, set[str]]:
    """A worker resolving three 1.4-second chains, its offsets committed past their Admitted.

    Offsets are committed every 200 ms, so the worker that comes next does
    not redo the Admitted messages: what happens to the chains is up to the
    resolve stage of the worker that holds them.
    """
    worker, ids = _slow_requests(stack, "slow", 3, commit_interval_ms=200)
    deadline = time.monotonic() + 30
    while not ids <= set(admitted := _admitted_at(stack)):
        assert time.monotonic() < deadline, "the budget agent never saw the requests"
        time.sleep(0.1)
    # Halfway through the chains (timed from the Admitted messages, not from
    # this loop, which reads the whole topic): offsets committed (every 200 ms),
    # Resolutions not yet sent. The commit is waited for, not assumed: a test run
    # that stopped the worker before it had committed the Admitted messages saw
    # the next worker resolve a request again (an identical second decision).
    last_admitted_s = max(admitted[rid][2] for rid in ids) / 1000
    needed = {(p, o + 1) for rid, (p, o, _) in admitted.items() if rid in ids}
    while not asyncio.run(_committed_past(stack, needed)):
        assert time.time() < last_admitted_s + 1.1, "Admitted offsets not committed mid-chain"
        time.sleep(0.05)
    time.sleep(max(0.0, last_admitted_s + 0.7 - time.time()))
    return worker, ids


def _slow_requests(
    stack: Stack, name: str, count: int, **worker_settings: Any
) -> tuple[Any, set[str]]:
    """A warmed-up worker, then ``count`` requests for campaign ``name``, whose ads take 1.4 s."""
    # Below the fetcher's 1.5 s per-hop timeout: the chains end in a fill.
    slow = campaign(stack, name, vast_url=f"{stack.ad_server}/inline?delay_ms=1400")
    stack.put_campaigns([slow, campaign(stack, "fast")])
    worker = stack.start_worker(**worker_settings)
    now = int(time.time() * 1000)
    warm = AdRequest(
        request_id="warm", user_id="user-warm", timestamp=now, params={"campaign_id": "fast"}
    )
    send_requests(stack, [warm])
    await_decisions(stack, {"warm"}, timeout_s=90)
    requests = [
        AdRequest(
            request_id=f"{name}-{i}",
            user_id=f"user-{name}-{i}",
            timestamp=now,
            params={"campaign_id": name},
        )
        for i in range(count)
    ]
    send_requests(stack, requests)
    return worker, {r.request_id for r in requests}


def _resolved_ids(stack: Stack) -> set[str]:
    log = asyncio.run(read_topic(stack.settings.bootstrap_servers, stack.names.budget_requests))
    return {
        item["request_id"] for m in log if m.value for item in resolutions_in(json.loads(m.value))
    }


def _admitted_at(stack: Stack) -> dict[str | None, tuple[int, int, int]]:
    """Request id -> (partition, offset, broker timestamp in ms) of the message admitting it."""
    log = asyncio.run(read_topic(stack.settings.bootstrap_servers, stack.names.budget_requests))
    return {
        request_id_in(item): (m.partition, m.offset, m.timestamp)
        for m in log
        if m.value
        for kind, item in unbatched(json.loads(m.value))
        if kind == "admitted"
    }


async def _committed_past(stack: Stack, needed: set[tuple[int, int]]) -> bool:
    """Whether the workers' group has committed each (partition, offset) of budget-requests."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=stack.settings.bootstrap_servers,
        group_id=stack.settings.app_id,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        for partition, offset in needed:
            tp = TopicPartition(stack.names.budget_requests, partition)
            committed = await consumer.committed(tp)
            if committed is None or committed < offset:
                return False
        return True
    finally:
        await consumer.stop()


def _get_json(url: str) -> dict[str, object]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_a_request_that_queued_past_the_ttl_is_not_resolved(xsp_stack: Stack) -> None:
    """Overload: one resolver, 1.4-second chains, five requests at once, a 2 s TTL.

    The first two start within the TTL; the others would start after it, when
    the budget agent is expiring their reservations anyway, so the stage drops
    them instead of asking the ad server for ads nobody waits for. Each request
    still gets exactly one decision and the money ends exact.
    """
    worker, ids = _slow_requests(
        xsp_stack, "crowded", 5, resolve_concurrency=1, vast_timeout_s=1.5, reservation_ttl_ms=2000
    )

    decisions = await_decisions(xsp_stack, ids, timeout_s=90)
    for rid in ids:
        assert all(d == decisions[rid][0] for d in decisions[rid]), decisions[rid]
    deadline = time.monotonic() + 30
    while True:  # until the stage has dealt with every request it was given
        samples = scrape(f"{xsp_stack.worker_url(worker)}/metrics")
        states = [("xsp_resolve_queue", (("state", s),)) for s in ("waiting", "resolving")]
        if all(samples.get(state) == 0 for state in states):
            break
        assert time.monotonic() < deadline, samples
        time.sleep(0.2)
    resolved = ids & _resolved_ids(xsp_stack)
    # Without the drop the one resolver works through all five (7 s of chains).
    assert 1 <= len(resolved) <= 2, resolved
    for rid in ids - resolved:
        assert decisions[rid][0].status == DecisionStatus.TIMEOUT, decisions[rid]
    filled = [rid for rid in ids if decisions[rid][0].status == DecisionStatus.FILLED]
    assert set(filled) <= resolved
    url = f"{xsp_stack.worker_url(worker)}/xsp/v1/budget/crowded"
    deadline = time.monotonic() + 30
    while (budget := _get_json(url))["reserved_micros"] != 0:
        assert time.monotonic() < deadline, budget
        time.sleep(0.5)
    assert budget["spent_micros"] == 2_500_000 * len(filled), budget
    assert samples[("xsp_resolve_skipped_total", (("reason", "stale"),))] == 5 - len(resolved)
