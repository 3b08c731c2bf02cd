"""Unit tests for streams.caps: atomic check-and-reserve of frequency caps."""

from __future__ import annotations

import random
from collections import Counter
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from streams.campaign import Campaign, GlobalCaps, parse_campaign, parse_global_caps
from streams.caps import (
    FrequencyState,
    cap_rules,
    check_and_reserve,
    commit,
    expire,
    period_bounds,
    release,
    usage,
)

BERLIN = ZoneInfo("Europe/Berlin")
HOUR = 3_600_000
TTL = 600_000  # 10 min, event time


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def campaign(caps: list[dict[str, Any]], **extra: Any) -> Campaign:
    d: dict[str, Any] = {
        "campaign_id": extra.pop("campaign_id", "c1"),
        "advertiser_id": extra.pop("advertiser_id", "a1"),
        "price": {"model": "cpi", "amount": "1", "currency": "USD"},
        "budget": {"total": "1000", "timezone": extra.pop("timezone", "Europe/Berlin")},
        "caps": caps,
        "vast_url": "https://ads.example/vast",
    }
    d.update(extra)
    return parse_campaign(d)


HOURLY_DAILY = [{"limit": 5, "window": "1h"}, {"limit": 20, "window": "1d", "kind": "calendar"}]


def test_seed_2000_concurrent_requests_5_per_hour_20_per_day() -> None:
    c = campaign(HOURLY_DAILY)
    state = FrequencyState()
    t0 = ms(datetime(2025, 3, 12, 6, 0, tzinfo=BERLIN))
    reserved_by_day: Counter[date] = Counter()
    for hour in range(6):
        t = t0 + hour * HOUR
        # All 2,000 are in flight at once: none is committed before the others arrive.
        outcomes = [check_and_reserve(state, c, None, f"h{hour}-r{i}", t, TTL) for i in range(2000)]
        statuses = Counter(o.status for o in outcomes)
        reserved = [o for o in outcomes if o.status == "reserved"]
        reserved_by_day[datetime.fromtimestamp(t / 1000, BERLIN).date()] += len(reserved)
        capped = [o for o in outcomes if o.status == "capped"]
        assert statuses["reserved"] + statuses["capped"] == 2000
        midnight = ms(datetime(2025, 3, 13, 0, 0, tzinfo=BERLIN))
        if hour < 3:
            assert len(reserved) == 5, hour
            assert all(o.blocking is not None and o.blocking.label == "1h" for o in capped)
            assert {o.retry_at_ms for o in capped} == {t + HOUR}
        elif hour == 3:
            # The 20th slot is taken: now both caps block and the day cap,
            # which frees later (next local midnight), is the one reported.
            assert len(reserved) == 5
            assert {o.blocking.label for o in capped if o.blocking} == {"calendar day"}
            assert {o.retry_at_ms for o in capped} == {midnight}
        else:
            # 20 reached: the day window blocks and names the calendar day,
            # retryable at the next local midnight.
            assert reserved == []
            assert {o.blocking.label for o in capped if o.blocking} == {"calendar day"}
            assert {o.retry_at_ms for o in capped} == {midnight}
        # Commit what was reserved (the ads were served).
        for i, o in enumerate(outcomes):
            if o.status == "reserved":
                assert commit(state, f"h{hour}-r{i}", t).status == "committed"
        assert max(reserved_by_day.values()) <= 20
    assert sum(reserved_by_day.values()) == 20
    # Next local day opens a fresh calendar window.
    t_next = ms(datetime(2025, 3, 13, 0, 0, tzinfo=BERLIN))
    out = [check_and_reserve(state, c, None, f"d2-{i}", t_next, TTL) for i in range(50)]
    assert Counter(o.status for o in out)["reserved"] == 5


def check_invariant(active: dict[str, int], c: Campaign, g: GlobalCaps | None = None) -> None:
    """Independent oracle: no window of any rule ever holds more than its limit."""
    stamps = sorted(active.values())
    for rule in cap_rules(c, g):
        if rule.window_seconds is None:
            assert len(stamps) <= rule.limit
        elif rule.kind == "rolling":
            w = rule.window_seconds * 1000
            for x in stamps:
                assert sum(1 for y in stamps if x - w < y <= x) <= rule.limit, rule
        else:
            zone = ZoneInfo(rule.timezone)
            days: Counter[Any] = Counter()
            for y in stamps:
                d = datetime.fromtimestamp(y / 1000, zone).date()
                key = {"day": d, "week": d.isocalendar()[:2], "month": (d.year, d.month)}[rule.unit]
                days[key] += 1
            assert max(days.values(), default=0) <= rule.limit, rule


@pytest.mark.parametrize("seed", range(4))
def test_random_interleaving_never_exceeds_any_window(seed: int) -> None:
    rng = random.Random(seed)
    c = campaign(
        [
            {"limit": 3, "window": "1h"},
            {"limit": 7, "window": "1d", "kind": "calendar"},
            {"limit": 12, "window": "7d", "kind": "calendar", "scope": "advertiser"},
        ],
        recency_gap_s=60,
    )
    g = parse_global_caps({"caps": [{"limit": 25, "window": "30d", "kind": "calendar"}]})
    state = FrequencyState()
    t = ms(datetime(2025, 10, 24, 22, 0, tzinfo=BERLIN))  # spans the DST change
    active: dict[str, int] = {}  # request_id -> counted timestamp (pending or committed)
    pending: list[str] = []
    for i in range(1500):
        # Mostly forward, sometimes out of order by up to 10 minutes.
        t += rng.choice([0, 0, 5_000, 60_000, 20 * 60_000, 3 * HOUR])
        ts = t - rng.choice([0, 0, 0, 600_000])
        op = rng.random()
        if op < 0.6 or not pending:
            rid = f"r{i}"
            now = max(ts, state.clock_ms or 0)
            before = [k for k, v in state.reservations.items() if v.expires_at_ms <= now]
            o = check_and_reserve(state, c, g, rid, ts, TTL)
            for gone in before:
                active.pop(gone, None)
                if gone in pending:
                    pending.remove(gone)
            if o.status == "reserved":
                assert o.ts_ms is not None
                active[rid] = o.ts_ms
                pending.append(rid)
        else:
            rid = pending.pop(rng.randrange(len(pending)))
            if op < 0.85:
                assert commit(state, rid).status == "committed"
            else:
                assert release(state, rid).status == "released"
                del active[rid]
        check_invariant(active, c, g)


def test_recency_gap() -> None:
    c = campaign([], recency_gap_s=30)
    s = FrequencyState()
    t = 1_000_000
    assert check_and_reserve(s, c, None, "a", t, TTL).status == "reserved"
    o = check_and_reserve(s, c, None, "b", t + 29_999, TTL)
    assert o.status == "capped" and o.blocking is not None
    assert o.blocking.reason == "recency" and o.blocking.label == "recency 30s"
    assert o.retry_at_ms == t + 30_000
    assert check_and_reserve(s, c, None, "c", t + 30_000, TTL).status == "reserved"


def test_global_recency_applies_across_campaigns() -> None:
    g = parse_global_caps({"recency_gap_s": 120})
    c1, c2 = campaign([], campaign_id="c1"), campaign([], campaign_id="c2")
    s = FrequencyState()
    assert check_and_reserve(s, c1, g, "a", 0, TTL).status == "reserved"
    o = check_and_reserve(s, c2, g, "b", 60_000, TTL)
    assert o.status == "capped" and o.blocking and o.blocking.scope == "global"
    assert check_and_reserve(s, c2, g, "c", 120_000, TTL).status == "reserved"


def test_advertiser_cap_is_shared_by_its_campaigns() -> None:
    adv = [{"limit": 3, "window": "1h", "scope": "advertiser"}]
    c1 = campaign(adv, campaign_id="c1")
    c2 = campaign([*adv, {"limit": 10, "window": "1h"}], campaign_id="c2")
    other = campaign(adv, campaign_id="c3", advertiser_id="a2")
    s = FrequencyState()
    assert [check_and_reserve(s, c1, None, f"x{i}", 0, TTL).status for i in range(2)] == [
        "reserved"
    ] * 2
    assert check_and_reserve(s, c2, None, "y0", 1, TTL).status == "reserved"
    o = check_and_reserve(s, c2, None, "y1", 2, TTL)
    assert o.status == "capped" and o.blocking and o.blocking.scope == "advertiser"
    assert o.blocking.key == "advertiser:a1:r3600"
    # Another advertiser is unaffected.
    assert check_and_reserve(s, other, None, "z0", 3, TTL).status == "reserved"


def test_global_cap_across_campaigns_and_strictest_is_reported() -> None:
    g = parse_global_caps({"caps": [{"limit": 2, "window": "lifetime"}]})
    c1 = campaign([{"limit": 1, "window": "1h"}], campaign_id="c1")
    c2 = campaign([], campaign_id="c2")
    s = FrequencyState()
    assert check_and_reserve(s, c1, g, "a", 0, TTL).status == "reserved"
    # c1's hourly cap (retry in 1 h) and nothing else block: hourly named.
    o = check_and_reserve(s, c1, g, "b", 10, TTL)
    assert o.blocking and o.blocking.label == "1h" and o.retry_at_ms == HOUR
    assert check_and_reserve(s, c2, g, "c", 20, TTL).status == "reserved"
    assert commit(s, "a").status == commit(s, "c").status == "committed"
    # Now both the hourly and the global lifetime cap block c1: lifetime
    # never frees, so it is the strictest and is reported.
    o = check_and_reserve(s, c1, g, "d", 30, TTL)
    assert o.status == "capped" and o.blocking
    assert o.blocking.scope == "global" and o.blocking.label == "lifetime"
    assert o.retry_at_ms is None
    o = check_and_reserve(s, c2, g, "e", 2 * HOUR, TTL)
    assert o.status == "capped" and o.blocking and o.blocking.key == "global:*:life"


def test_same_window_caps_share_one_log_and_strictest_limit_wins() -> None:
    c = campaign([{"limit": 5, "window": "1h"}, {"limit": 2, "window": 3600}])
    s = FrequencyState()
    got = [check_and_reserve(s, c, None, f"r{i}", i, TTL).status for i in range(4)]
    assert got == ["reserved", "reserved", "capped", "capped"]
    assert s.logs == {"campaign:c1:r3600": [0, 1]}  # one entry per ad, not per cap


def test_idempotent_reserve_commit_release() -> None:
    c = campaign([{"limit": 2, "window": "1h"}])
    s = FrequencyState()
    first = check_and_reserve(s, c, None, "a", 100, TTL)
    snapshot = s.to_json_bytes()
    again = check_and_reserve(s, c, None, "a", 200, TTL)
    assert again.status == "reserved" and again.duplicate and again.ts_ms == first.ts_ms
    assert s.to_json_bytes() == snapshot
    check_and_reserve(s, c, None, "b", 300, TTL)
    capped = check_and_reserve(s, c, None, "x", 400, TTL)
    assert capped.status == "capped"
    # Releasing "b" frees a slot, but the duplicate of "x" keeps its answer.
    assert release(s, "b").status == "released"
    dup = check_and_reserve(s, c, None, "x", 500, TTL)
    assert dup.status == "capped" and dup.duplicate and dup.blocking == capped.blocking
    # Also after a JSON round trip of the row.
    s2 = FrequencyState.from_json_bytes(s.to_json_bytes())
    dup2 = check_and_reserve(s2, c, None, "x", 500, TTL)
    assert dup2.status == "capped" and dup2.blocking == capped.blocking
    assert commit(s, "a", 600).status == "committed"
    snapshot = s.to_json_bytes()
    assert commit(s, "a", 600).status == "duplicate"
    assert s.to_json_bytes() == snapshot
    assert commit(s, "b").status == "conflict"
    assert release(s, "b").status == "duplicate"
    assert commit(s, "x").status == "not_reserved"
    assert commit(s, "never").status == "unknown"
    assert check_and_reserve(s, c, None, "a", 700, TTL).duplicate


def test_expiry_by_event_time_not_wall_clock() -> None:
    # Timestamps in 2001: if the wall clock were used, everything would have
    # expired long ago and the first assertions would fail.
    c = campaign([{"limit": 2, "window": "1d"}])
    s = FrequencyState()
    t = ms(datetime(2001, 5, 1, 12, 0, tzinfo=BERLIN))
    for rid in ("a", "b"):
        assert check_and_reserve(s, c, None, rid, t, TTL).status == "reserved"
    assert check_and_reserve(s, c, None, "c", t + TTL - 1, TTL).status == "capped"
    # The next event at or after expiry releases both reservations first.
    o = check_and_reserve(s, c, None, "d", t + TTL, TTL)
    assert o.status == "reserved"
    assert set(s.reservations) == {"d"}
    assert s.records["a"].status == "expired"


def test_expire_function_and_late_commit() -> None:
    c = campaign([{"limit": 1, "window": "1h"}, {"limit": 5, "window": "lifetime"}])
    s = FrequencyState()
    check_and_reserve(s, c, None, "a", 1_000, TTL)
    rules = cap_rules(c, None)
    assert [usage(s, r, 1_000) for r in rules] == [1, 1]
    assert usage(s, rules[0], 1_000 + TTL) == 0  # advisory view already ignores it
    assert expire(s, 1_000 + TTL - 1).expired == ()
    res = expire(s, 1_000 + TTL)
    assert res.expired == ("a",)
    assert s.clock_ms == 1_000  # a timer does not move the row's event clock
    assert [usage(s, r, 1_000) for r in rules] == [0, 0]
    assert expire(s, 10**12).expired == ()
    # The ad was served after all: the late commit counts it again.
    assert commit(s, "a").status == "committed_late"
    assert [usage(s, r, 1_000) for r in rules] == [1, 1]
    assert commit(s, "a").status == "duplicate"
    assert check_and_reserve(s, c, None, "b", 2_000, TTL).status == "capped"


def test_release_after_expiry_blocks_late_commit() -> None:
    c = campaign([{"limit": 1, "window": "1h"}])
    s = FrequencyState()
    check_and_reserve(s, c, None, "a", 0, TTL)
    expire(s, TTL)
    assert release(s, "a").status == "released"
    assert commit(s, "a").status == "conflict"
    assert usage(s, cap_rules(c, None)[0], 0) == 0


def local(y: int, mo: int, d: int, h: int = 0, mi: int = 0, tz: str = "Europe/Berlin") -> int:
    return ms(datetime(y, mo, d, h, mi, tzinfo=ZoneInfo(tz)))


@pytest.mark.parametrize(
    ("day", "hours"),
    [((2024, 3, 31), 23), ((2024, 10, 27), 25), ((2024, 6, 1), 24)],
)
def test_calendar_day_across_dst(day: tuple[int, int, int], hours: int) -> None:
    start, end = period_bounds(local(*day, 12), "day", "Europe/Berlin")
    assert start == local(*day)
    assert (end - start) == hours * HOUR
    c = campaign([{"limit": 2, "window": "1d", "kind": "calendar"}])
    s = FrequencyState()
    assert check_and_reserve(s, c, None, "a", start, TTL).status == "reserved"
    assert check_and_reserve(s, c, None, "b", start + HOUR, TTL).status == "reserved"
    commit(s, "a")
    commit(s, "b")
    o = check_and_reserve(s, c, None, "c", end - 1, TTL)
    assert o.status == "capped" and o.retry_at_ms == end
    assert check_and_reserve(s, c, None, "d", end, TTL).status == "reserved"


def test_calendar_week_and_month_boundaries() -> None:
    # 2024-10-27 is a Sunday with a 25 h day; the ISO week ends at Monday 00:00.
    start, end = period_bounds(local(2024, 10, 27, 23, 30), "week", "Europe/Berlin")
    assert start == local(2024, 10, 21) and end == local(2024, 10, 28)
    assert end - start == 7 * 24 * HOUR + HOUR
    start, end = period_bounds(local(2024, 3, 31, 23, 59), "month", "Europe/Berlin")
    assert start == local(2024, 3, 1) and end == local(2024, 4, 1)
    start, end = period_bounds(local(2024, 12, 31, 23, 59), "month", "Europe/Berlin")
    assert end == local(2025, 1, 1)
    c = campaign([{"limit": 1, "window": "7d", "kind": "calendar"}])
    s = FrequencyState()
    o = check_and_reserve(s, c, None, "a", local(2024, 10, 21, 0, 0), TTL)
    assert o.status == "reserved" and commit(s, "a").status == "committed"
    o = check_and_reserve(s, c, None, "b", local(2024, 10, 27, 23, 59), TTL)
    assert o.status == "capped" and o.retry_at_ms == local(2024, 10, 28)
    assert check_and_reserve(s, c, None, "c", local(2024, 10, 28), TTL).status == "reserved"


@pytest.mark.parametrize("tz", ["America/Santiago", "Asia/Beirut", "America/Havana", "UTC"])
@pytest.mark.parametrize("unit", ["day", "week", "month"])
def test_period_bounds_oracle_with_midnight_dst(tz: str, unit: str) -> None:
    # Zones whose DST changes happen at midnight: the local day may start at 01:00.
    zone = ZoneInfo(tz)
    rng = random.Random(f"{tz}{unit}")

    def local_date(t: int) -> date:
        return datetime.fromtimestamp(t // 1000, zone).date()

    def first_day(d: date) -> date:
        if unit == "week":
            return d - timedelta(days=d.weekday())
        return d.replace(day=1) if unit == "month" else d

    for _ in range(150):
        t = rng.randrange(ms(datetime(2015, 1, 1)), ms(datetime(2026, 1, 1)))
        start, end = period_bounds(t, unit, tz)
        assert start <= t < end
        first = first_day(local_date(t))
        assert local_date(start) == first and local_date(start - 1000) < first
        assert first_day(local_date(end)) > first and first_day(local_date(end - 1000)) == first


def apply_ops(
    state: FrequencyState, c: Campaign, g: GlobalCaps | None, seed: int, roundtrip: bool
) -> FrequencyState:
    rng = random.Random(seed)
    t = 1_700_000_000_000
    live: list[str] = []
    for i in range(400):
        t += rng.choice([0, 1_000, 90_000, HOUR])
        if roundtrip:
            state = FrequencyState.from_json_bytes(state.to_json_bytes())
        r = rng.random()
        if r < 0.55 or not live:
            o = check_and_reserve(state, c, g, f"r{i % 350}", t, TTL, horizon_ms=2 * HOUR)
            if o.status == "reserved" and not o.duplicate:
                live.append(f"r{i % 350}")
        elif r < 0.8:
            commit(state, live.pop(rng.randrange(len(live))), t, horizon_ms=2 * HOUR)
        elif r < 0.9:
            release(state, live.pop(rng.randrange(len(live))))
        else:
            expire(state, t)
    return state


def test_replay_rebuilds_byte_identical_state() -> None:
    c = campaign([*HOURLY_DAILY, {"limit": 40, "window": "lifetime"}], recency_gap_s=10)
    g = parse_global_caps({"caps": [{"limit": 30, "window": "7d", "kind": "calendar"}]})
    a = apply_ops(FrequencyState(), c, g, seed=5, roundtrip=False)
    b = apply_ops(FrequencyState(), c, g, seed=5, roundtrip=False)
    r = apply_ops(FrequencyState(), c, g, seed=5, roundtrip=True)
    assert a.to_json_bytes() == b.to_json_bytes() == r.to_json_bytes()
    assert FrequencyState.from_json_bytes(a.to_json_bytes()).to_dict() == a.to_dict()
    other = apply_ops(FrequencyState(), c, g, seed=6, roundtrip=False)
    assert other.to_json_bytes() != a.to_json_bytes()
    data = a.to_json_bytes()
    assert b", " not in data and b": " not in data


def test_state_stays_bounded_and_forgotten_requests_are_stale() -> None:
    c = campaign([{"limit": 3, "window": "1h"}])
    s = FrequencyState()
    t = 0
    for i in range(3000):
        t += 60_000
        o = check_and_reserve(s, c, None, f"r{i}", t, TTL, horizon_ms=HOUR)
        if o.status == "reserved":
            commit(s, f"r{i}", t, horizon_ms=HOUR)
        assert all(len(log) <= 3 for log in s.logs.values())
        assert len(s.records) <= 61
    assert s.floor_ms is not None and s.floor_ms >= t - HOUR - 60_000
    # A redelivered request from long ago is refused, never counted again.
    before = s.to_json_bytes()
    assert check_and_reserve(s, c, None, "r5", 5 * 60_000, TTL, horizon_ms=HOUR).status == "stale"
    assert s.to_json_bytes() == before


def test_max_records_forgets_whole_groups_and_refuses_rather_than_recounts() -> None:
    c = campaign([{"limit": 1, "window": "1h"}])
    s = FrequencyState()
    for i in range(10):
        check_and_reserve(s, c, None, f"r{i}", 1_000, TTL, max_records=5)
    assert len(s.records) + len(s.reservations) <= 5
    assert s.floor_ms == 1_000
    again = [check_and_reserve(s, c, None, f"r{i}", 1_000, TTL, max_records=5) for i in range(10)]
    # Every redelivery is either answered from memory or refused as stale:
    # none becomes a second reservation.
    assert all(o.duplicate or o.status == "stale" for o in again)
    assert "stale" in {o.status for o in again}
    assert len(s.reservations) == 1


def test_out_of_order_request_is_checked_at_the_row_clock() -> None:
    c = campaign([{"limit": 2, "window": "1h"}])
    s = FrequencyState()
    check_and_reserve(s, c, None, "a", 10 * HOUR, TTL)
    check_and_reserve(s, c, None, "b", 10 * HOUR + 1, TTL)
    # A late request stamped 2 h earlier would see an empty window at its own
    # time; at the row clock the window is full, so it cannot overrun.
    o = check_and_reserve(s, c, None, "late", 8 * HOUR, TTL)
    assert o.status == "capped"


def test_argument_validation() -> None:
    c = campaign([])
    s = FrequencyState()
    for kwargs in ({"ts_ms": -1}, {"ttl_ms": 0}, {"ts_ms": 1.5}, {"request_id": ""}):
        args = {"request_id": "a", "ts_ms": 1, "ttl_ms": 10} | kwargs
        with pytest.raises(ValueError):
            check_and_reserve(s, c, None, args["request_id"], args["ts_ms"], args["ttl_ms"])
    with pytest.raises(ValueError, match="horizon_ms must exceed ttl_ms"):
        check_and_reserve(s, c, None, "a", 1, 10, horizon_ms=10)
    assert s.to_dict() == FrequencyState().to_dict()


def test_release_takes_a_committed_slot_back() -> None:
    # Admission commits at once; a request that is then not served is released.
    c = campaign([{"limit": 1, "window": "1h"}, {"limit": 3, "window": "lifetime"}])
    s = FrequencyState()
    rules = cap_rules(c, None)
    assert check_and_reserve(s, c, None, "a", 1_000, TTL).status == "reserved"
    assert commit(s, "a").status == "committed"
    assert not s.reservations
    assert [usage(s, r, 1_000) for r in rules] == [1, 1]
    assert check_and_reserve(s, c, None, "b", 2_000, TTL).status == "capped"
    # Also after a JSON round trip: the record keeps the keys it counted in.
    s = FrequencyState.from_json_bytes(s.to_json_bytes())
    assert release(s, "a").status == "revoked"
    assert [usage(s, r, 2_000) for r in rules] == [0, 0]
    snapshot = s.to_json_bytes()
    assert release(s, "a").status == "duplicate"
    assert commit(s, "a").status == "conflict"
    assert s.to_json_bytes() == snapshot
    assert check_and_reserve(s, c, None, "c", 3_000, TTL).status == "reserved"


def test_release_of_a_commit_outside_its_window_changes_nothing_else() -> None:
    c = campaign([{"limit": 1, "window": "1m"}])  # a window shorter than the record horizon
    s = FrequencyState()
    check_and_reserve(s, c, None, "a", 0, TTL)
    commit(s, "a")
    # "a" has left its minute (its record is still remembered); "b" counts now.
    check_and_reserve(s, c, None, "b", 120_000, TTL)
    commit(s, "b")
    assert release(s, "a").status == "revoked"
    assert usage(s, cap_rules(c, None)[0], 120_000) == 1
    assert check_and_reserve(s, c, None, "x", 120_001, TTL).status == "capped"
