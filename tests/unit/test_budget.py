"""Unit tests for streams.budget: reservations, settles, spend events in micros."""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from streams.budget import (
    BudgetState,
    Exhausted,
    Reserved,
    Stale,
    VastPricing,
    actual_price,
    apply_spend,
    day_key,
    expire,
    parse_vast_pricing,
    remaining,
    settle,
    try_reserve,
)
from streams.campaign import Campaign, parse_campaign
from streams.money import MoneyError

BERLIN = ZoneInfo("Europe/Berlin")
HOUR = 3_600_000
TTL = 600_000


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def campaign(**over: Any) -> Campaign:
    d: dict[str, Any] = {
        "campaign_id": "c1",
        "advertiser_id": "a1",
        "price": {"model": "cpi", "amount": "2.5", "currency": "USD"},
        "budget": {"total": "100", "timezone": "Europe/Berlin"},
        "vast_url": "https://ads.example/vast",
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(d.get(k), dict):
            d[k] = {**d[k], **v}
        else:
            d[k] = v
    return parse_campaign(d)


def assert_within(state: BudgetState, c: Campaign) -> None:
    assert state.reserved_total == sum(r.amount for r in state.reservations.values())
    assert state.spent_total + state.reserved_total <= c.budget.total_micros


def test_seed_10000_reservations_all_in_flight_then_settled() -> None:
    c = campaign()
    s = BudgetState("c1")
    t = 1_700_000_000_000
    results = []
    for i in range(10_000):
        s, r = try_reserve(s, c, f"r{i}", t, TTL)
        results.append(r)
        assert_within(s, c)
    reserved = [i for i, r in enumerate(results) if isinstance(r, Reserved)]
    assert len(reserved) == 40
    assert all(
        isinstance(r, Exhausted) and r.reason == "total"
        for r in results
        if r not in [results[i] for i in reserved]
    )
    for i in reserved:
        s, res = settle(s, f"r{i}", 2_500_000)
        assert res.status == "committed"
        assert_within(s, c)
    assert s.spent_total == 100_000_000 and s.reserved_total == 0


@pytest.mark.parametrize("seed", range(3))
def test_seed_10000_reservations_interleaved_with_settles(seed: int) -> None:
    rng = random.Random(seed)
    c = campaign()
    s = BudgetState("c1")
    t = 1_700_000_000_000
    in_flight: list[str] = []
    committed = 0
    for i in range(10_000):
        t += rng.choice([0, 1, 10])
        s, r = try_reserve(s, c, f"r{i}", t, TTL)
        if isinstance(r, Reserved):
            assert r.amount_micros == 2_500_000
            in_flight.append(f"r{i}")
        assert_within(s, c)
        while in_flight and rng.random() < 0.3:
            rid = in_flight.pop(rng.randrange(len(in_flight)))
            if rng.random() < 0.2:
                s, res = settle(s, rid, None)
                assert res.status == "released"
            else:
                s, res = settle(s, rid, 2_500_000)
                assert res.status == "committed" and res.charged_micros == 2_500_000
                committed += 1
            assert_within(s, c)
    for rid in in_flight:
        s, res = settle(s, rid, 2_500_000)
        committed += res.status == "committed"
        assert_within(s, c)
    assert committed == 40
    assert s.spent_total == 100_000_000


def test_daily_budget_uses_campaign_timezone() -> None:
    c = campaign(budget={"daily": "10"})  # 4 impressions a day at 2.5
    s = BudgetState("c1")
    late = ms(datetime(2025, 6, 1, 23, 59, tzinfo=BERLIN))  # 21:59 UTC
    got = []
    for i in range(6):
        s, r = try_reserve(s, c, f"a{i}", late, TTL)
        got.append(r)
        if isinstance(r, Reserved):
            s, _ = settle(s, f"a{i}", r.amount_micros)
    assert [type(r).__name__ for r in got] == ["Reserved"] * 4 + ["Exhausted"] * 2
    assert got[4] == Exhausted("daily")
    assert s.spent_by_day == {"2025-06-01": 10_000_000}
    # Two minutes later it is a new day in Berlin (still June 1st in UTC).
    s, r = try_reserve(s, c, "b0", late + 120_000, TTL)
    assert isinstance(r, Reserved) and r.day == "2025-06-02"
    assert day_key(late + 120_000, "UTC") == "2025-06-01"
    rem = remaining(s, c, late + 120_000)
    assert rem.daily_micros == 10_000_000 - 2_500_000 and rem.day == "2025-06-02"
    assert rem.total_micros == 100_000_000 - 12_500_000


def test_old_days_are_folded_into_total() -> None:
    c = campaign(budget={"daily": "10", "total": "1000"})
    s = BudgetState("c1")
    t = ms(datetime(2025, 6, 1, 12, tzinfo=BERLIN))
    for d in range(5):
        s, r = try_reserve(s, c, f"r{d}", t + d * 24 * HOUR, TTL)
        assert isinstance(r, Reserved)
        s, _ = settle(s, f"r{d}", r.amount_micros)
    assert sorted(s.spent_by_day) == ["2025-06-04", "2025-06-05"]
    assert s.spent_total == 5 * 2_500_000


def test_schedule() -> None:
    c = campaign(schedule={"start_ms": 1_000_000, "end_ms": 2_000_000})
    s = BudgetState("c1")
    s, r = try_reserve(s, c, "early", 999_999, TTL)
    assert r == Exhausted("schedule")
    s, r = try_reserve(s, c, "in", 1_000_000, TTL)
    assert isinstance(r, Reserved)
    s, r = try_reserve(s, c, "end", 2_000_000, TTL)
    assert r == Exhausted("schedule")


def test_settle_lower_price_and_clamp() -> None:
    c = campaign(budget={"total": "5"})
    s = BudgetState("c1")
    s, _ = try_reserve(s, c, "a", 0, TTL)
    s, _ = try_reserve(s, c, "b", 0, TTL)
    s, r = try_reserve(s, c, "c", 0, TTL)
    assert r == Exhausted("total")
    s, res = settle(s, "a", 1_000_000)  # VAST price was lower
    assert res.charged_micros == 1_000_000
    s, res = settle(s, "b", 9_000_000)  # never more than was reserved
    assert res.charged_micros == 2_500_000
    assert s.spent_total == 3_500_000
    s, r = try_reserve(s, c, "d", 1, TTL)  # 3.5 + 2.5 > 5
    assert r == Exhausted("total")
    c6 = campaign(budget={"total": "6"})
    s, r = try_reserve(s, c6, "e", 2, TTL)
    assert isinstance(r, Reserved)


def test_idempotence_of_reserve_settle_and_exhausted() -> None:
    c = campaign(budget={"total": "5"})
    s = BudgetState("c1")
    s, _ = try_reserve(s, c, "a", 0, TTL)
    snap = s.to_json_bytes()
    s, again = try_reserve(s, c, "a", 5, TTL)
    assert isinstance(again, Reserved) and again.duplicate and again.amount_micros == 2_500_000
    assert s.to_json_bytes() == snap
    s, _ = try_reserve(s, c, "b", 0, TTL)
    s, x = try_reserve(s, c, "x", 0, TTL)
    assert x == Exhausted("total")
    s, res = settle(s, "a", 2_500_000)
    assert res.status == "committed"
    snap = s.to_json_bytes()
    s, res = settle(s, "a", 2_500_000)
    assert res.status == "duplicate" and s.to_json_bytes() == snap
    s, res = settle(s, "a", None)
    assert res.status == "conflict" and s.spent_total == 2_500_000
    s, res = settle(s, "b", None)
    assert res.status == "released"
    # Budget is free again, but the duplicate of "x" keeps its first answer.
    s, dup = try_reserve(s, c, "x", 1, TTL)
    assert dup == Exhausted("total", duplicate=True)
    s2 = BudgetState.from_json_bytes(s.to_json_bytes())
    s2, dup = try_reserve(s2, c, "x", 1, TTL)
    assert dup == Exhausted("total", duplicate=True)
    s, res = settle(s, "x", 1)
    assert res.status == "not_reserved"
    s, res = settle(s, "nope", 1)
    assert res.status == "unknown" and s.spent_total == 2_500_000


def test_spend_events_idempotent_and_refunds() -> None:
    c = campaign(budget={"total": "10"})
    s = BudgetState("c1", timezone="Europe/Berlin")
    t = ms(datetime(2025, 6, 1, 12, tzinfo=BERLIN))
    s, res = apply_spend(s, "e1", 6_000_000, t)
    assert res.status == "applied"
    snap = s.to_json_bytes()
    s, res = apply_spend(s, "e1", 6_000_000, t + 1)
    assert res.status == "duplicate" and s.to_json_bytes() == snap
    assert s.spent_total == 6_000_000 and s.spent_by_day == {"2025-06-01": 6_000_000}
    s, r = try_reserve(s, c, "r1", t, TTL)
    assert isinstance(r, Reserved)
    s, r = try_reserve(s, c, "r2", t, TTL)
    assert r == Exhausted("total")  # 6 + 2.5 + 2.5 > 10
    s, res = apply_spend(s, "refund", -2_000_000, t)
    assert res.status == "applied" and s.spent_total == 4_000_000
    s, r = try_reserve(s, c, "r3", t, TTL)
    assert isinstance(r, Reserved)
    s, res = apply_spend(s, "too-much", -5_000_000, t)
    assert res.status == "rejected" and s.spent_total == 4_000_000
    s, res = apply_spend(s, "too-much", -5_000_000, t)
    assert res.status == "duplicate"


def test_expiry_by_event_time_and_late_settle() -> None:
    c = campaign(budget={"total": "5"})
    s = BudgetState("c1")
    t = ms(datetime(2001, 5, 1, 12, tzinfo=BERLIN))  # wall clock would expire all
    s, _ = try_reserve(s, c, "a", t, TTL)
    s, _ = try_reserve(s, c, "b", t, TTL)
    s, r = try_reserve(s, c, "c", t + TTL - 1, TTL)
    assert r == Exhausted("total")
    s, r = try_reserve(s, c, "d", t + TTL, TTL)  # a and b expire first
    assert isinstance(r, Reserved)
    assert set(s.reservations) == {"d"} and s.reserved_total == 2_500_000
    # "a" was served after all: charged, even though that overruns by one.
    s, res = settle(s, "a", 2_500_000)
    assert res.status == "committed_late" and s.spent_total == 2_500_000
    s, res = settle(s, "a", 2_500_000)
    assert res.status == "duplicate"
    s, res = settle(s, "b", None)
    assert res.status == "released"
    s, res = settle(s, "b", 2_500_000)
    assert res.status == "conflict" and s.spent_total == 2_500_000


def test_expire_function_does_not_move_clock() -> None:
    c = campaign()
    s = BudgetState("c1")
    s, _ = try_reserve(s, c, "a", 100, TTL)
    s, _ = try_reserve(s, c, "b", 200, TTL)
    assert remaining(s, c, 100 + TTL).total_micros == 100_000_000 - 2_500_000
    s, gone = expire(s, 100 + TTL - 1)
    assert gone == ()
    s, gone = expire(s, 10**9)
    assert gone == ("a", "b") and s.clock_ms == 200 and s.reserved_total == 0
    s, gone = expire(s, 10**9)
    assert gone == ()


def apply_ops(c: Campaign, seed: int, roundtrip: bool) -> BudgetState:
    rng = random.Random(seed)
    s = BudgetState("c1")
    t = ms(datetime(2025, 3, 30, 20, tzinfo=BERLIN))  # crosses the DST night
    live: list[str] = []
    for i in range(600):
        t += rng.choice([0, 1_000, 60_000, 20 * 60_000])
        if roundtrip:
            s = BudgetState.from_json_bytes(s.to_json_bytes())
        x = rng.random()
        if x < 0.5 or not live:
            s, r = try_reserve(s, c, f"r{i % 500}", t, TTL, horizon_ms=2 * HOUR)
            if isinstance(r, Reserved) and not r.duplicate:
                live.append(f"r{i % 500}")
        elif x < 0.8:
            price = rng.choice([None, 1_000_000, 2_500_000])
            s, _ = settle(s, live.pop(rng.randrange(len(live))), price, ts_ms=t)
        elif x < 0.9:
            s, _ = apply_spend(s, f"e{i % 50}", rng.randrange(-1_000_000, 3_000_000), t)
        else:
            s, _ = expire(s, t)
    return s


def test_replay_rebuilds_byte_identical_state() -> None:
    c = campaign(budget={"total": "500", "daily": "60"})
    a = apply_ops(c, 1, roundtrip=False)
    b = apply_ops(c, 1, roundtrip=False)
    r = apply_ops(c, 1, roundtrip=True)
    assert a.to_json_bytes() == b.to_json_bytes() == r.to_json_bytes()
    assert a.reserved_total == r.reserved_total and a.reserved_by_day == r.reserved_by_day
    assert apply_ops(c, 2, roundtrip=False).to_json_bytes() != a.to_json_bytes()
    assert a.spent_total > 0


def test_forgotten_ids_are_refused_as_stale() -> None:
    c = campaign(budget={"total": "1000000"})
    s = BudgetState("c1")
    for i in range(200):
        s, r = try_reserve(s, c, f"r{i}", i * 60_000, TTL, horizon_ms=HOUR)
        s, _ = settle(s, f"r{i}", 1)
    assert len(s.records) <= 61
    spent = s.spent_total
    s, r = try_reserve(s, c, "r3", 3 * 60_000, TTL, horizon_ms=HOUR)
    assert isinstance(r, Stale)
    s, res = settle(s, "r3", 1)
    assert res.status == "unknown" and s.spent_total == spent
    s, res = apply_spend(s, "old-event", 5, 60_000, horizon_ms=HOUR)
    assert res.status == "stale" and s.spent_total == spent


def test_actual_price_rules() -> None:
    allow = campaign(price={"model": "cpm", "amount": "2500"}, allow_vast_pricing=True)
    deny = campaign(price={"model": "cpm", "amount": "2500"})
    assert allow.max_price_micros == 2_500_000
    lower = parse_vast_pricing("CPM", "USD", " 2000.5 ")
    assert lower == VastPricing("cpm", "USD", 2_000_500_000)
    assert actual_price(allow, lower) == 2_000_500
    assert actual_price(deny, lower) == 2_500_000
    assert actual_price(allow, None) == 2_500_000
    assert actual_price(allow, VastPricing("cpm", "USD", 2_500_000_000)) == 2_500_000
    assert actual_price(allow, VastPricing("cpm", "USD", 3_000_000_000)) == 2_500_000
    assert actual_price(allow, VastPricing("cpm", "EUR", 1_000_000)) == 2_500_000
    assert actual_price(allow, VastPricing("cpc", "USD", 1_000_000)) == 2_500_000
    for bad in (("", "USD", "1"), ("CPM", "usd", "1"), ("CPM", "USD", "-1"), ("CPM", "USD", "x")):
        with pytest.raises(MoneyError):
            parse_vast_pricing(*bad)


def test_wrong_row_and_bad_arguments() -> None:
    c = campaign()
    with pytest.raises(ValueError, match="does not own budget row"):
        try_reserve(BudgetState("other"), c, "a", 0, TTL)
    s = BudgetState("c1")
    with pytest.raises(ValueError):
        try_reserve(s, c, "a", -1, TTL)
    with pytest.raises(ValueError, match="horizon_ms must exceed ttl_ms"):
        try_reserve(s, c, "a", 0, TTL, horizon_ms=TTL)
    with pytest.raises(ValueError):
        settle(s, "a", -5)
    with pytest.raises(ValueError):
        apply_spend(s, "e", 1.5, 0)  # type: ignore[arg-type]
    assert s.to_dict() == BudgetState("c1").to_dict()
