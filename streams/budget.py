"""Per-campaign budget in integer micros: reserve, settle, spend, expire.

The budget agent keeps one :class:`BudgetState` per campaign (table key =
campaign id). A request reserves the campaign's maximum price with
:func:`try_reserve`; the settle path commits the actual price or releases
it with :func:`settle`; edges' spend adjustments arrive through
:func:`apply_spend`. No wall clock is read: the row's ``clock_ms`` is the
highest event timestamp folded in, and every day key, expiry and horizon
derives from it, so a replay rebuilds byte-identical state.

**Invariant.** Outside the documented late-settle path, after every call
``spent_total + reserved_total <= total`` and, for the current day,
``spent_day + reserved_day <= daily``: a reservation is granted only if
``spent + reserved + max_price`` fits both, and a settle charges at most
what was reserved.

**Days.** A reservation belongs to the local day (campaign timezone) of the
event clock when it was made, and its settlement is charged to that day.
Spend of the current and the previous local day is kept (a reservation
made at 23:59 may settle after midnight); older days fold into the total
only.

**Late settles.** A settle whose reservation already expired (TTL passed by
event time) is still charged: the ad was served and the money is owed. This
is the only way ``spent_total`` can exceed the budget, bounded by the
reservations that outlive their TTL (size the TTL above the resolve
timeout).

**Refunds.** Spend events may be negative (refunds). A refund lowers the
total and its day's spend (the day never below zero); one that would make
``spent_total`` negative is ``rejected`` (and remembered as such).

**Idempotence.** Outcomes of requests and spend events are remembered for
``horizon_ms`` of event time after they were recorded (at most
``max_records`` each). Forgetting raises ``floor_ms``: a new request or
spend event with a timestamp ``<= floor_ms`` is refused as ``stale``
instead of risking a second charge. Memory is therefore
O(requests per horizon) per campaign; size the horizon above the longest
redelivery delay (TTL + consumer restart), not more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any, Literal

from streams import json_codec
from streams.campaign import Campaign, canonical_json, load_zone
from streams.money import MoneyError, cpm_to_cpi_micros, parse_amount, parse_currency

__all__ = [
    "DEFAULT_HORIZON_MS",
    "DEFAULT_MAX_RECORDS",
    "BudgetState",
    "Exhausted",
    "Remaining",
    "Reserved",
    "SettleResult",
    "SpendResult",
    "Stale",
    "VastPricing",
    "actual_price",
    "apply_spend",
    "day_key",
    "expire",
    "parse_vast_pricing",
    "remaining",
    "settle",
    "try_reserve",
]

DEFAULT_HORIZON_MS = 3_600_000
DEFAULT_MAX_RECORDS = 100_000
STATE_VERSION = 1


def day_key(ts_ms: int, tz_name: str) -> str:
    """ISO date (``YYYY-MM-DD``) of ``ts_ms`` in ``tz_name``; sorts chronologically."""
    return _day_of_second(ts_ms // 1000, tz_name)


@lru_cache(maxsize=1024)
def _day_of_second(second: int, tz_name: str) -> str:
    # A request's handling asks for the same second's day several times, and a
    # burst's requests share their seconds: a zone lookup and a datetime each.
    return datetime.fromtimestamp(second, load_zone(tz_name)).date().isoformat()


def _previous_day(key: str) -> str:
    return (date.fromisoformat(key) - timedelta(days=1)).isoformat()


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Reserved:
    """The maximum price is held for ``request_id`` until settle or expiry."""

    amount_micros: int
    day: str
    expires_at_ms: int | None
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Exhausted:
    """No reservation: ``reason`` is ``total``, ``daily`` or ``schedule``."""

    reason: Literal["total", "daily", "schedule"]
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Stale:
    """Request older than the idempotence floor: refused, nothing changed."""

    floor_ms: int


@dataclass(frozen=True, slots=True)
class SettleResult:
    """Outcome of :func:`settle`.

    ``status``: committed, committed_late (reservation had expired, charged
    anyway), released, duplicate, conflict (commit after release or the
    reverse), not_reserved (request was exhausted), unknown.
    ``charged_micros`` is what this call added to spend (0 if nothing).
    """

    status: str
    charged_micros: int = 0


@dataclass(frozen=True, slots=True)
class SpendResult:
    """Outcome of :func:`apply_spend`: applied, duplicate, rejected or stale."""

    status: str
    amount_micros: int = 0


@dataclass(frozen=True, slots=True)
class Remaining:
    """Advisory headroom: budget minus spend minus live reservations (may be < 0)."""

    total_micros: int
    daily_micros: int | None
    day: str


@dataclass(frozen=True, slots=True)
class VastPricing:
    """A VAST ``<Pricing model=".." currency="..">value</Pricing>`` in micros."""

    model: str
    currency: str
    amount_micros: int


def parse_vast_pricing(model: str, currency: str, value: str) -> VastPricing:
    """Build a VastPricing from the element's attributes and text.

    Guarantees: ``model`` lower-cased; currency is an ISO 4217-shaped code;
    amount exact micros, non-negative. Raises MoneyError otherwise.
    """
    if not isinstance(model, str) or not model.strip():
        raise MoneyError(f"Pricing.model: {model!r} is empty")
    cur = parse_currency(
        currency.strip() if isinstance(currency, str) else currency, field="Pricing.currency"
    )
    amount = parse_amount(value.strip() if isinstance(value, str) else value, field="Pricing.value")
    return VastPricing(model.strip().lower(), cur, amount)


def actual_price(campaign: Campaign, vast_pricing: VastPricing | None) -> int:
    """What one impression is charged, in micros.

    Guarantees: the campaign's per-impression price, or the VAST Pricing's
    per-impression price when the campaign sets ``allow_vast_pricing``, the
    Pricing is CPM in the campaign's currency, and it is lower or equal.
    The result never exceeds :attr:`Campaign.max_price_micros`, so it always
    fits the reservation. Other VAST models (CPC, CPE, CPV) are not
    per-impression prices and are ignored.
    """
    price = campaign.max_price_micros
    if (
        vast_pricing is None
        or not campaign.allow_vast_pricing
        or vast_pricing.model != "cpm"
        or vast_pricing.currency != campaign.price.currency
        or vast_pricing.amount_micros < 0
    ):
        return price
    offered = cpm_to_cpi_micros(vast_pricing.amount_micros)
    return offered if offered <= price else price


# --------------------------------------------------------------------------- state


@dataclass(frozen=True, slots=True)
class _Reservation:
    amount: int
    day: str
    ts_ms: int
    expires_at_ms: int


@dataclass(frozen=True, slots=True)
class _Record:
    at_ms: int  # clock when recorded: records are kept in this order
    status: str  # exhausted | settled | released | expired
    amount: int = 0  # reserved (expired) or charged (settled)
    day: str = ""
    reason: str = ""
    late: bool = False

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"at": self.at_ms, "s": self.status}
        if self.amount:
            d["amount"] = self.amount
        if self.day:
            d["day"] = self.day
        if self.reason:
            d["reason"] = self.reason
        if self.late:
            d["late"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> _Record:
        return cls(
            d["at"],
            d["s"],
            d.get("amount", 0),
            d.get("day", ""),
            d.get("reason", ""),
            bool(d.get("late", False)),
        )


@dataclass(frozen=True, slots=True)
class _Spend:
    at_ms: int
    status: str  # applied | rejected
    amount: int


@dataclass(slots=True)
class BudgetState:
    """One campaign's budget row. Mutated in place by this module's functions.

    ``reserved_total`` and ``reserved_by_day`` are derived from
    ``reservations`` and not serialised; :meth:`to_dict` is the persisted
    form and equal operation sequences give identical :meth:`to_json_bytes`.
    """

    campaign_id: str
    timezone: str = "UTC"
    clock_ms: int | None = None
    floor_ms: int | None = None
    spent_total: int = 0
    spent_by_day: dict[str, int] = field(default_factory=dict)
    reservations: dict[str, _Reservation] = field(default_factory=dict)
    # Insertion order == non-decreasing at_ms, so pruning pops from the front.
    records: dict[str, _Record] = field(default_factory=dict)
    spend_events: dict[str, _Spend] = field(default_factory=dict)
    reserved_total: int = field(default=0, compare=False)
    reserved_by_day: dict[str, int] = field(default_factory=dict, compare=False)
    _next_expiry: int | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (ints, strs, lists, dicts, None only)."""
        return {
            "v": STATE_VERSION,
            "campaign_id": self.campaign_id,
            "timezone": self.timezone,
            "clock_ms": self.clock_ms,
            "floor_ms": self.floor_ms,
            "spent_total": self.spent_total,
            "spent_by_day": dict(self.spent_by_day),
            "reservations": {
                rid: {"amount": r.amount, "day": r.day, "ts": r.ts_ms, "exp": r.expires_at_ms}
                for rid, r in self.reservations.items()
            },
            "records": {rid: rec.to_dict() for rid, rec in self.records.items()},
            "spend_events": {
                eid: {"at": s.at_ms, "s": s.status, "amount": s.amount}
                for eid, s in self.spend_events.items()
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BudgetState:
        """Rebuild from :meth:`to_dict` output, recomputing the derived sums."""
        if d.get("v") != STATE_VERSION:
            raise ValueError(f"budget state: unsupported version {d.get('v')!r}")
        recs = sorted(
            ((rid, _Record.from_dict(r)) for rid, r in d["records"].items()),
            key=lambda item: (item[1].at_ms, item[0]),
        )
        spends = sorted(
            ((eid, _Spend(s["at"], s["s"], s["amount"])) for eid, s in d["spend_events"].items()),
            key=lambda item: (item[1].at_ms, item[0]),
        )
        state = cls(
            campaign_id=d["campaign_id"],
            timezone=d["timezone"],
            clock_ms=d["clock_ms"],
            floor_ms=d["floor_ms"],
            spent_total=d["spent_total"],
            spent_by_day=dict(d["spent_by_day"]),
            reservations={
                rid: _Reservation(r["amount"], r["day"], r["ts"], r["exp"])
                for rid, r in d["reservations"].items()
            },
            records=dict(recs),
            spend_events=dict(spends),
        )
        for r in state.reservations.values():
            _hold(state, r, +1)
        return state

    def to_json_bytes(self) -> bytes:
        """Deterministic encoding (sorted keys, compact separators)."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_json_bytes(cls, data: bytes) -> BudgetState:
        """Inverse of :meth:`to_json_bytes`."""
        return cls.from_dict(json_codec.loads(data))


# --------------------------------------------------------------------------- internals


def _check_int(value: object, name: str, lo: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    return value


def _check_id(value: object, name: str = "request_id") -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty str, got {value!r}")
    return value


def _hold(state: BudgetState, r: _Reservation, sign: int) -> None:
    state.reserved_total += sign * r.amount
    left = state.reserved_by_day.get(r.day, 0) + sign * r.amount
    if left:
        state.reserved_by_day[r.day] = left
    else:
        state.reserved_by_day.pop(r.day, None)
    if sign > 0 and (state._next_expiry is None or r.expires_at_ms < state._next_expiry):
        state._next_expiry = r.expires_at_ms


def _put_record(state: BudgetState, rid: str, rec: _Record) -> None:
    # Re-insert at the end so insertion order stays ordered by stamp.
    state.records.pop(rid, None)
    state.records[rid] = rec


def _stamp(state: BudgetState) -> int:
    return state.clock_ms if state.clock_ms is not None else 0


def _expire_due(state: BudgetState, now: int) -> list[str]:
    # The cached minimum lets the common case (nothing due) skip the scan.
    if state._next_expiry is None or state._next_expiry > now:
        return []
    due = sorted(
        (r.expires_at_ms, rid) for rid, r in state.reservations.items() if r.expires_at_ms <= now
    )
    stamp = _stamp(state)
    for _, rid in due:
        r = state.reservations.pop(rid)
        _hold(state, r, -1)
        _put_record(state, rid, _Record(stamp, "expired", r.amount, r.day))
    state._next_expiry = min((r.expires_at_ms for r in state.reservations.values()), default=None)
    return [rid for _, rid in due]


def _forget_front(memory: dict[str, Any], boundary: int) -> bool:
    drop: list[str] = []
    for key, rec in memory.items():
        if rec.at_ms > boundary:
            break
        drop.append(key)
    for key in drop:
        del memory[key]
    return bool(drop)


def _prune_memory(
    state: BudgetState, memory: dict[str, Any], now: int, horizon: int, max_records: int
) -> None:
    boundaries = [now - horizon]
    excess = len(memory) - (max_records - 1)  # room for one new entry
    if excess > 0:
        # Whole groups of equal stamps go together so the result depends
        # only on the set of entries, not on ties in insertion order.
        boundaries.append(
            next(rec.at_ms for i, rec in enumerate(memory.values()) if i == excess - 1)
        )
    for boundary in boundaries:
        if _forget_front(memory, boundary):
            state.floor_ms = boundary if state.floor_ms is None else max(state.floor_ms, boundary)


def _advance(state: BudgetState, ts_ms: int, horizon_ms: int, max_records: int) -> int:
    now = ts_ms if state.clock_ms is None else max(state.clock_ms, ts_ms)
    state.clock_ms = now
    _expire_due(state, now)
    _prune_memory(state, state.records, now, horizon_ms, max_records)
    _prune_memory(state, state.spend_events, now, horizon_ms, max_records)
    if state.spent_by_day:
        oldest = _previous_day(day_key(now, state.timezone))
        for day in [k for k in state.spent_by_day if k < oldest]:
            del state.spent_by_day[day]
    return now


def _charge_day(state: BudgetState, day: str, amount: int) -> None:
    """Add ``amount`` to a retained day; days already folded away are skipped."""
    if state.clock_ms is None or not day:
        return
    if day < _previous_day(day_key(state.clock_ms, state.timezone)):
        return
    value = max(0, state.spent_by_day.get(day, 0) + amount)
    if value:
        state.spent_by_day[day] = value
    else:
        state.spent_by_day.pop(day, None)


def _check_horizon(ttl_ms: int | None, horizon_ms: int, max_records: int) -> None:
    _check_int(max_records, "max_records", 1)
    _check_int(horizon_ms, "horizon_ms", 1)
    if ttl_ms is not None and horizon_ms <= ttl_ms:
        raise ValueError("horizon_ms must exceed ttl_ms: outcomes must outlive reservations")


# --------------------------------------------------------------------------- API


def try_reserve(
    state: BudgetState,
    campaign: Campaign,
    request_id: str,
    ts_ms: int,
    ttl_ms: int,
    *,
    horizon_ms: int = DEFAULT_HORIZON_MS,
    max_records: int = DEFAULT_MAX_RECORDS,
) -> tuple[BudgetState, Reserved | Exhausted | Stale]:
    """Hold the campaign's maximum price for one request if the budget allows.

    Guarantees:

    * ``can_serve = spent + reserved + max_price <= total`` and, with a daily
      budget, the same for the current local day; only then a reservation of
      ``max_price`` is added, expiring at ``clock + ttl_ms`` (event time).
    * Outside the schedule (evaluated at the event clock) → ``schedule``.
    * Idempotent: the same ``request_id`` returns its first result with
      ``duplicate=True`` and changes nothing; forgotten ids → :class:`Stale`.
    * Atomic: every check runs before the first write.
    """
    if campaign.campaign_id != state.campaign_id:
        raise ValueError(
            f"campaign {campaign.campaign_id!r} does not own budget row {state.campaign_id!r}"
        )
    _check_id(request_id)
    _check_int(ts_ms, "ts_ms")
    _check_int(ttl_ms, "ttl_ms", 1)
    _check_horizon(ttl_ms, horizon_ms, max_records)

    pending = state.reservations.get(request_id)
    if pending is not None:
        return state, Reserved(pending.amount, pending.day, pending.expires_at_ms, True)
    rec = state.records.get(request_id)
    if rec is not None:
        if rec.status == "exhausted":
            return state, Exhausted(rec.reason, True)  # type: ignore[arg-type]
        return state, Reserved(rec.amount, rec.day, None, True)

    # A campaign's timezone may change with a config update; new days use it.
    state.timezone = campaign.timezone
    now = _advance(state, ts_ms, horizon_ms, max_records)
    if state.floor_ms is not None and ts_ms <= state.floor_ms:
        return state, Stale(state.floor_ms)

    price = campaign.max_price_micros
    day = day_key(now, state.timezone)
    reason: Literal["total", "daily", "schedule"] | None = None
    if not campaign.schedule.contains(now):
        reason = "schedule"
    elif state.spent_total + state.reserved_total + price > campaign.budget.total_micros:
        reason = "total"
    elif campaign.budget.daily_micros is not None and (
        state.spent_by_day.get(day, 0) + state.reserved_by_day.get(day, 0) + price
        > campaign.budget.daily_micros
    ):
        reason = "daily"
    if reason is not None:
        _put_record(state, request_id, _Record(now, "exhausted", reason=reason))
        return state, Exhausted(reason)

    r = _Reservation(price, day, now, now + ttl_ms)
    state.reservations[request_id] = r
    _hold(state, r, +1)
    return state, Reserved(price, day, r.expires_at_ms)


def settle(
    state: BudgetState,
    request_id: str,
    actual_price_micros: int | None,
    *,
    ts_ms: int | None = None,
    horizon_ms: int = DEFAULT_HORIZON_MS,
    max_records: int = DEFAULT_MAX_RECORDS,
) -> tuple[BudgetState, SettleResult]:
    """Commit a reservation at the actual price, or release it (``None``).

    Guarantees: the charge is ``min(actual, reserved)`` so a settle never
    spends more than it held; the reservation leaves ``reserved_total``;
    repeating the same settle changes nothing (``duplicate``); a settle of a
    reservation that expired is charged anyway (``committed_late``, see
    module docstring). ``ts_ms`` (the settle event's time), when given,
    advances the row clock afterwards like any event.
    """
    _check_id(request_id)
    if actual_price_micros is not None:
        _check_int(actual_price_micros, "actual_price_micros")
    if ts_ms is not None:
        _check_int(ts_ms, "ts_ms")
    _check_horizon(None, horizon_ms, max_records)
    stamp = _stamp(state)
    result: SettleResult
    pending = state.reservations.pop(request_id, None)
    rec = state.records.get(request_id)
    if pending is not None:
        _hold(state, pending, -1)
        if actual_price_micros is None:
            _put_record(state, request_id, _Record(stamp, "released", pending.amount, pending.day))
            result = SettleResult("released")
        else:
            charge = min(actual_price_micros, pending.amount)
            state.spent_total += charge
            _charge_day(state, pending.day, charge)
            _put_record(state, request_id, _Record(stamp, "settled", charge, pending.day))
            result = SettleResult("committed", charge)
    elif rec is None:
        result = SettleResult("unknown")
    elif rec.status == "expired":
        if actual_price_micros is None:
            _put_record(state, request_id, _Record(stamp, "released", rec.amount, rec.day))
            result = SettleResult("released")
        else:
            charge = min(actual_price_micros, rec.amount)
            state.spent_total += charge
            _charge_day(state, rec.day, charge)
            _put_record(state, request_id, _Record(stamp, "settled", charge, rec.day, late=True))
            result = SettleResult("committed_late", charge)
    elif rec.status == "exhausted":
        result = SettleResult("not_reserved")
    elif (rec.status == "settled") == (actual_price_micros is not None):
        result = SettleResult("duplicate")
    else:
        result = SettleResult("conflict")
    if ts_ms is not None:
        _advance(state, ts_ms, horizon_ms, max_records)
    return state, result


def apply_spend(
    state: BudgetState,
    event_id: str,
    amount_micros: int,
    ts_ms: int,
    *,
    horizon_ms: int = DEFAULT_HORIZON_MS,
    max_records: int = DEFAULT_MAX_RECORDS,
) -> tuple[BudgetState, SpendResult]:
    """Apply an edge's spend adjustment once per ``event_id``.

    Guarantees: positive amounts add to the total and to the local day of
    ``ts_ms`` (if still kept); negative amounts are refunds (see module
    docstring); a repeated ``event_id`` returns the first result and changes
    nothing; an unknown id at or below the floor is refused as ``stale``.
    Spend events do not check the budget: they report money already spent.
    """
    _check_id(event_id, "event_id")
    if isinstance(amount_micros, bool) or not isinstance(amount_micros, int):
        raise ValueError(f"amount_micros must be an int, got {amount_micros!r}")
    _check_int(ts_ms, "ts_ms")
    _check_horizon(None, horizon_ms, max_records)

    seen = state.spend_events.get(event_id)
    if seen is not None:
        return state, SpendResult("duplicate", seen.amount)
    now = _advance(state, ts_ms, horizon_ms, max_records)
    if state.floor_ms is not None and ts_ms <= state.floor_ms:
        return state, SpendResult("stale")
    if state.spent_total + amount_micros < 0:
        state.spend_events[event_id] = _Spend(now, "rejected", amount_micros)
        return state, SpendResult("rejected", amount_micros)
    state.spent_total += amount_micros
    _charge_day(state, day_key(ts_ms, state.timezone), amount_micros)
    state.spend_events[event_id] = _Spend(now, "applied", amount_micros)
    return state, SpendResult("applied", amount_micros)


def expire(state: BudgetState, now_event_ms: int) -> tuple[BudgetState, tuple[str, ...]]:
    """Release every reservation with ``expires_at_ms <= now_event_ms``.

    Guarantees: only reservations change (the row clock is not advanced,
    so a timer cannot move day boundaries); the released ids are returned
    in expiry order; calling again is a no-op.
    """
    _check_int(now_event_ms, "now_event_ms")
    return state, tuple(_expire_due(state, now_event_ms))


def remaining(state: BudgetState, campaign: Campaign, ts_ms: int) -> Remaining:
    """Read-only headroom at ``max(ts_ms, clock)``: total and today's.

    Guarantees: does not modify ``state``; ignores reservations that would
    have expired by then, so ``remaining >= max_price`` on both is exactly
    the budget test of :func:`try_reserve` (schedule aside). Negative only
    after late settles.
    """
    _check_int(ts_ms, "ts_ms")
    t = ts_ms if state.clock_ms is None else max(ts_ms, state.clock_ms)
    day = day_key(t, campaign.timezone)
    reserved_total = state.reserved_total
    reserved_day = state.reserved_by_day.get(day, 0)
    for r in state.reservations.values():
        if r.expires_at_ms <= t:
            reserved_total -= r.amount
            if r.day == day:
                reserved_day -= r.amount
    total = campaign.budget.total_micros - state.spent_total - reserved_total
    daily = None
    if campaign.budget.daily_micros is not None:
        daily = campaign.budget.daily_micros - state.spent_by_day.get(day, 0) - reserved_day
    return Remaining(total, daily, day)
