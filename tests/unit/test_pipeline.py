"""The decision pipeline's handlers over an in-memory row store (no broker).

These drive the same functions the agents call, message by message, so the
money rules are checked in microseconds; tests/integration runs them inside
real workers on a real broker.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agents.wiring import owned_by
from streams.campaign import parse_campaign
from streams.campaign_directory import DirectoryView
from streams.faust_router import partition_of
from streams.pending import PendingIndex
from streams.pipeline import (
    DeadLetterError,
    DeferredRowStore,
    Output,
    PipelineConfig,
    budget_snapshot,
    frequency_snapshot,
    handle_ad_request,
    handle_admitted,
    handle_expire,
    handle_frequency_settle,
    handle_resolution,
    handle_spend,
    pack_admissions,
    pending_reservations,
    plan_expiry,
    prune_records,
    row_owner,
)
from streams.records import (
    Admitted,
    AdmittedBatch,
    AdPayload,
    AdRequest,
    Decision,
    DecisionStatus,
    ExpireCommand,
    FrequencySettle,
    Resolution,
    ResolveRequest,
    SpendEvent,
    Tick,
    decode,
    encode,
)

T0 = 1_764_000_000_000
CONFIG = PipelineConfig(budget_ttl_ms=5_000, frequency_ttl_ms=15_000)


class DictStore:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.writes = 0

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def put(self, key: str, value: bytes) -> None:
        self.writes += 1
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)

    def scan(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        yield from [(k, v) for k, v in self.data.items() if k.startswith(prefix)]


def campaign(cid: str = "c1", **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "campaign_id": cid,
        "advertiser_id": "adv",
        "price": {"model": "cpi", "amount": "2.5", "currency": "USD"},
        "budget": {"total": "100", "timezone": "UTC"},
        "caps": [],
        "vast_url": "http://127.0.0.1:9/inline",
    }
    config.update(overrides)
    return config


def directory(*configs: dict[str, Any]) -> DirectoryView:
    view = DirectoryView()
    for config in configs:
        view.campaigns[config["campaign_id"]] = parse_campaign(config)
    return view


class Pipeline:
    """Routes outputs between handlers like the topics would, recording decisions."""

    def __init__(self, view: DirectoryView) -> None:
        self.view = view
        self.users = DictStore()
        self.campaigns = DictStore()
        self.decisions: list[Decision] = []
        self.resolve_queue: list[ResolveRequest] = []
        self.statuses: list[dict[str, Any]] = []

    def route(self, outputs: list[Output]) -> None:
        for out in outputs:
            if out.route == "decision":
                self.decisions.append(decode(Decision, out.value))
            elif out.route == "budget":
                admitted = decode(Admitted, out.value)
                wall = admitted.request.timestamp
                self.route(
                    handle_admitted(self.campaigns, admitted, self.view, CONFIG, wall_ms=wall)
                )
            elif out.route == "resolve":
                self.resolve_queue.append(decode(ResolveRequest, out.value))
            elif out.route == "frequency":
                settle = decode(FrequencySettle, out.value)
                self.route(handle_frequency_settle(self.users, settle, CONFIG))
            elif out.route == "broadcast":
                pass  # admit's in-log copy of the status below
            elif out.route == "status":
                status = json.loads(out.value)
                self.statuses.append(status)
                if status["exhausted"]:
                    self.view.exhausted[status["campaign_id"]] = status["reason"]
                else:
                    self.view.exhausted.pop(status["campaign_id"], None)

    def request(self, rid: str, user: str = "u1", ts: int = T0, **params: Any) -> None:
        req = AdRequest(request_id=rid, user_id=user, timestamp=ts, params=params)
        self.route(handle_ad_request(self.users, req, self.view, CONFIG))

    def resolve_all(
        self, status: DecisionStatus = DecisionStatus.FILLED, delay_ms: int = 50
    ) -> None:
        queue, self.resolve_queue = self.resolve_queue, []
        for item in queue:
            self.route(
                handle_resolution(
                    self.campaigns,
                    resolution(item, status, delay_ms),
                    self.view,
                    CONFIG,
                    wall_ms=item.request.timestamp + delay_ms,
                )
            )


def resolution(item: ResolveRequest, status: DecisionStatus, delay_ms: int = 50) -> Resolution:
    ad = AdPayload(ad_id="ad-1", vast_xml="<VAST/>") if status == DecisionStatus.FILLED else None
    return Resolution(
        request_id=item.request.request_id,
        status=status,
        campaign_id=item.campaign_id,
        ad=ad,
        resolved_at=item.request.timestamp + delay_ms,
        user_id=item.request.user_id,
        reply_to=item.request.reply_to,
        request_timestamp=item.request.timestamp,
    )


def by_status(decisions: list[Decision]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for d in decisions:
        counts[d.status.value] = counts.get(d.status.value, 0) + 1
    return counts


def test_a_request_flows_to_a_filled_decision_and_is_charged() -> None:
    p = Pipeline(directory(campaign()))
    p.request("r1")
    assert len(p.resolve_queue) == 1 and p.resolve_queue[0].max_price_micros == 2_500_000
    p.resolve_all()
    [decision] = p.decisions
    assert decision.status == DecisionStatus.FILLED
    assert decision.spend_micros == 2_500_000
    assert decision.ad is not None and decision.ad.vast_xml == "<VAST/>"
    snapshot = budget_snapshot(p.campaigns, p.view.campaigns["c1"], T0 + 100)
    assert snapshot["spent_micros"] == 2_500_000
    assert snapshot["reserved_micros"] == 0
    assert frequency_snapshot(p.users, "u1", T0 + 100)["served_last_hour"] == 1


def test_caps_5_per_hour_under_a_burst_then_5_more_an_hour_later() -> None:
    p = Pipeline(
        directory(campaign(caps=[{"limit": 5, "window": "1h"}, {"limit": 20, "window": "1d"}]))
    )
    for i in range(200):
        p.request(f"a{i}", ts=T0 + i)  # all in flight before any settles
    assert len(p.resolve_queue) == 5
    p.resolve_all()
    assert by_status(p.decisions) == {"capped": 195, "filled": 5}
    capped = next(d for d in p.decisions if d.status == DecisionStatus.CAPPED)
    assert "3600" in capped.reason or "1h" in capped.reason
    for i in range(50):
        p.request(f"b{i}", ts=T0 + 3_600_001 + i)
    p.resolve_all()
    assert by_status(p.decisions)["filled"] == 10


def test_budget_never_overspends_under_concurrency() -> None:
    p = Pipeline(directory(campaign(budget={"total": "100", "timezone": "UTC"})))
    for i in range(1000):
        p.request(f"r{i}", user=f"user{i % 100}", ts=T0 + i)
    assert len(p.resolve_queue) == 40  # 40 x 2.5 = 100 reserved, the rest exhausted
    p.resolve_all()
    counts = by_status(p.decisions)
    assert counts["filled"] == 40
    assert sum(d.spend_micros for d in p.decisions) == 100_000_000
    assert (
        budget_snapshot(p.campaigns, p.view.campaigns["c1"], T0 + 5000)["spent_micros"]
        == 100_000_000
    )
    assert p.statuses and p.statuses[0]["exhausted"] is True


def test_no_fill_releases_budget_and_cap_slot() -> None:
    p = Pipeline(
        directory(
            campaign(
                caps=[{"limit": 1, "window": "1h"}], budget={"total": "2.5", "timezone": "UTC"}
            )
        )
    )
    p.request("r1")
    p.resolve_all(DecisionStatus.NO_FILL)
    p.request("r2", ts=T0 + 10)
    p.resolve_all()
    assert [d.status for d in p.decisions] == [DecisionStatus.NO_FILL, DecisionStatus.FILLED]
    assert sum(d.spend_micros for d in p.decisions) == 2_500_000


def expire_stuck(p: Pipeline, since: PendingIndex, now_wall: int) -> None:
    """What the budget agent does on a tick: plan ExpireCommands, then apply them from the log."""
    for out in plan_expiry(p.campaigns, ["c1"], since, now_wall, CONFIG):
        p.route(handle_expire(p.campaigns, decode(ExpireCommand, out.value), CONFIG))


def test_expired_reservation_times_out_and_a_late_fill_is_not_charged() -> None:
    p = Pipeline(directory(campaign(budget={"total": "2.5", "timezone": "UTC"})))
    p.request("r1")
    pending = list(p.resolve_queue)
    since = PendingIndex()
    expire_stuck(p, since, T0)  # first sight: the clock starts
    expire_stuck(p, since, T0 + 4_000)
    assert p.decisions == []
    expire_stuck(p, since, T0 + 5_000)
    assert [d.status for d in p.decisions] == [DecisionStatus.TIMEOUT]
    expire_stuck(p, since, T0 + 9_000)  # one command per reservation
    assert len(p.decisions) == 1
    # The resolver was slow, not dead: its fill arrives after expiry.
    p.route(
        handle_resolution(
            p.campaigns,
            resolution(pending[0], DecisionStatus.FILLED, 7_000),
            p.view,
            CONFIG,
            wall_ms=T0 + 7_000,
        )
    )
    assert [d.status for d in p.decisions] == [DecisionStatus.TIMEOUT, DecisionStatus.TIMEOUT]
    assert p.decisions[0].to_dict() == p.decisions[1].to_dict()
    assert budget_snapshot(p.campaigns, p.view.campaigns["c1"], T0 + 8_000)["spent_micros"] == 0
    # The budget and the cap slot are free again.
    p.request("r2", ts=T0 + 9_000)
    p.resolve_all()
    assert p.decisions[-1].status == DecisionStatus.FILLED


def test_ticks_of_other_partitions_do_not_restart_the_expiry_clock() -> None:
    """One budget agent handles the ticks of all its partitions with one clock map.

    A tick of another partition covers other campaigns; it used to forget
    every reservation it did not see, so the clock restarted on each of
    them and nothing expired on a worker with more than one partition.
    """
    p = Pipeline(directory(campaign()))
    p.request("r1")
    since = PendingIndex()
    commands = []
    for now in range(T0, T0 + 6_000, 500):
        assert plan_expiry(p.campaigns, ["c-elsewhere"], since, now, CONFIG) == []
        commands += plan_expiry(p.campaigns, ["c1"], since, now + 250, CONFIG)
    assert [decode(ExpireCommand, c.value).request_id for c in commands] == ["r1"]


class ScanCountingStore(DictStore):
    """A DictStore that counts prefix scans (listings of a campaign's entries)."""

    def __init__(self) -> None:
        super().__init__()
        self.scans = 0

    def scan(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        self.scans += 1
        return super().scan(prefix)


def commanded(outputs: list[Output]) -> list[str]:
    return [decode(ExpireCommand, out.value).request_id for out in outputs]


def test_a_tick_lists_a_campaign_only_when_its_index_cannot_be_trusted() -> None:
    """Listing reads every request of the last hour; a tick must not do it each second."""
    p = Pipeline(directory(campaign()))
    p.campaigns = ScanCountingStore()
    for i in range(4):
        p.request(f"r{i}", user=f"u{i}")
    p.resolve_queue = p.resolve_queue[:3]
    p.resolve_all()  # r0-r2 settled: their entries stay for the dedupe horizon
    index = PendingIndex(rescan_ms=60_000)
    assert plan_expiry(p.campaigns, ["c1"], index, T0, CONFIG) == []
    assert p.campaigns.scans == 1  # never listed: list
    for now in range(T0 + 1_000, T0 + 5_000, 1_000):
        assert plan_expiry(p.campaigns, ["c1"], index, now, CONFIG) == []
    assert p.campaigns.scans == 1  # the index holds r3, the row counts one
    p.request("r4", user="u4")  # reserved, but nobody told the index
    assert commanded(plan_expiry(p.campaigns, ["c1"], index, T0 + 5_000, CONFIG)) == ["r3"]
    assert p.campaigns.scans == 2  # two pending, one held: list again
    assert plan_expiry(p.campaigns, ["c1"], index, T0 + 6_000, CONFIG) == []
    assert p.campaigns.scans == 2
    assert commanded(plan_expiry(p.campaigns, ["c1"], index, T0 + 65_000, CONFIG)) == ["r4"]
    assert p.campaigns.scans == 3  # the last listing is a minute old: list again


def test_an_index_that_missed_a_settle_never_expires_the_settled_request() -> None:
    """Equal counts, different ids: what the index calls overdue is checked in the table."""
    p = Pipeline(directory(campaign()))
    p.request("r1", user="u1")
    p.request("r2", user="u2")
    index = PendingIndex()
    assert plan_expiry(p.campaigns, ["c1"], index, T0, CONFIG) == []  # lists r1, r2
    p.resolve_queue = p.resolve_queue[:1]
    p.resolve_all()  # r1 settled behind the index's back
    p.request("r3", user="u3")  # and r3 reserved: still two pending
    assert commanded(plan_expiry(p.campaigns, ["c1"], index, T0 + 5_000, CONFIG)) == ["r2"]
    assert commanded(plan_expiry(p.campaigns, ["c1"], index, T0 + 5_500, CONFIG)) == []
    assert commanded(plan_expiry(p.campaigns, ["c1"], index, T0 + 10_500, CONFIG)) == ["r3"]
    assert [d.status for d in p.decisions] == [DecisionStatus.FILLED]


def test_a_delivered_resolution_is_not_expired_while_it_waits_in_the_log() -> None:
    """Under a backlog a Resolution may reach the budget agent after the TTL: no command then."""
    p = Pipeline(directory(campaign()))
    p.request("r1", user="u1")
    p.request("r2", user="u2")
    index = PendingIndex()
    index.reserved("c1", "r1", T0)
    index.reserved("c1", "r2", T0)
    index.settling("c1", "r1")  # its Resolution is in budget-requests
    index.settling("c1", "r9")  # an id not held (already settled) is not taken up
    assert index.held("c1") == 2
    assert commanded(plan_expiry(p.campaigns, ["c1"], index, T0 + 60_000, CONFIG)) == ["r2"]
    assert commanded(plan_expiry(p.campaigns, ["c1"], index, T0 + 61_000, CONFIG)) == []
    p.resolve_queue = p.resolve_queue[:1]
    p.resolve_all()
    assert [d.status for d in p.decisions] == [DecisionStatus.FILLED]


def test_the_index_keeps_clocks_and_settling_marks_across_a_listing() -> None:
    index = PendingIndex()
    index.reserved("c1", "a", 1_000)
    index.reserved("c1", "b", 2_000)
    index.reserved("c1", "a", 3_000)  # seen again: the clock keeps running
    assert index.overdue("c1", 6_000, 5_000) == ["a"]
    index.settling("c1", "a")
    index.listed("c1", ["a", "b", "c"], 6_500)
    assert index.overdue("c1", 7_000, 5_000) == ["b"]
    assert index.overdue("c1", 11_500, 5_000) == ["b", "c"]
    index.listed("c1", ["c"], 12_000)
    assert index.held("c1") == 1
    index.settled("c1", "c")
    assert index.overdue("c1", 20_000, 5_000) == []
    assert index.needs_listing("c1", 0, 20_000) is False
    assert index.needs_listing("c1", 1, 20_000) is True  # the row counts one more
    assert index.needs_listing("c1", 0, 72_000) is True  # listed a minute ago
    assert index.needs_listing("c2", 0, 20_000) is True  # never listed


def test_a_resolution_for_a_request_the_budget_refused_makes_no_second_decision() -> None:
    """A reservation undone (aborted transaction, lost writes) and redone as exhausted.

    The resolve stage works in process, so it may have resolved the first
    attempt: that Resolution must not decide the request a second time.
    """
    p = Pipeline(directory(campaign(budget={"total": "2.5", "timezone": "UTC"})))
    p.request("r0")
    p.resolve_all()  # spends the whole budget
    p.request("r1", ts=T0 + 10)
    assert [d.status for d in p.decisions] == [
        DecisionStatus.FILLED,
        DecisionStatus.BUDGET_EXHAUSTED,
    ]
    request = AdRequest(request_id="r1", user_id="u-r1", timestamp=T0 + 10)
    stray = ResolveRequest(
        request=request,
        campaign_id="c1",
        vast_url="http://127.0.0.1:9/inline",
        max_price_micros=2_500_000,
        currency="USD",
    )
    outputs = handle_resolution(
        p.campaigns,
        resolution(stray, DecisionStatus.FILLED),
        p.view,
        CONFIG,
        wall_ms=T0 + 100,
    )
    assert outputs == []
    assert budget_snapshot(p.campaigns, p.view.campaigns["c1"], T0)["spent_micros"] == 2_500_000


def test_a_resolution_logged_before_the_expire_command_still_fills() -> None:
    """Under backlog the command is written after the resolution: the log order decides."""
    p = Pipeline(directory(campaign()))
    p.request("r1")
    since = PendingIndex()
    plan_expiry(p.campaigns, ["c1"], since, T0, CONFIG)
    commands = plan_expiry(p.campaigns, ["c1"], since, T0 + 60_000, CONFIG)
    p.resolve_all()  # already in the log ahead of the command
    for out in commands:
        p.route(handle_expire(p.campaigns, decode(ExpireCommand, out.value), CONFIG))
    assert [d.status for d in p.decisions] == [DecisionStatus.FILLED]
    assert budget_snapshot(p.campaigns, p.view.campaigns["c1"], T0)["spent_micros"] == 2_500_000


def test_a_redelivered_expire_command_resends_its_timeout_decision() -> None:
    """A crash after the table write but before the decision reached Kafka: the
    command is read again from the committed offset and must not stay silent."""
    p = Pipeline(directory(campaign()))
    p.request("r1", ts=T0)
    since = PendingIndex()
    plan_expiry(p.campaigns, ["c1"], since, T0, CONFIG)
    [command] = plan_expiry(p.campaigns, ["c1"], since, T0 + 60_000, CONFIG)
    expire = decode(ExpireCommand, command.value)
    first = handle_expire(p.campaigns, expire, CONFIG)
    again = handle_expire(p.campaigns, expire, CONFIG)
    first_decisions = [o for o in first if o.route == "decision"]
    assert [o.value for o in again if o.route == "decision"] == [o.value for o in first_decisions]
    assert decode(Decision, first_decisions[0].value).status == DecisionStatus.TIMEOUT


def test_a_redelivered_admitted_resends_the_decision_already_made() -> None:
    p = Pipeline(directory(campaign()))
    request = AdRequest(request_id="r1", user_id="u1", timestamp=T0, reply_to="edge-7.replies")
    admitted = Admitted(request=request, campaign_id="c1")
    p.route(handle_admitted(p.campaigns, admitted, p.view, CONFIG, wall_ms=T0))
    p.resolve_all()
    [filled] = p.decisions
    again = handle_admitted(p.campaigns, admitted, p.view, CONFIG, wall_ms=T0 + 100)
    [resent] = [o for o in again if o.route == "decision"]
    assert decode(Decision, resent.value) == filled
    assert resent.topic == "edge-7.replies"
    assert budget_snapshot(p.campaigns, p.view.campaigns["c1"], T0)["spent_micros"] == 2_500_000


def test_redelivered_messages_give_identical_decisions_and_no_double_charge() -> None:
    p = Pipeline(directory(campaign()))
    p.request("r1")
    [item] = p.resolve_queue
    p.resolve_all()
    again = handle_resolution(
        p.campaigns, resolution(item, DecisionStatus.FILLED), p.view, CONFIG, wall_ms=T0 + 60
    )
    p.route(again)
    filled = [d for d in p.decisions if d.request_id == "r1"]
    assert len(filled) == 2 and filled[0] == filled[1]
    assert (
        budget_snapshot(p.campaigns, p.view.campaigns["c1"], T0 + 100)["spent_micros"] == 2_500_000
    )
    # A redelivered ad request is not reserved twice.
    p.request("r1")
    assert p.resolve_queue == []
    assert frequency_snapshot(p.users, "u1", T0 + 100)["pending"] == 0


def test_duplicate_capped_request_repeats_the_same_decision() -> None:
    p = Pipeline(directory(campaign(caps=[{"limit": 1, "window": "1h"}])))
    p.request("r1")
    p.request("r2", ts=T0 + 1)
    p.request("r2", ts=T0 + 1)
    capped = [d for d in p.decisions if d.request_id == "r2"]
    assert len(capped) == 2 and capped[0] == capped[1]
    assert capped[0].status == DecisionStatus.CAPPED


def test_priority_picks_the_first_campaign_under_its_caps() -> None:
    high = campaign("high", priority=10, caps=[{"limit": 1, "window": "1h"}])
    low = campaign("low", priority=1)
    p = Pipeline(directory(high, low))
    p.request("r1")
    p.request("r2", ts=T0 + 1)
    assert [r.campaign_id for r in p.resolve_queue] == ["high", "low"]


def test_unknown_campaign_hint_is_a_dead_letter() -> None:
    p = Pipeline(directory(campaign()))
    with pytest.raises(DeadLetterError, match="unknown campaign 'nope'"):
        p.request("r1", campaign_id="nope")


def test_no_campaign_at_all_is_a_no_fill_decision() -> None:
    p = Pipeline(DirectoryView())
    p.request("r1")
    assert [d.status for d in p.decisions] == [DecisionStatus.NO_FILL]


def test_spend_events_are_applied_once_and_negative_ones_refused() -> None:
    p = Pipeline(directory(campaign()))
    event = SpendEvent(event_id="e1", campaign_id="c1", amount_micros=1_000_000, timestamp=T0)
    handle_spend(p.campaigns, event, CONFIG)
    handle_spend(p.campaigns, event, CONFIG)
    assert budget_snapshot(p.campaigns, p.view.campaigns["c1"], T0)["spent_micros"] == 1_000_000
    with pytest.raises(DeadLetterError, match="must be >= 0"):
        handle_spend(p.campaigns, SpendEvent("e2", "c1", -5, T0), CONFIG)


def test_rows_stay_small_while_records_accumulate_under_their_own_keys() -> None:
    p = Pipeline(directory(campaign(budget={"total": "10", "timezone": "UTC"})))
    for i in range(500):
        p.request(f"r{i}", user=f"u{i}", ts=T0 + i, campaign_id="c1")
    p.resolve_all()
    assert len(p.campaigns.data["c:c1"]) < 2_000
    settled = [v for k, v in p.campaigns.data.items() if k.startswith("p:c:c1")]
    assert len(settled) == 500 and all(b'"rec"' in v for v in settled)


def test_same_inputs_rebuild_byte_identical_tables() -> None:
    def run() -> tuple[dict[str, bytes], dict[str, bytes]]:
        p = Pipeline(
            directory(
                campaign(
                    caps=[{"limit": 3, "window": "1h"}], budget={"total": "20", "timezone": "UTC"}
                )
            )
        )
        for i in range(60):
            p.request(f"r{i}", user=f"u{i % 7}", ts=T0 + i * 10)
            if i % 5 == 4:
                p.resolve_all(DecisionStatus.FILLED if i % 2 else DecisionStatus.NO_FILL)
        p.resolve_all()
        return p.users.data, p.campaigns.data

    assert run() == run()


@pytest.mark.parametrize(
    ("allow", "vast_cpm", "expected_micros"),
    [
        (False, "1.00", 2_500_000),  # campaign price when VAST pricing is not allowed
        (True, "1000.00", 1_000_000),  # CPM 1000 = 1.00 per impression, lower: taken
        (True, "5000.00", 2_500_000),  # higher than the campaign price: capped at it
    ],
)
def test_vast_pricing_is_used_only_when_allowed_and_lower(
    allow: bool, vast_cpm: str, expected_micros: int
) -> None:
    p = Pipeline(directory(campaign(allow_vast_pricing=allow)))
    p.request("r1")
    [item] = p.resolve_queue
    micros = int(float(vast_cpm) * 1_000_000)
    ad = AdPayload(ad_id="a", price_micros=micros, currency="USD", price_model="CPM")
    filled = Resolution(
        request_id="r1",
        status=DecisionStatus.FILLED,
        campaign_id="c1",
        ad=ad,
        resolved_at=T0 + 10,
        user_id="u1",
        request_timestamp=T0,
    )
    p.route(handle_resolution(p.campaigns, filled, p.view, CONFIG, wall_ms=T0 + 10))
    assert p.decisions[-1].spend_micros == expected_micros
    del item


def test_a_second_different_resolution_repeats_the_first_decision() -> None:
    """After a crash the resolver may resolve again (other timings, even another outcome)."""
    p = Pipeline(directory(campaign()))
    p.request("r1")
    [item] = p.resolve_queue
    first = resolution(item, DecisionStatus.FILLED, 40)
    p.route(handle_resolution(p.campaigns, first, p.view, CONFIG, wall_ms=T0 + 40))
    again = Resolution(
        request_id="r1",
        status=DecisionStatus.NO_FILL,
        campaign_id="c1",
        timings_ms={"total": 999.0},
        user_id="u1",
        request_timestamp=T0,
    )
    p.route(handle_resolution(p.campaigns, again, p.view, CONFIG, wall_ms=T0 + 900))
    assert len(p.decisions) == 2
    assert p.decisions[0] == p.decisions[1]
    assert p.decisions[0].status == DecisionStatus.FILLED
    assert budget_snapshot(p.campaigns, p.view.campaigns["c1"], T0)["spent_micros"] == 2_500_000


class RecordingStore(DictStore):
    """A DictStore that logs every write in order, as the changelog would receive them."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, bytes | None]] = []

    def put(self, key: str, value: bytes) -> None:
        super().put(key, value)
        self.log.append((key, value))

    def delete(self, key: str) -> None:
        super().delete(key)
        self.log.append((key, None))


def crash_after(store: RecordingStore, before: dict[str, bytes], keep: int) -> None:
    """Rewind ``store`` to ``before`` plus only the first ``keep`` writes of the last event."""
    writes = store.log[:keep]
    store.data = dict(before)
    for key, value in writes:
        if value is None:
            store.data.pop(key, None)
        else:
            store.data[key] = value
    store.log.clear()


@pytest.mark.parametrize("event", ["admitted", "resolution"])
def test_a_redelivered_event_after_a_partial_changelog_flush_ends_the_same(event: str) -> None:
    """SIGKILL between an event's side-key writes and its row write, then redelivery."""
    view = directory(campaign())
    request = AdRequest(request_id="r1", user_id="u", timestamp=T0)
    admitted = Admitted(request=request, campaign_id="c1")

    def reference() -> tuple[dict[str, bytes], list[Output]]:
        store = RecordingStore()
        outs = handle_admitted(store, admitted, view, CONFIG, wall_ms=T0)
        item = decode(ResolveRequest, next(o for o in outs if o.route == "resolve").value)
        res = resolution(item, DecisionStatus.FILLED)
        outs = handle_resolution(store, res, view, CONFIG, wall_ms=T0 + 50)
        return store.data, outs

    clean_data, clean_outputs = reference()
    store = RecordingStore()
    if event == "admitted":
        before = dict(store.data)
        handle_admitted(store, admitted, view, CONFIG, wall_ms=T0)
        for keep in range(len(store.log)):  # every possible crash point
            probe = RecordingStore()
            probe.data, probe.log = dict(store.data), list(store.log)
            crash_after(probe, before, keep)
            outs = handle_admitted(probe, admitted, view, CONFIG, wall_ms=T0)
            assert any(o.route == "resolve" for o in outs), keep
            item = decode(ResolveRequest, next(o for o in outs if o.route == "resolve").value)
            res = resolution(item, DecisionStatus.FILLED)
            final = handle_resolution(probe, res, view, CONFIG, wall_ms=T0 + 50)
            assert [o.value for o in final] == [o.value for o in clean_outputs], keep
            assert budget_snapshot(probe, view.campaigns["c1"], T0)["spent_micros"] == 2_500_000
            assert budget_snapshot(probe, view.campaigns["c1"], T0)["reserved_micros"] == 0
    else:
        outs = handle_admitted(store, admitted, view, CONFIG, wall_ms=T0)
        item = decode(ResolveRequest, next(o for o in outs if o.route == "resolve").value)
        res = resolution(item, DecisionStatus.FILLED)
        store.log.clear()
        before = dict(store.data)
        handle_resolution(store, res, view, CONFIG, wall_ms=T0 + 50)
        for keep in range(len(store.log)):
            probe = RecordingStore()
            probe.data, probe.log = dict(store.data), list(store.log)
            crash_after(probe, before, keep)
            final = handle_resolution(probe, res, view, CONFIG, wall_ms=T0 + 50)
            assert [o.value for o in final] == [o.value for o in clean_outputs], keep
            snapshot = budget_snapshot(probe, view.campaigns["c1"], T0)
            assert snapshot["spent_micros"] == 2_500_000, keep
            assert snapshot["reserved_micros"] == 0, keep
    assert clean_data  # the reference run wrote its rows


def killed_twice(
    before: dict[str, bytes], run: Callable[[RecordingStore], object]
) -> Iterator[tuple[RecordingStore, tuple[int, int]]]:
    """Each store that ``run`` leaves when killed at any write, delivered again and
    killed again at any write (or not), starting from the table ``before``."""
    store = RecordingStore()
    store.data = dict(before)
    run(store)
    first_log, after_first = list(store.log), dict(store.data)
    for first in range(len(first_log)):
        probe = RecordingStore()
        probe.data, probe.log = dict(after_first), list(first_log)
        crash_after(probe, before, first)
        between = dict(probe.data)
        run(probe)
        second_log, after_second = list(probe.log), dict(probe.data)
        for second in range(len(second_log) + 1):
            again = RecordingStore()
            again.data, again.log = dict(after_second), list(second_log)
            crash_after(again, between, second)
            yield again, (first, second)


@pytest.mark.parametrize("status", [DecisionStatus.FILLED, DecisionStatus.NO_FILL])
def test_a_resolution_killed_twice_before_its_row_write_settles_once(
    status: DecisionStatus,
) -> None:
    """Two SIGKILLs at any write of the same settle, then a clean redelivery.

    A settle writes the request's record over its reservation entry, keeping
    the version its row has committed as ``prev``. The second attempt must
    keep the *committed* version (the reservation), not the first attempt's
    uncommitted record, or a second kill would leave the entry neither pending
    nor recorded: no decision, and a reservation its row counts forever.
    """
    view = directory(campaign())
    request = AdRequest(request_id="r1", user_id="u", timestamp=T0)
    store = RecordingStore()
    admitted = Admitted(request=request, campaign_id="c1")
    outs = handle_admitted(store, admitted, view, CONFIG, wall_ms=T0)
    item = decode(ResolveRequest, next(o for o in outs if o.route == "resolve").value)
    res = resolution(item, status)
    before = dict(store.data)
    clean = handle_resolution(store, res, view, CONFIG, wall_ms=T0 + 50)
    charged = 2_500_000 if status == DecisionStatus.FILLED else 0

    def settle(target: RecordingStore) -> object:
        return handle_resolution(target, res, view, CONFIG, wall_ms=T0 + 50)

    for probe, at in killed_twice(before, settle):
        final = handle_resolution(probe, res, view, CONFIG, wall_ms=T0 + 50)
        assert [o.value for o in final] == [o.value for o in clean], at
        snapshot = budget_snapshot(probe, view.campaigns["c1"], T0)
        assert snapshot["spent_micros"] == charged, at
        assert snapshot["reserved_micros"] == 0, at
        assert pending_reservations(probe, "c1") == 0, at


def user_event_setup(
    event: str,
) -> tuple[DirectoryView, AdRequest, FrequencySettle, RecordingStore]:
    """A capped campaign (1 an hour), request r1, its release, and a table in which r1
    is already admitted if ``event`` is ``release``."""
    view = directory(campaign(caps=[{"limit": 1, "window": "1h"}]))
    request = AdRequest(request_id="r1", user_id="u", timestamp=T0)
    release = FrequencySettle(request_id="r1", user_id="u", action="release", timestamp=T0)
    store = RecordingStore()
    if event == "release":
        handle_ad_request(store, request, view, CONFIG)
    return view, request, release, store


@pytest.mark.parametrize("event", ["admission", "release"])
def test_a_user_event_killed_twice_before_its_row_write_counts_once(event: str) -> None:
    """The same double kill for the frequency table's record and row."""
    view, request, release, store = user_event_setup(event)

    def deliver(target: RecordingStore) -> object:
        if event == "admission":
            return handle_ad_request(target, request, view, CONFIG)
        return handle_frequency_settle(target, release, CONFIG)

    later = AdRequest(request_id="r2", user_id="u", timestamp=T0 + 1)
    for probe, at in killed_twice(dict(store.data), deliver):
        deliver(probe)
        outputs = handle_ad_request(probe, later, view, CONFIG)
        if event == "admission":  # counted exactly once: the next request is capped
            assert decode(Decision, outputs[0].value).status == DecisionStatus.CAPPED, at
        else:  # released exactly once: the slot is free again
            assert [o.route for o in outputs] == ["budget"], at


def test_a_settled_reservation_is_one_entry_written_twice() -> None:
    """Reservation and outcome share one key: a settle overwrites the entry (one
    changelog write) instead of marking it gone and writing a record key (two)."""
    view = directory(campaign())
    request = AdRequest(request_id="r1", user_id="u", timestamp=T0)
    store = RecordingStore()
    outs = handle_admitted(
        store, Admitted(request=request, campaign_id="c1"), view, CONFIG, wall_ms=T0
    )
    item = decode(ResolveRequest, next(o for o in outs if o.route == "resolve").value)
    handle_resolution(store, resolution(item, DecisionStatus.FILLED), view, CONFIG, wall_ms=T0 + 50)
    keys = [key for key, _ in store.log]
    assert keys == ["p:c:c1\x1fr1", "c:c1", "p:c:c1\x1fr1", "c:c1"]
    entry = json.loads(store.data["p:c:c1\x1fr1"])
    assert entry["rec"]["s"] == "settled" and "res" not in entry
    assert json.loads(entry["decision"])["status"] == "filled"


def test_row_owner_names_the_source_key_of_every_table_key() -> None:
    sep = "\x1f"
    assert row_owner("u:alice") == "alice"
    assert row_owner(f"r:u:alice{sep}req-1") == "alice"
    assert row_owner("c:camp") == "camp"
    assert row_owner(f"p:c:camp{sep}req-1") == "camp"
    assert row_owner(f"s:c:camp{sep}spend-1") == "camp"
    assert row_owner("x:3") is None


def test_pruning_forgets_old_records_only_in_the_ticks_partition() -> None:
    """A worker holds several partitions; a tick of one may only delete that one's keys."""
    view = directory(campaign("c1"))
    users = DictStore()
    for i in range(40):
        req = AdRequest(request_id=f"r{i}", user_id=f"user-{i}", timestamp=T0)
        handle_ad_request(users, req, view, CONFIG, wall_ms=T0)
        settle = FrequencySettle(
            request_id=f"r{i}", user_id=f"user-{i}", action="commit", timestamp=T0
        )
        handle_frequency_settle(users, settle, CONFIG, wall_ms=T0)
    records = [k for k in users.data if k.startswith("r:")]
    assert len(records) == 40

    def partition(key: str) -> int:
        return partition_of(str(row_owner(key)).encode(), 4)

    late = Tick(timestamp=T0 + CONFIG.horizon_ms + 1, prune=True)
    early = Tick(timestamp=T0 + CONFIG.horizon_ms - 1, prune=True)
    assert prune_records(users, early, CONFIG, owned_by(0, 4)) == (0, T0)
    mine = [k for k in records if partition(k) == 0]
    assert 0 < len(mine) < 40
    # The other partitions' records are left, and bound the oldest left.
    assert prune_records(users, late, CONFIG, owned_by(0, 4)) == (len(mine), T0)
    left = {k for k in users.data if k.startswith("r:")}
    assert left == {k for k in records if partition(k) != 0}
    assert prune_records(users, late, CONFIG) == (40 - len(mine), None)
    # Rows themselves are never pruned.
    assert all(f"u:user-{i}" in users.data for i in range(40))


def test_a_pending_count_going_negative_is_logged_once_with_its_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    p = Pipeline(directory(campaign()))
    p.request("r1", user="u1")
    p.request("r2", user="u2", ts=T0 + 1)
    # Corrupt the row as a lost changelog write would: it forgets both reservations.
    row = json.loads(p.campaigns.data["c:c1"])
    row["pending_count"] = 0
    p.campaigns.data["c:c1"] = json.dumps(row).encode()
    with caplog.at_level("ERROR", logger="streams.pipeline"):
        p.resolve_all()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, errors
    assert "went negative (-1)" in errors[0] and "gone ['r1']" in errors[0]


def test_a_fill_sends_no_cap_settle_and_counts_from_admission() -> None:
    p = Pipeline(directory(campaign(caps=[{"limit": 2, "window": "1h"}])))
    p.request("r1")
    p.request("r2", ts=T0 + 1)
    # In flight already counts as served: the advisory view and the cap agree.
    assert frequency_snapshot(p.users, "u1", T0 + 2)["served_last_hour"] == 2
    filled, unfilled = p.resolve_queue
    p.resolve_queue = []
    outputs = handle_resolution(
        p.campaigns, resolution(filled, DecisionStatus.FILLED), p.view, CONFIG, wall_ms=T0 + 50
    )
    assert [o.route for o in outputs] == ["decision"]
    outputs = handle_resolution(
        p.campaigns, resolution(unfilled, DecisionStatus.NO_FILL), p.view, CONFIG, wall_ms=T0 + 50
    )
    assert sorted(o.route for o in outputs) == ["decision", "frequency"]
    p.route(outputs)
    assert frequency_snapshot(p.users, "u1", T0 + 60)["served_last_hour"] == 1
    # The released slot is free again; the filled one is not.
    p.request("r3", ts=T0 + 70)
    p.request("r4", ts=T0 + 80)
    assert len(p.resolve_queue) == 1
    assert p.decisions[-1].status == DecisionStatus.CAPPED


@pytest.mark.parametrize("event", ["admission", "release"])
def test_a_redelivered_user_event_after_a_partial_changelog_flush_counts_the_same(
    event: str,
) -> None:
    """SIGKILL between the outcome record's write and the user row's, then redelivery.

    Admission writes the request's record and then the row that counts it; a
    record that outlived its row must not make the redelivered request look
    counted (one ad over the cap) or a release look done (a slot lost).
    """
    view, request, release, store = user_event_setup(event)
    store.log.clear()
    before = dict(store.data)
    if event == "admission":
        handle_ad_request(store, request, view, CONFIG)
    else:
        handle_frequency_settle(store, release, CONFIG)
    assert len(store.log) >= 2  # a record and the row
    for keep in range(len(store.log)):  # every possible crash point
        probe = RecordingStore()
        probe.data, probe.log = dict(store.data), list(store.log)
        crash_after(probe, before, keep)
        if event == "admission":
            outputs = handle_ad_request(probe, request, view, CONFIG)
            assert [o.route for o in outputs] == ["budget"], keep
            # Counted exactly once: the next request of the hour is capped.
            later = AdRequest(request_id="r2", user_id="u", timestamp=T0 + 1)
            [capped] = handle_ad_request(probe, later, view, CONFIG)
            assert decode(Decision, capped.value).status == DecisionStatus.CAPPED, keep
        else:
            handle_frequency_settle(probe, release, CONFIG)
            later = AdRequest(request_id="r2", user_id="u", timestamp=T0 + 1)
            outputs = handle_ad_request(probe, later, view, CONFIG)
            assert [o.route for o in outputs] == ["budget"], keep  # the slot is free again


def test_pack_admissions_sends_one_message_per_campaign_and_keeps_the_rest() -> None:
    def admitted(rid: str, cid: str) -> Output:
        request = AdRequest(request_id=rid, user_id="u", timestamp=T0)
        return Output("budget", cid, encode(Admitted(request=request, campaign_id=cid)))

    capped = Output("decision", "r3", b"{}", status="capped")
    outputs = [admitted("r1", "c1"), admitted("r2", "c2"), capped, admitted("r4", "c1")]
    packed = pack_admissions(outputs)
    assert packed[0] == capped
    budget = [(o.key, decode(AdmittedBatch, o.value)) for o in packed[1:]]
    assert all(o.route == "budget" for o in packed[1:])
    assert [(cid, [a.request.request_id for a in b.items]) for cid, b in budget] == [
        ("c1", ["r1", "r4"]),
        ("c2", ["r2"]),
    ]
    many = [admitted(f"r{i}", "c1") for i in range(5)]
    sizes = [len(decode(AdmittedBatch, o.value).items) for o in pack_admissions(many, 2)]
    assert sizes == [2, 2, 1]
    assert pack_admissions([capped]) == [capped]


@pytest.mark.parametrize("stage", ["budget", "admit"])
def test_redelivered_earlier_messages_do_not_commit_a_crashed_later_ones_side_keys(
    stage: str,
) -> None:
    """Kill between a message's side keys and its row, then redeliver from an older offset.

    The rocksdb chaos test caught this: messages already applied (their offsets
    not yet committed) came again and each bumped the row's seq past the seq of
    the side keys that the killed message had left, committing a reservation
    the row never counted; its release drove the pending count below zero.
    """
    view = directory(campaign(caps=[{"limit": 10, "window": "1h"}]))
    store = RecordingStore()

    def admitted(rid: str, user: str) -> Admitted:
        request = AdRequest(request_id=rid, user_id=user, timestamp=T0)
        return Admitted(request=request, campaign_id="c1")

    def apply(offset: int, rid: str) -> list[Output]:
        if stage == "budget":
            return handle_admitted(
                store, admitted(rid, "u"), view, CONFIG, wall_ms=T0, position=(offset, 0)
            )
        request = AdRequest(request_id=rid, user_id="u", timestamp=T0)
        return handle_ad_request(store, request, view, CONFIG, wall_ms=T0, position=(offset, 0))

    apply(10, "r1")
    apply(11, "r2")
    before = dict(store.data)
    store.log.clear()
    apply(12, "r3")
    row_key = "c:c1" if stage == "budget" else "u:u"
    row_write = next(i for i, (key, _) in enumerate(store.log) if key == row_key)
    crash_after(store, before, row_write)  # r3's side keys landed, its row did not
    for offset, rid in ((10, "r1"), (11, "r2"), (12, "r3")):  # redelivered from offset 10
        apply(offset, rid)
    if stage == "budget":
        assert pending_reservations(store, "c1") == 3
        snapshot = budget_snapshot(store, view.campaigns["c1"], T0)
        assert snapshot["reserved_micros"] == 3 * 2_500_000
    else:
        assert frequency_snapshot(store, "u", T0)["served_last_hour"] == 3
        row = json.loads(store.data["u:u"])
        assert sorted(row["state"]["logs"].values())[0] == [T0, T0, T0]


def _batch_run(store: DictStore, view: DirectoryView, rids: list[str]) -> list[Output]:
    """Admit ``rids`` for c1 as one AdmittedBatch, then settle them as one Resolutions."""
    deferred = DeferredRowStore(store)
    outs: list[Output] = []
    for rid in rids:
        request = AdRequest(request_id=rid, user_id=f"u-{rid}", timestamp=T0)
        admitted = Admitted(request=request, campaign_id="c1")
        outs += handle_admitted(deferred, admitted, view, CONFIG, wall_ms=T0)
    deferred.flush()
    deferred = DeferredRowStore(store)
    for out in [o for o in outs if o.route == "resolve"]:
        item = decode(ResolveRequest, out.value)
        res = resolution(item, DecisionStatus.FILLED)
        outs += handle_resolution(deferred, res, view, CONFIG, wall_ms=T0 + 50)
    deferred.flush()
    return outs


def test_a_batch_through_a_deferred_row_store_ends_as_item_by_item_with_fewer_writes() -> None:
    view = directory(campaign())
    rids = ["r1", "r2", "r3", "r4"]
    one_by_one = DictStore()
    outs_one: list[Output] = []
    for rid in rids:
        request = AdRequest(request_id=rid, user_id=f"u-{rid}", timestamp=T0)
        admitted = Admitted(request=request, campaign_id="c1")
        outs_one += handle_admitted(one_by_one, admitted, view, CONFIG, wall_ms=T0)
    for out in [o for o in outs_one if o.route == "resolve"]:
        res = resolution(decode(ResolveRequest, out.value), DecisionStatus.FILLED)
        outs_one += handle_resolution(one_by_one, res, view, CONFIG, wall_ms=T0 + 50)
    batched = DictStore()
    outs_batched = _batch_run(batched, view, rids)
    assert batched.data == one_by_one.data  # byte for byte, row seq included
    assert [o.value for o in outs_batched] == [o.value for o in outs_one]
    # One campaign-row write per batch message instead of one per request.
    assert one_by_one.writes - batched.writes == 2 * (len(rids) - 1)
    assert budget_snapshot(batched, view.campaigns["c1"], T0)["spent_micros"] == 4 * 2_500_000


@pytest.mark.parametrize("stage", ["admitted", "resolutions"])
def test_a_batch_redelivered_after_a_crash_at_any_write_ends_the_same(stage: str) -> None:
    """SIGKILL anywhere inside a batch message's writes, then the whole message again."""
    view = directory(campaign())
    rids = ["r1", "r2", "r3"]
    clean = DictStore()
    clean_outs = _batch_run(clean, view, rids)
    decisions = sorted(o.value for o in clean_outs if o.route == "decision")
    store = RecordingStore()
    admitted = [
        Admitted(
            request=AdRequest(request_id=rid, user_id=f"u-{rid}", timestamp=T0), campaign_id="c1"
        )
        for rid in rids
    ]

    def admit_batch(target: DictStore) -> list[Output]:
        deferred = DeferredRowStore(target)
        outs = [o for a in admitted for o in handle_admitted(deferred, a, view, CONFIG, wall_ms=T0)]
        deferred.flush()
        return outs

    def settle_batch(target: DictStore, outs: list[Output]) -> list[Output]:
        deferred = DeferredRowStore(target)
        done: list[Output] = []
        for out in [o for o in outs if o.route == "resolve"]:
            res = resolution(decode(ResolveRequest, out.value), DecisionStatus.FILLED)
            done += handle_resolution(deferred, res, view, CONFIG, wall_ms=T0 + 50)
        deferred.flush()
        return done

    if stage == "admitted":
        before = dict(store.data)
        admit_batch(store)
    else:
        resolve_outs = admit_batch(store)
        store.log.clear()
        before = dict(store.data)
        settle_batch(store, resolve_outs)
    assert sum(1 for key, _ in store.log if key.startswith("c:")) == 1  # one row write
    for keep in range(len(store.log) + 1):  # every crash point, and none
        probe = RecordingStore()
        probe.data, probe.log = dict(store.data), list(store.log)
        crash_after(probe, before, keep)
        if stage == "admitted":
            outs = admit_batch(probe)
            final = settle_batch(probe, outs)
        else:
            final = settle_batch(probe, resolve_outs)
        assert sorted(o.value for o in final if o.route == "decision") == decisions, keep
        snapshot = budget_snapshot(probe, view.campaigns["c1"], T0)
        assert snapshot["spent_micros"] == 3 * 2_500_000, keep
        assert snapshot["reserved_micros"] == 0, keep


def test_a_side_key_written_twice_in_one_batch_flushes_the_row_first() -> None:
    store = RecordingStore()
    deferred = DeferredRowStore(store)
    deferred.put("p:c:c1\x1fr1", b"1")
    deferred.put("c:c1", b"row-1")
    assert deferred.get("c:c1") == b"row-1"
    assert store.get("c:c1") is None  # held back
    deferred.put("p:c:c1\x1fr1", b"2")  # its first version waits for row-1: row-1 goes first
    deferred.put("c:c1", b"row-2")
    deferred.flush()
    assert store.log == [
        ("p:c:c1\x1fr1", b"1"),
        ("c:c1", b"row-1"),
        ("p:c:c1\x1fr1", b"2"),
        ("c:c1", b"row-2"),
    ]
