"""Campaign configuration: the value of the compacted ``xsp.campaigns`` topic.

:func:`parse_campaign` turns a decoded JSON object into a frozen
:class:`Campaign` or raises :class:`CampaignError` naming the field and the
bad value. :func:`campaign_to_dict` emits the canonical form, which
:func:`parse_campaign` reads back to an equal object, and
:func:`canonical_json` encodes any state dict to deterministic bytes.

Canonical wire form (input may also use the conveniences listed below)::

    {"v": 1, "campaign_id": "c1", "advertiser_id": "a1",
     "price": {"model": "cpm", "amount_micros": 2500000, "currency": "USD"},
     "budget": {"total_micros": 100000000, "daily_micros": null,
                "timezone": "Europe/Berlin"},
     "caps": [{"limit": 5, "window": 3600, "kind": "rolling", "scope": "campaign"},
              {"limit": 20, "window": 86400, "kind": "calendar", "unit": "day",
               "scope": "advertiser"}],
     "recency_gap_s": 0, "schedule": {"start_ms": null, "end_ms": null},
     "priority": 0, "vast_url": "https://ads.example/vast?cb=[CACHEBUSTING]",
     "allow_vast_pricing": false}

Input conveniences: ``id`` for ``campaign_id``; ``price.amount`` and
``budget.total`` / ``budget.daily`` in currency units (see
:func:`streams.money.parse_amount`); cap windows as ``"1m"``, ``"1h"``,
``"1d"``, ``"7d"``, ``"30d"``, ``"lifetime"`` or whole seconds; cap ``kind``
defaults to ``rolling`` and ``scope`` to ``campaign``; a calendar cap's unit is
implied by its window (1d → day, 7d → ISO week, 30d → month). Unknown fields
are rejected so that a typo in a money-relevant config never passes silently.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from streams import json_codec
from streams.money import (
    MoneyError,
    check_micros,
    cpm_to_cpi_micros,
    parse_amount,
    parse_currency,
)

__all__ = [
    "CALENDAR_UNIT_SECONDS",
    "MAX_CAPS",
    "MAX_LIFETIME_LIMIT",
    "MAX_WINDOWED_LIMIT",
    "MAX_WINDOW_SECONDS",
    "SCHEMA_VERSION",
    "Budget",
    "Campaign",
    "CampaignError",
    "Cap",
    "GlobalCaps",
    "Price",
    "Schedule",
    "campaign_to_dict",
    "canonical_json",
    "cap_to_dict",
    "global_caps_to_dict",
    "load_zone",
    "parse_campaign",
    "parse_cap",
    "parse_global_caps",
    "window_label",
]

SCHEMA_VERSION = 1
MAX_CAPS = 10
# A windowed cap of N keeps up to N timestamps per user: bound N so one
# misconfigured cap cannot make every user row huge.
MAX_WINDOWED_LIMIT = 1000
MAX_LIFETIME_LIMIT = 1_000_000_000
# Longer than a year is "lifetime" in practice and would keep logs for ever.
MAX_WINDOW_SECONDS = 366 * 86400
MAX_PRIORITY = 2**31 - 1
MAX_URL_LENGTH = 8192
_MAX_MS = 2**53  # JSON-safe integer range for timestamps

NAMED_WINDOWS: dict[str, int | None] = {
    "1m": 60,
    "1h": 3600,
    "1d": 86400,
    "7d": 7 * 86400,
    "30d": 30 * 86400,
    "lifetime": None,
}
CALENDAR_UNIT_SECONDS: dict[str, int] = {"day": 86400, "week": 7 * 86400, "month": 30 * 86400}
_UNIT_BY_SECONDS = {s: u for u, s in CALENDAR_UNIT_SECONDS.items()}
# Ids become parts of state keys ("campaign:<id>:..."), so ':' and spaces are out.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,127}")
_ZONE_NAME = re.compile(r"[A-Za-z0-9_+\-]+(?:/[A-Za-z0-9_+\-]+)*")

Scope = Literal["campaign", "advertiser", "global"]
Kind = Literal["rolling", "calendar"]
Unit = Literal["day", "week", "month"]
Model = Literal["cpm", "cpi"]


class CampaignError(ValueError):
    """An invalid campaign or cap config; the message names field and value."""


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON (``streams.json_codec``) of money state: floats refused.

    Guarantees: equal dicts (of str/int/bool/None/list/dict) give equal
    bytes regardless of insertion order; floats are refused because their
    text is not a stable money representation.
    """

    def _no_float(o: Any) -> Any:
        if isinstance(o, float):
            raise TypeError("canonical_json refuses floats")
        if isinstance(o, dict):
            return {k: _no_float(v) for k, v in o.items()}
        if isinstance(o, list | tuple):
            return [_no_float(v) for v in o]
        return o

    return json_codec.dumps(_no_float(obj))


def load_zone(name: str) -> ZoneInfo:
    """Return the tz database zone ``name`` or raise CampaignError."""
    if not isinstance(name, str) or not _ZONE_NAME.fullmatch(name):
        raise CampaignError(f"timezone: {name!r} is not a tz database zone name")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise CampaignError(f"timezone: unknown timezone {name!r}") from exc


@dataclass(frozen=True, slots=True)
class Price:
    """What one impression costs: ``cpm`` (per thousand) or ``cpi`` (per impression)."""

    model: Model
    amount_micros: int
    currency: str

    @property
    def per_impression_micros(self) -> int:
        """Price of one impression in micros (CPM/1000, half-even rounding)."""
        if self.model == "cpm":
            return cpm_to_cpi_micros(self.amount_micros)
        return self.amount_micros


@dataclass(frozen=True, slots=True)
class Budget:
    """Total and optional daily budget; ``timezone`` sets the day boundary."""

    total_micros: int
    daily_micros: int | None
    timezone: str


@dataclass(frozen=True, slots=True)
class Cap:
    """At most ``limit`` ads per window to one user.

    ``window_seconds`` is None for lifetime caps. Rolling windows are the
    ``window_seconds`` leading up to the request; calendar windows are the
    current ``unit`` (day, ISO week starting Monday, month) in the owning
    config's timezone, and ``window_seconds`` is then its nominal length.
    """

    limit: int
    window_seconds: int | None
    kind: Kind = "rolling"
    unit: Unit | None = None
    scope: Scope = "campaign"


@dataclass(frozen=True, slots=True)
class Schedule:
    """Serving interval ``[start_ms, end_ms)`` in epoch milliseconds; None = open."""

    start_ms: int | None = None
    end_ms: int | None = None

    def contains(self, ts_ms: int) -> bool:
        """True when ``ts_ms`` is inside the interval (start inclusive, end exclusive)."""
        if self.start_ms is not None and ts_ms < self.start_ms:
            return False
        return not (self.end_ms is not None and ts_ms >= self.end_ms)


@dataclass(frozen=True, slots=True)
class Campaign:
    """One campaign's validated config (see module docstring for the wire form)."""

    campaign_id: str
    advertiser_id: str
    price: Price
    budget: Budget
    caps: tuple[Cap, ...]
    recency_gap_s: int
    schedule: Schedule
    priority: int
    vast_url: str
    allow_vast_pricing: bool = False
    v: int = SCHEMA_VERSION

    @property
    def timezone(self) -> str:
        """The campaign's timezone (budget days and calendar caps)."""
        return self.budget.timezone

    @property
    def max_price_micros(self) -> int:
        """The most one impression can cost: what a budget reservation holds."""
        return self.price.per_impression_micros


@dataclass(frozen=True, slots=True)
class GlobalCaps:
    """The optional per-user caps across all campaigns (``scope == 'global'``).

    ``recency_gap_s`` is the minimum gap between any two ads to one user;
    ``timezone`` sets calendar boundaries for global calendar caps.
    """

    caps: tuple[Cap, ...] = ()
    recency_gap_s: int = 0
    timezone: str = "UTC"
    v: int = SCHEMA_VERSION


# --------------------------------------------------------------------------- helpers


def _req(obj: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in obj:
        raise CampaignError(f"{path}{key}: required field is missing")
    return obj[key]


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise CampaignError(f"{path}: expected an object, got {type(value).__name__}")
    return value


def _no_unknown(obj: Mapping[str, Any], allowed: set[str], path: str) -> None:
    unknown = sorted(str(k) for k in obj if k not in allowed)
    if unknown:
        where = path or "campaign"
        raise CampaignError(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))} "
            f"(allowed: {', '.join(sorted(allowed))})"
        )


def _int(value: Any, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CampaignError(f"{field}: expected an integer, got {value!r}")
    if not lo <= value <= hi:
        raise CampaignError(f"{field}: {value} is out of range [{lo}, {hi}]")
    return value


def _ident(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise CampaignError(
            f"{field}: {value!r} is not a valid id "
            "(1-128 of letters, digits, '.', '_', '-', starting with a letter or digit)"
        )
    return value


def _money(
    obj: Mapping[str, Any], units_key: str, micros_key: str, path: str, *, required: bool
) -> int | None:
    has_units, has_micros = units_key in obj, micros_key in obj
    if has_units and has_micros:
        raise CampaignError(f"{path}: give either {units_key} or {micros_key}, not both")
    try:
        if has_micros:
            raw = obj[micros_key]
            if raw is None and not required:
                return None
            return check_micros(raw, field=f"{path}.{micros_key}")
        if has_units:
            raw = obj[units_key]
            if raw is None and not required:
                return None
            return parse_amount(raw, field=f"{path}.{units_key}")
    except MoneyError as exc:
        raise CampaignError(str(exc)) from exc
    if required:
        raise CampaignError(f"{path}.{units_key}: required field is missing")
    return None


def window_label(cap: Cap) -> str:
    """Short human name of a cap's window: '1h', '90s', 'lifetime', 'calendar day'."""
    if cap.window_seconds is None:
        return "lifetime"
    if cap.kind == "calendar":
        return f"calendar {cap.unit}"
    s = cap.window_seconds
    for size, suffix in ((86400, "d"), (3600, "h"), (60, "m")):
        if s % size == 0:
            return f"{s // size}{suffix}"
    return f"{s}s"


# --------------------------------------------------------------------------- caps


def parse_cap(obj: Any, *, path: str = "cap", default_scope: Scope = "campaign") -> Cap:
    """Validate one cap object; raises CampaignError naming ``path`` and the value."""
    m = _mapping(obj, path)
    _no_unknown(m, {"limit", "window", "kind", "unit", "scope"}, path)
    kind = m.get("kind", "rolling")
    if kind not in ("rolling", "calendar"):
        raise CampaignError(f"{path}.kind: {kind!r} is not 'rolling' or 'calendar'")
    scope = m.get("scope", default_scope)
    if scope not in ("campaign", "advertiser", "global"):
        raise CampaignError(f"{path}.scope: {scope!r} is not 'campaign', 'advertiser' or 'global'")
    raw_window = _req(m, "window", f"{path}.")
    window: int | None
    if isinstance(raw_window, str):
        if raw_window not in NAMED_WINDOWS:
            raise CampaignError(
                f"{path}.window: unknown window {raw_window!r} "
                f"(use whole seconds or one of {', '.join(NAMED_WINDOWS)})"
            )
        window = NAMED_WINDOWS[raw_window]
    elif isinstance(raw_window, int) and not isinstance(raw_window, bool):
        window = _int(raw_window, f"{path}.window", 1, MAX_WINDOW_SECONDS)
    else:
        raise CampaignError(
            f"{path}.window: expected seconds or one of {', '.join(NAMED_WINDOWS)}, "
            f"got {raw_window!r}"
        )
    unit = m.get("unit")
    if kind == "calendar":
        if window is None:
            raise CampaignError(
                f"{path}.kind: a lifetime cap has no calendar boundaries; use kind 'rolling'"
            )
        implied = _UNIT_BY_SECONDS.get(window)
        if implied is None:
            raise CampaignError(
                f"{path}.window: {raw_window!r} has no calendar unit "
                "(calendar caps use 1d = day, 7d = week, 30d = month)"
            )
        if unit is not None and unit != implied:
            raise CampaignError(
                f"{path}.unit: {unit!r} does not match window {raw_window!r} (implies {implied!r})"
            )
        unit = implied
    elif unit is not None:
        raise CampaignError(f"{path}.unit: only calendar caps have a unit, got {unit!r}")
    limit_hi = MAX_LIFETIME_LIMIT if window is None else MAX_WINDOWED_LIMIT
    limit = _int(_req(m, "limit", f"{path}."), f"{path}.limit", 1, limit_hi)
    return Cap(limit=limit, window_seconds=window, kind=kind, unit=unit, scope=scope)


def cap_to_dict(cap: Cap) -> dict[str, Any]:
    """Canonical dict of a cap; :func:`parse_cap` reads it back to an equal Cap."""
    d: dict[str, Any] = {
        "limit": cap.limit,
        "window": "lifetime" if cap.window_seconds is None else cap.window_seconds,
        "kind": cap.kind,
        "scope": cap.scope,
    }
    if cap.unit is not None:
        d["unit"] = cap.unit
    return d


def _parse_caps(
    raw: Any, path: str, allowed_scopes: tuple[str, ...], default: Scope
) -> tuple[Cap, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list | tuple):
        raise CampaignError(f"{path}: expected a list of caps, got {type(raw).__name__}")
    if len(raw) > MAX_CAPS:
        raise CampaignError(f"{path}: {len(raw)} caps given, at most {MAX_CAPS} allowed")
    caps = []
    for i, item in enumerate(raw):
        cap = parse_cap(item, path=f"{path}[{i}]", default_scope=default)
        if cap.scope not in allowed_scopes:
            raise CampaignError(
                f"{path}[{i}].scope: {cap.scope!r} is not allowed here "
                f"(allowed: {', '.join(allowed_scopes)})"
            )
        caps.append(cap)
    return tuple(caps)


def _check_version(m: Mapping[str, Any]) -> None:
    v = m.get("v", SCHEMA_VERSION)
    if v != SCHEMA_VERSION or isinstance(v, bool):
        raise CampaignError(
            f"v: unsupported schema version {v!r} (this code reads {SCHEMA_VERSION})"
        )


def _gap(raw: Any, field: str) -> int:
    return _int(raw, field, 0, MAX_WINDOW_SECONDS)


# --------------------------------------------------------------------------- campaign

_TOP = {
    "v",
    "campaign_id",
    "id",
    "advertiser_id",
    "price",
    "budget",
    "caps",
    "recency_gap_s",
    "schedule",
    "priority",
    "vast_url",
    "allow_vast_pricing",
}


def parse_campaign(obj: Any) -> Campaign:
    """Validate a decoded campaign config and return a frozen Campaign.

    Guarantees: either a fully valid Campaign (every amount in exact micros,
    zone loadable, at most 10 caps, schedule end after start, http(s)
    vast_url) or a CampaignError whose message starts with the field path
    (e.g. ``caps[2].window``) and shows the offending value.
    """
    m = _mapping(obj, "campaign")
    _no_unknown(m, _TOP, "")
    _check_version(m)

    if "campaign_id" in m and "id" in m and m["campaign_id"] != m["id"]:
        raise CampaignError(f"id: {m['id']!r} differs from campaign_id {m['campaign_id']!r}")
    if "campaign_id" not in m and "id" not in m:
        raise CampaignError("campaign_id: required field is missing")
    campaign_id = _ident(m.get("campaign_id", m.get("id")), "campaign_id")
    advertiser_id = _ident(_req(m, "advertiser_id", ""), "advertiser_id")

    p = _mapping(_req(m, "price", ""), "price")
    _no_unknown(p, {"model", "amount", "amount_micros", "currency"}, "price")
    model = _req(p, "model", "price.")
    if not isinstance(model, str) or model.lower() not in ("cpm", "cpi"):
        raise CampaignError(f"price.model: {model!r} is not 'cpm' or 'cpi'")
    model = model.lower()
    amount = _money(p, "amount", "amount_micros", "price", required=True)
    assert amount is not None
    try:
        currency = parse_currency(_req(p, "currency", "price."), field="price.currency")
    except MoneyError as exc:
        raise CampaignError(str(exc)) from exc
    price = Price(model=model, amount_micros=amount, currency=currency)
    if amount > 0 and price.per_impression_micros == 0:
        raise CampaignError(
            f"price.amount_micros: CPM of {amount} micros is below one micro per impression"
        )

    b = _mapping(_req(m, "budget", ""), "budget")
    _no_unknown(b, {"total", "total_micros", "daily", "daily_micros", "timezone"}, "budget")
    total = _money(b, "total", "total_micros", "budget", required=True)
    assert total is not None
    daily = _money(b, "daily", "daily_micros", "budget", required=False)
    tz_name = b.get("timezone", "UTC")
    try:
        load_zone(tz_name)
    except CampaignError as exc:
        raise CampaignError(f"budget.{exc}") from None
    budget = Budget(total_micros=total, daily_micros=daily, timezone=tz_name)

    caps = _parse_caps(m.get("caps"), "caps", ("campaign", "advertiser"), "campaign")
    recency = _gap(m.get("recency_gap_s", 0), "recency_gap_s")

    s = m.get("schedule")
    if s is None:
        schedule = Schedule()
    else:
        s = _mapping(s, "schedule")
        _no_unknown(s, {"start_ms", "end_ms"}, "schedule")
        start = s.get("start_ms")
        end = s.get("end_ms")
        if start is not None:
            start = _int(start, "schedule.start_ms", 0, _MAX_MS)
        if end is not None:
            end = _int(end, "schedule.end_ms", 0, _MAX_MS)
        if start is not None and end is not None and end <= start:
            raise CampaignError(f"schedule.end_ms: {end} is not after schedule.start_ms {start}")
        schedule = Schedule(start_ms=start, end_ms=end)

    priority = _int(m.get("priority", 0), "priority", -MAX_PRIORITY, MAX_PRIORITY)

    url = _req(m, "vast_url", "")
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise CampaignError(
            f"vast_url: expected a non-empty string of at most {MAX_URL_LENGTH} characters, "
            f"got {url!r:.100}"
        )
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise CampaignError(f"vast_url: {url!r:.200} is not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CampaignError(f"vast_url: {url!r:.200} is not an absolute http(s) URL")

    allow = m.get("allow_vast_pricing", False)
    if not isinstance(allow, bool):
        raise CampaignError(f"allow_vast_pricing: expected true or false, got {allow!r}")

    return Campaign(
        campaign_id=campaign_id,
        advertiser_id=advertiser_id,
        price=price,
        budget=budget,
        caps=caps,
        recency_gap_s=recency,
        schedule=schedule,
        priority=priority,
        vast_url=url,
        allow_vast_pricing=allow,
        v=SCHEMA_VERSION,
    )


def campaign_to_dict(c: Campaign) -> dict[str, Any]:
    """Canonical dict: ``parse_campaign(campaign_to_dict(c)) == c`` for every Campaign."""
    return {
        "v": c.v,
        "campaign_id": c.campaign_id,
        "advertiser_id": c.advertiser_id,
        "price": {
            "model": c.price.model,
            "amount_micros": c.price.amount_micros,
            "currency": c.price.currency,
        },
        "budget": {
            "total_micros": c.budget.total_micros,
            "daily_micros": c.budget.daily_micros,
            "timezone": c.budget.timezone,
        },
        "caps": [cap_to_dict(cap) for cap in c.caps],
        "recency_gap_s": c.recency_gap_s,
        "schedule": {"start_ms": c.schedule.start_ms, "end_ms": c.schedule.end_ms},
        "priority": c.priority,
        "vast_url": c.vast_url,
        "allow_vast_pricing": c.allow_vast_pricing,
    }


def parse_global_caps(obj: Any) -> GlobalCaps:
    """Validate the global per-user cap config ``{caps, recency_gap_s, timezone, v}``.

    Guarantees the same precision of error messages as :func:`parse_campaign`;
    every cap gets scope ``global`` (another scope is an error).
    """
    if obj is None:
        return GlobalCaps()
    m = _mapping(obj, "global_caps")
    _no_unknown(m, {"v", "caps", "recency_gap_s", "timezone"}, "global_caps")
    _check_version(m)
    caps = _parse_caps(m.get("caps"), "global_caps.caps", ("global",), "global")
    recency = _gap(m.get("recency_gap_s", 0), "global_caps.recency_gap_s")
    tz_name = m.get("timezone", "UTC")
    try:
        load_zone(tz_name)
    except CampaignError as exc:
        raise CampaignError(f"global_caps.{exc}") from None
    return GlobalCaps(caps=caps, recency_gap_s=recency, timezone=tz_name)


def global_caps_to_dict(g: GlobalCaps) -> dict[str, Any]:
    """Canonical dict: ``parse_global_caps(global_caps_to_dict(g)) == g``."""
    return {
        "v": g.v,
        "caps": [cap_to_dict(c) for c in g.caps],
        "recency_gap_s": g.recency_gap_s,
        "timezone": g.timezone,
    }
