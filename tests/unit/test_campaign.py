"""Unit tests for streams.campaign: parsing, validation messages, round-trip."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from streams.campaign import (
    MAX_CAPS,
    Campaign,
    CampaignError,
    Cap,
    GlobalCaps,
    campaign_to_dict,
    canonical_json,
    global_caps_to_dict,
    parse_campaign,
    parse_cap,
    parse_global_caps,
    window_label,
)


def base() -> dict[str, Any]:
    return {
        "campaign_id": "c-1",
        "advertiser_id": "adv.1",
        "price": {"model": "cpm", "amount": "2500", "currency": "USD"},
        "budget": {"total": "100", "daily": "10.5", "timezone": "Europe/Berlin"},
        "caps": [
            {"limit": 5, "window": "1h"},
            {"limit": 20, "window": "1d", "kind": "calendar"},
            {"limit": 50, "window": "7d", "kind": "calendar", "scope": "advertiser"},
            {"limit": 3, "window": "lifetime"},
            {"limit": 2, "window": 90},
        ],
        "recency_gap_s": 30,
        "schedule": {"start_ms": 1_700_000_000_000, "end_ms": 1_800_000_000_000},
        "priority": 7,
        "vast_url": "https://ads.example/vast?cb=[CACHEBUSTING]&ts=[TIMESTAMP]",
        "allow_vast_pricing": True,
    }


def test_parse_valid_campaign() -> None:
    c = parse_campaign(base())
    assert c.campaign_id == "c-1" and c.advertiser_id == "adv.1"
    assert c.price.model == "cpm" and c.price.amount_micros == 2_500_000_000
    assert c.max_price_micros == 2_500_000  # 2500 CPM = 2.5 per impression
    assert c.budget.total_micros == 100_000_000 and c.budget.daily_micros == 10_500_000
    assert c.timezone == "Europe/Berlin"
    assert c.caps[0] == Cap(5, 3600, "rolling", None, "campaign")
    assert c.caps[1] == Cap(20, 86400, "calendar", "day", "campaign")
    assert c.caps[2] == Cap(50, 7 * 86400, "calendar", "week", "advertiser")
    assert c.caps[3] == Cap(3, None, "rolling", None, "campaign")
    assert c.caps[4].window_seconds == 90
    assert c.recency_gap_s == 30 and c.priority == 7 and c.allow_vast_pricing is True
    assert c.schedule.contains(1_700_000_000_000)
    assert not c.schedule.contains(1_800_000_000_000)  # end is exclusive
    assert not c.schedule.contains(1_699_999_999_999)


def test_defaults_for_optional_fields() -> None:
    d = base()
    for key in ("caps", "recency_gap_s", "schedule", "priority", "allow_vast_pricing"):
        del d[key]
    del d["budget"]["daily"]
    del d["budget"]["timezone"]
    c = parse_campaign(d)
    assert c.caps == () and c.recency_gap_s == 0 and c.priority == 0
    assert c.schedule.start_ms is None and c.schedule.end_ms is None
    assert c.budget.daily_micros is None and c.budget.timezone == "UTC"
    assert c.allow_vast_pricing is False and c.v == 1


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: None,
        lambda d: d.update(caps=[]),
        lambda d: d["price"].update(model="CPI", amount="0.75"),
        lambda d: d.update(schedule={"start_ms": None, "end_ms": 5}),
        lambda d: d["budget"].update(daily=None),
        lambda d: d.update(priority=-3, allow_vast_pricing=False),
    ],
)
def test_round_trip_is_exact(mutate: Any) -> None:
    d = base()
    mutate(d)
    c = parse_campaign(d)
    canon = campaign_to_dict(c)
    assert parse_campaign(canon) == c
    data = canonical_json(canon)
    assert parse_campaign(json.loads(data)) == c
    # Deterministic bytes: re-encoding the re-parsed campaign is identical.
    assert canonical_json(campaign_to_dict(parse_campaign(json.loads(data)))) == data
    assert b" " not in data.replace(b"ads.example", b"")  # compact separators


def test_canonical_json_is_order_independent_and_refuses_floats() -> None:
    a = {"b": 1, "a": [1, {"y": 2, "x": None}]}
    b = {"a": [1, {"x": None, "y": 2}], "b": 1}
    assert canonical_json(a) == canonical_json(b) == b'{"a":[1,{"x":null,"y":2}],"b":1}'
    with pytest.raises(TypeError):
        canonical_json({"x": 0.5})


def test_input_conveniences_equal_canonical_values() -> None:
    d = base()
    d["id"] = d.pop("campaign_id")
    d["price"] = {"model": "cpm", "amount_micros": 2_500_000_000, "currency": "USD"}
    d["budget"] = {
        "total_micros": 100_000_000,
        "daily_micros": 10_500_000,
        "timezone": "Europe/Berlin",
    }
    d["caps"][0]["window"] = 3600
    d["caps"][1]["unit"] = "day"
    assert parse_campaign(d) == parse_campaign(base())


def test_json_floats_for_prices_are_exact() -> None:
    d = json.loads(json.dumps(base()).replace('"2500"', "2500.0").replace('"10.5"', "10.5"))
    assert parse_campaign(d) == parse_campaign(base())


def _set(path: str, value: Any) -> Any:
    def mutate(d: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = d
        for p in parents:
            target = target[int(p)] if p.isdigit() else target[p]
        if value is _DELETE:
            del target[last]
        elif last.isdigit():
            target[int(last)] = value
        else:
            target[last] = value

    return mutate


_DELETE = object()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            _set("caps", [{"limit": 1, "window": "1h"}] * (MAX_CAPS + 1)),
            "caps: 11 caps given, at most 10",
        ),
        (_set("caps.0.limit", 0), "caps[0].limit: 0 is out of range [1, 1000]"),
        (_set("caps.0.limit", "5"), "caps[0].limit: expected an integer, got '5'"),
        (_set("caps.0.limit", 1001), "caps[0].limit: 1001 is out of range"),
        (_set("caps.0.window", "2h"), "caps[0].window: unknown window '2h'"),
        (_set("caps.0.window", 0), "caps[0].window: 0 is out of range"),
        (_set("caps.0.window", 3.5), "caps[0].window: expected seconds or one of"),
        (_set("caps.0.window", 400 * 86400), "caps[0].window: 34560000 is out of range"),
        (_set("caps.0.kind", "sliding"), "caps[0].kind: 'sliding' is not 'rolling' or 'calendar'"),
        (_set("caps.1.window", "1h"), "caps[1].window: '1h' has no calendar unit"),
        (_set("caps.1.window", "lifetime"), "caps[1].kind: a lifetime cap has no calendar"),
        (_set("caps.1.unit", "week"), "caps[1].unit: 'week' does not match window '1d'"),
        (_set("caps.0.unit", "day"), "caps[0].unit: only calendar caps have a unit"),
        (_set("caps.0.scope", "global"), "caps[0].scope: 'global' is not allowed here"),
        (_set("caps.0.scope", "user"), "caps[0].scope: 'user' is not 'campaign'"),
        (_set("caps.0.window", _DELETE), "caps[0].window: required field is missing"),
        (_set("caps.0.max", 3), "caps[0]: unknown field(s) 'max'"),
        (_set("caps", {"limit": 1}), "caps: expected a list of caps"),
        (
            _set("budget.timezone", "Mars/Olympus_Mons"),
            "budget.timezone: unknown timezone 'Mars/Olympus_Mons'",
        ),
        (_set("budget.timezone", "../etc/passwd"), "budget.timezone: '../etc/passwd' is not a tz"),
        (_set("budget.total", _DELETE), "budget.total: required field is missing"),
        (_set("budget.total", "-5"), "budget.total: '-5' must not be negative"),
        (_set("budget.daily", "1.0000001"), "budget.daily: '1.0000001' has more than 6 decimal"),
        (_set("budget.total_micros", 5), "budget: give either total or total_micros, not both"),
        (_set("schedule.end_ms", 1_600_000_000_000), "schedule.end_ms: 1600000000000 is not after"),
        (_set("schedule.end_ms", 1_700_000_000_000), "schedule.end_ms: 1700000000000 is not after"),
        (_set("schedule.start_ms", -1), "schedule.start_ms: -1 is out of range"),
        (_set("price.model", "cpc"), "price.model: 'cpc' is not 'cpm' or 'cpi'"),
        (_set("price.amount", "-2.5"), "price.amount: '-2.5' must not be negative"),
        (
            _set("price.amount", "0.0004"),
            "price.amount_micros: CPM of 400 micros is below one micro",
        ),
        (_set("price.amount", 0.1234567), "price.amount: float 0.1234567 has more than 6 decimal"),
        (_set("price.currency", "usd"), "price.currency: 'usd' is not an ISO 4217"),
        (_set("vast_url", _DELETE), "vast_url: required field is missing"),
        (
            _set("vast_url", "ftp://ads.example/v"),
            "vast_url: 'ftp://ads.example/v' is not an absolute",
        ),
        (_set("vast_url", "/relative/vast"), "vast_url: '/relative/vast' is not an absolute"),
        (_set("vast_url", ""), "vast_url: expected a non-empty string"),
        (_set("cap", []), "campaign: unknown field(s) 'cap'"),
        (_set("v", 2), "v: unsupported schema version 2"),
        (_set("campaign_id", "c:1"), "campaign_id: 'c:1' is not a valid id"),
        (_set("id", "other"), "id: 'other' differs from campaign_id 'c-1'"),
        (_set("campaign_id", _DELETE), "campaign_id: required field is missing"),
        (_set("advertiser_id", _DELETE), "advertiser_id: required field is missing"),
        (_set("priority", True), "priority: expected an integer, got True"),
        (
            _set("allow_vast_pricing", "yes"),
            "allow_vast_pricing: expected true or false, got 'yes'",
        ),
        (_set("recency_gap_s", -1), "recency_gap_s: -1 is out of range"),
        (_set("price", "2.5"), "price: expected an object, got str"),
    ],
)
def test_invalid_configs_have_precise_messages(mutate: Any, message: str) -> None:
    d = copy.deepcopy(base())
    mutate(d)
    with pytest.raises(CampaignError) as exc:
        parse_campaign(d)
    assert message in str(exc.value)


def test_not_an_object() -> None:
    with pytest.raises(CampaignError, match="campaign: expected an object, got list"):
        parse_campaign([])


def test_global_caps() -> None:
    g = parse_global_caps(
        {
            "caps": [{"limit": 10, "window": "1d", "kind": "calendar"}],
            "recency_gap_s": 60,
            "timezone": "America/New_York",
        }
    )
    assert g == GlobalCaps((Cap(10, 86400, "calendar", "day", "global"),), 60, "America/New_York")
    assert parse_global_caps(global_caps_to_dict(g)) == g
    assert parse_global_caps(None) == GlobalCaps()
    msg = r"global_caps\.caps\[0\]\.scope: 'campaign' is not allowed"
    with pytest.raises(CampaignError, match=msg):
        parse_global_caps({"caps": [{"limit": 1, "window": "1h", "scope": "campaign"}]})
    with pytest.raises(CampaignError, match=r"global_caps\.timezone: unknown timezone 'Nowhere/X'"):
        parse_global_caps({"timezone": "Nowhere/X"})
    with pytest.raises(CampaignError, match="global_caps: unknown field"):
        parse_global_caps({"cap": []})


def test_parse_cap_and_labels() -> None:
    assert window_label(parse_cap({"limit": 1, "window": "1m"})) == "1m"
    assert window_label(parse_cap({"limit": 1, "window": 5400})) == "90m"
    assert window_label(parse_cap({"limit": 1, "window": 7200})) == "2h"
    assert window_label(parse_cap({"limit": 1, "window": 61})) == "61s"
    assert (
        window_label(parse_cap({"limit": 1, "window": "30d", "kind": "calendar"}))
        == "calendar month"
    )
    assert window_label(parse_cap({"limit": 9, "window": "lifetime"})) == "lifetime"
    # Lifetime caps count, they keep no timestamps, so large limits are fine.
    assert parse_cap({"limit": 10**6, "window": "lifetime"}).limit == 10**6


def test_campaign_is_frozen_and_hashable() -> None:
    c = parse_campaign(base())
    with pytest.raises(AttributeError):
        c.priority = 3  # type: ignore[misc]
    assert {c: 1}[parse_campaign(base())] == 1
    assert isinstance(c, Campaign)
