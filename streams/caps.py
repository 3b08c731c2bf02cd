"""Per-user frequency caps: one atomic check-and-reserve inside one keyed row.

The admit agent keeps one :class:`FrequencyState` per user (table key =
user id) and folds every ad request into it with :func:`check_and_reserve`
and, at once, :func:`commit` (a request counts as served from admission);
the settle path calls :func:`release` for one that was not served. Nothing
here reads the wall clock: every window, expiry and horizon is computed from
the event timestamps passed in, so replaying the same events in the same
order rebuilds byte-identical state (:meth:`FrequencyState.to_json_bytes`).

**Counting.** Each cap is checked against a *log key* named by scope, entity
and window, e.g. ``campaign:c1:r3600``, ``advertiser:a1:cday@Europe/Berlin``,
``global:*:life``. Keys are derived from the window, not the cap's position
in the config list, so reordering caps in a config update keeps counters,
and caps with the same window on the same entity share one log (they count
the same impressions). Windowed keys hold a sorted list of timestamps;
lifetime keys hold a count. A reservation is written into the logs
immediately, so in-flight requests count as used; a release removes it.

**Event clock.** The row keeps ``clock_ms`` = the highest event timestamp
folded into it. A request is evaluated and recorded at
``max(request timestamp, clock_ms)``, so logs stay sorted and an
out-of-order request can never put more than ``limit`` ads into any window:
it is checked as if it happened at the latest known time (conservative).

**Windows.** Rolling: ``(t - window, t]``. Calendar: the day, ISO week
(Monday 00:00) or month containing ``t`` in the config's timezone, DST-aware
(a day is 23 or 25 hours when the clocks change). Lifetime: a count.
A campaign's ``recency_gap_s`` is a rolling cap of 1 per gap on that
campaign; the global one is a rolling cap of 1 per gap on all ads. All caps
are enforced; when several block, the outcome names the one that blocks the
longest (lifetime > latest ``retry_at_ms``), ties broken global → advertiser →
campaign, then by key, so the reported cap is deterministic.

**Bounded state.** Log entries outside their window at ``clock_ms`` are
pruned on every operation (a windowed log never holds more than its
largest ``limit`` entries while in use, hard-trimmed at
:data:`~streams.campaign.MAX_WINDOWED_LIMIT`). Finished request outcomes
are remembered for idempotence for ``horizon_ms`` of event time after they
were recorded and at most ``max_records`` of them; forgetting advances
``floor_ms``, and any *new* request with a timestamp ``<= floor_ms`` is
refused as ``stale``. So every request is either remembered (and a duplicate
gets the same answer) or refused: never counted twice.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any, Literal

from streams import json_codec
from streams.campaign import (
    CALENDAR_UNIT_SECONDS,
    MAX_WINDOWED_LIMIT,
    Campaign,
    Cap,
    GlobalCaps,
    canonical_json,
    load_zone,
    window_label,
)

__all__ = [
    "DEFAULT_HORIZON_MS",
    "DEFAULT_MAX_RECORDS",
    "Blocking",
    "CapRule",
    "ExpireResult",
    "FrequencyState",
    "ReserveOutcome",
    "SettleResult",
    "cap_rules",
    "check_and_reserve",
    "commit",
    "expire",
    "period_bounds",
    "release",
    "usage",
]

DEFAULT_HORIZON_MS = 3_600_000
DEFAULT_MAX_RECORDS = 5000
STATE_VERSION = 1
_SCOPE_RANK = {"global": 0, "advertiser": 1, "campaign": 2}

ReserveStatus = Literal["reserved", "capped", "stale"]


# --------------------------------------------------------------------------- calendar


@lru_cache(maxsize=4096)
def _local_midnight_ms(d: date, tz_name: str) -> int:
    zone = load_zone(tz_name)
    # fold=0 on a nonexistent midnight (DST gap at 00:00) maps to the
    # transition instant, i.e. the first instant that belongs to day d.
    return int(datetime(d.year, d.month, d.day, tzinfo=zone).timestamp()) * 1000


def _local_date(ts_ms: int, tz_name: str) -> date:
    return datetime.fromtimestamp(ts_ms // 1000, load_zone(tz_name)).date()


def period_bounds(ts_ms: int, unit: str, tz_name: str) -> tuple[int, int]:
    """The calendar period ``[start_ms, end_ms)`` of ``unit`` containing ``ts_ms``.

    Guarantees ``start_ms <= ts_ms < end_ms``; day starts at local midnight,
    week at Monday 00:00 (ISO), month at the 1st 00:00, all in ``tz_name``.
    """
    d = _local_date(ts_ms, tz_name)
    if unit == "day":
        start, end = d, d + timedelta(days=1)
    elif unit == "week":
        start = d - timedelta(days=d.weekday())
        end = start + timedelta(days=7)
    elif unit == "month":
        start = d.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"unknown calendar unit {unit!r}")
    return _local_midnight_ms(start, tz_name), _local_midnight_ms(end, tz_name)


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True, slots=True)
class CapRule:
    """A cap bound to its log key: what :func:`check_and_reserve` enforces."""

    key: str
    scope: str
    limit: int
    window_seconds: int | None
    kind: str
    unit: str | None
    timezone: str
    reason: Literal["cap", "recency"]
    label: str


def _spec(cap: Cap, tz_name: str) -> str:
    if cap.window_seconds is None:
        return "life"
    if cap.kind == "calendar":
        return f"c{cap.unit}@{tz_name}"
    return f"r{cap.window_seconds}"


def _rule(scope: str, entity: str, cap: Cap, tz_name: str, reason: str) -> CapRule:
    return CapRule(
        key=f"{scope}:{entity}:{_spec(cap, tz_name)}",
        scope=scope,
        limit=cap.limit,
        window_seconds=cap.window_seconds,
        kind=cap.kind,
        unit=cap.unit,
        timezone=tz_name,
        reason="recency" if reason == "recency" else "cap",
        label=f"recency {window_label(cap)}" if reason == "recency" else window_label(cap),
    )


@lru_cache(maxsize=1024)
def cap_rules(campaign: Campaign, global_caps: GlobalCaps | None) -> tuple[CapRule, ...]:
    """Every rule a request for ``campaign`` must pass, in a deterministic order.

    Campaign caps (scope campaign/advertiser), the campaign recency gap, the
    global caps and the global recency gap.
    """
    rules: list[CapRule] = []
    tz = campaign.timezone
    for cap in campaign.caps:
        entity = campaign.advertiser_id if cap.scope == "advertiser" else campaign.campaign_id
        scope = "advertiser" if cap.scope == "advertiser" else "campaign"
        rules.append(_rule(scope, entity, cap, tz, "cap"))
    if campaign.recency_gap_s > 0:
        rules.append(
            _rule("campaign", campaign.campaign_id, Cap(1, campaign.recency_gap_s), tz, "recency")
        )
    if global_caps is not None:
        for cap in global_caps.caps:
            rules.append(_rule("global", "*", cap, global_caps.timezone, "cap"))
        if global_caps.recency_gap_s > 0:
            gap = Cap(1, global_caps.recency_gap_s, scope="global")
            rules.append(_rule("global", "*", gap, global_caps.timezone, "recency"))
    return tuple(rules)


def _key_window(key: str) -> tuple[str, int | None, str | None, str | None]:
    """(kind, window_ms, unit, tz) parsed back from a log key."""
    spec = key.split(":", 2)[2]
    if spec == "life":
        return "lifetime", None, None, None
    if spec[0] == "r":
        return "rolling", int(spec[1:]) * 1000, None, None
    unit, tz = spec[1:].split("@", 1)
    return "calendar", None, unit, tz


# --------------------------------------------------------------------------- state


@dataclass(frozen=True, slots=True)
class Blocking:
    """Which cap refused a request, and when it could next pass (None = never)."""

    key: str
    scope: str
    reason: str
    limit: int
    window_seconds: int | None
    kind: str
    unit: str | None
    label: str
    retry_at_ms: int | None

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (stable keys; None kept as null)."""
        return {
            "key": self.key,
            "scope": self.scope,
            "reason": self.reason,
            "limit": self.limit,
            "window_seconds": self.window_seconds,
            "kind": self.kind,
            "unit": self.unit,
            "label": self.label,
            "retry_at_ms": self.retry_at_ms,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Blocking:
        """Inverse of :meth:`to_dict`."""
        return cls(**d)

    def to_compact(self) -> list[Any]:
        """``[key, limit, reason, retry_at_ms]``: all other fields derive from the key.

        Capped outcomes are the bulk of a flooded user's records, so they
        are stored in this short form.
        """
        return [self.key, self.limit, self.reason, self.retry_at_ms]

    @classmethod
    def from_compact(cls, c: list[Any]) -> Blocking:
        """Inverse of :meth:`to_compact`."""
        key, limit, reason, retry = c
        kind, window_ms, unit, _tz = _key_window(key)
        if kind == "lifetime":
            cap = Cap(limit, None)
        elif kind == "calendar":
            assert unit is not None
            cap = Cap(limit, CALENDAR_UNIT_SECONDS[unit], "calendar", unit)  # type: ignore[arg-type]
        else:
            assert window_ms is not None
            cap = Cap(limit, window_ms // 1000)
        label = window_label(cap)
        return cls(
            key=key,
            scope=key.split(":", 1)[0],
            reason=reason,
            limit=limit,
            window_seconds=cap.window_seconds,
            kind=kind,
            unit=unit,
            label=f"recency {label}" if reason == "recency" else label,
            retry_at_ms=retry,
        )


@dataclass(frozen=True, slots=True)
class _Reservation:
    ts_ms: int
    keys: tuple[str, ...]
    expires_at_ms: int


@dataclass(frozen=True, slots=True)
class _Record:
    at_ms: int  # clock when recorded: records are kept in this order
    status: str  # capped | committed | released | expired
    ts_ms: int | None = None
    keys: tuple[str, ...] = ()
    blocking: Blocking | None = None
    late: bool = False

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"at": self.at_ms, "s": self.status}
        if self.ts_ms is not None:
            d["ts"] = self.ts_ms
        if self.keys:
            d["keys"] = list(self.keys)
        if self.blocking is not None:
            d["block"] = self.blocking.to_compact()
        if self.late:
            d["late"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> _Record:
        b = d.get("block")
        return cls(
            at_ms=d["at"],
            status=d["s"],
            ts_ms=d.get("ts"),
            keys=tuple(d.get("keys", ())),
            blocking=Blocking.from_compact(b) if b is not None else None,
            late=bool(d.get("late", False)),
        )


@dataclass(slots=True)
class FrequencyState:
    """One user's cap row. Mutated in place by the functions of this module.

    Serialise with :meth:`to_dict` / :meth:`to_json_bytes`; two states that
    went through the same operations encode to identical bytes.
    """

    clock_ms: int | None = None
    floor_ms: int | None = None
    logs: dict[str, list[int]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    reservations: dict[str, _Reservation] = field(default_factory=dict)
    # Insertion order == non-decreasing at_ms (the clock never goes back),
    # which lets pruning pop from the front.
    records: dict[str, _Record] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (ints, strs, lists, dicts, None only)."""
        return {
            "v": STATE_VERSION,
            "clock_ms": self.clock_ms,
            "floor_ms": self.floor_ms,
            "logs": {k: list(v) for k, v in self.logs.items()},
            "counts": dict(self.counts),
            "reservations": {
                rid: {"ts": r.ts_ms, "exp": r.expires_at_ms, "keys": list(r.keys)}
                for rid, r in self.reservations.items()
            },
            "records": {rid: rec.to_dict() for rid, rec in self.records.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> FrequencyState:
        """Rebuild a state from :meth:`to_dict` output (None → empty state)."""
        if d is None:
            return cls()
        if d.get("v") != STATE_VERSION:
            raise ValueError(f"frequency state: unsupported version {d.get('v')!r}")
        recs = sorted(
            ((rid, _Record.from_dict(r)) for rid, r in d["records"].items()),
            key=lambda item: (item[1].at_ms, item[0]),
        )
        return cls(
            clock_ms=d["clock_ms"],
            floor_ms=d["floor_ms"],
            logs={k: sorted(v) for k, v in d["logs"].items()},
            counts=dict(d["counts"]),
            reservations={
                rid: _Reservation(r["ts"], tuple(r["keys"]), r["exp"])
                for rid, r in d["reservations"].items()
            },
            records=dict(recs),
        )

    def to_json_bytes(self) -> bytes:
        """Deterministic encoding (sorted keys, compact separators)."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_json_bytes(cls, data: bytes) -> FrequencyState:
        """Inverse of :meth:`to_json_bytes`."""
        return cls.from_dict(json_codec.loads(data))


@dataclass(frozen=True, slots=True)
class ReserveOutcome:
    """Result of :func:`check_and_reserve`; ``state`` is the (mutated) row."""

    status: ReserveStatus
    state: FrequencyState
    blocking: Blocking | None = None
    ts_ms: int | None = None
    expires_at_ms: int | None = None
    duplicate: bool = False

    @property
    def retry_at_ms(self) -> int | None:
        """When the blocking cap frees a slot (None when not capped or never)."""
        return self.blocking.retry_at_ms if self.blocking else None


@dataclass(frozen=True, slots=True)
class SettleResult:
    """Result of :func:`commit` / :func:`release`.

    ``status``: committed, committed_late (reservation had expired; the
    impression is counted again), released, revoked (a commit taken back),
    duplicate, not_reserved (request was capped), conflict (commit after
    release), unknown (never seen or forgotten). ``changed`` says whether the
    row was modified.
    """

    status: str
    changed: bool
    state: FrequencyState


@dataclass(frozen=True, slots=True)
class ExpireResult:
    """Result of :func:`expire`: the request ids whose reservations were released."""

    expired: tuple[str, ...]
    state: FrequencyState


# --------------------------------------------------------------------------- internals


def _check_int(value: object, name: str, lo: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    return value


def _check_id(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"request_id must be a non-empty str, got {value!r}")
    return value


def _window_start(key: str, now: int) -> int | None:
    """Earliest timestamp still inside the key's window at ``now`` (None = lifetime)."""
    kind, window_ms, unit, tz = _key_window(key)
    if kind == "rolling":
        assert window_ms is not None
        return now - window_ms + 1
    if kind == "calendar":
        assert unit is not None and tz is not None
        return period_bounds(now, unit, tz)[0]
    return None


def _prune_logs(state: FrequencyState, now: int) -> None:
    for key in list(state.logs):
        log = state.logs[key]
        start = _window_start(key, now)
        cut = bisect.bisect_left(log, start) if start is not None else 0
        # Never keep more than any cap could need, whatever happened before.
        cut = max(cut, len(log) - MAX_WINDOWED_LIMIT)
        if cut >= len(log):
            del state.logs[key]
        elif cut > 0:
            del log[:cut]


def _forget(state: FrequencyState, boundary: int) -> None:
    """Drop records stamped <= boundary and raise the floor to match."""
    drop: list[str] = []
    for rid, rec in state.records.items():
        if rec.at_ms > boundary:
            break
        drop.append(rid)
    if drop:
        for rid in drop:
            del state.records[rid]
        state.floor_ms = boundary if state.floor_ms is None else max(state.floor_ms, boundary)


def _prune_records(state: FrequencyState, now: int, horizon_ms: int, max_records: int) -> None:
    _forget(state, now - horizon_ms)
    excess = len(state.records) - (max_records - 1)  # room for one new record
    if excess > 0:
        # Forget whole groups of equal stamps so the result depends only on
        # the set of records, not on ties in insertion order.
        boundary = next(
            rec.at_ms for i, rec in enumerate(state.records.values()) if i == excess - 1
        )
        _forget(state, boundary)


def _remove_one(log: list[int], ts: int) -> bool:
    i = bisect.bisect_left(log, ts)
    if i < len(log) and log[i] == ts:
        del log[i]
        return True
    return False


def _unreserve(state: FrequencyState, r: _Reservation) -> None:
    for key in r.keys:
        if key in state.logs:
            log = state.logs[key]
            _remove_one(log, r.ts_ms)
            if not log:
                del state.logs[key]
        elif key in state.counts:
            state.counts[key] -= 1
            if state.counts[key] <= 0:
                del state.counts[key]


def _put_record(state: FrequencyState, rid: str, rec: _Record) -> None:
    # Re-insert at the end so insertion order stays ordered by stamp.
    state.records.pop(rid, None)
    state.records[rid] = rec


def _expire_due(state: FrequencyState, now: int) -> list[str]:
    due = sorted(
        (r.expires_at_ms, rid) for rid, r in state.reservations.items() if r.expires_at_ms <= now
    )
    stamp = state.clock_ms if state.clock_ms is not None else now
    for _, rid in due:
        r = state.reservations.pop(rid)
        _unreserve(state, r)
        _put_record(state, rid, _Record(stamp, "expired", r.ts_ms, r.keys))
    return [rid for _, rid in due]


def _count(state: FrequencyState, rule: CapRule, t: int) -> int:
    if rule.window_seconds is None:
        return state.counts.get(rule.key, 0)
    log = state.logs.get(rule.key)
    if not log:
        return 0
    start = _window_start(rule.key, t)
    assert start is not None
    return len(log) - bisect.bisect_left(log, start)


def _blocking(state: FrequencyState, rule: CapRule, t: int, count: int) -> Blocking:
    retry: int | None
    if rule.window_seconds is None:
        retry = None
    elif rule.kind == "calendar":
        assert rule.unit is not None
        retry = period_bounds(t, rule.unit, rule.timezone)[1]
    else:
        log = state.logs[rule.key]
        first = len(log) - count
        # The window must lose (count - limit + 1) of its oldest entries.
        retry = log[first + count - rule.limit] + rule.window_seconds * 1000
    return Blocking(
        key=rule.key,
        scope=rule.scope,
        reason=rule.reason,
        limit=rule.limit,
        window_seconds=rule.window_seconds,
        kind="lifetime" if rule.window_seconds is None else rule.kind,
        unit=rule.unit,
        label=rule.label,
        retry_at_ms=retry,
    )


def _strictness(b: Blocking) -> tuple[bool, int, int, str, int]:
    return (
        b.retry_at_ms is not None,
        -(b.retry_at_ms or 0),
        _SCOPE_RANK[b.scope],
        b.key,
        b.limit,
    )


def _advance(state: FrequencyState, ts_ms: int, horizon_ms: int, max_records: int) -> int:
    now = ts_ms if state.clock_ms is None else max(state.clock_ms, ts_ms)
    state.clock_ms = now
    _expire_due(state, now)
    _prune_logs(state, now)
    _prune_records(state, now, horizon_ms, max_records)
    return now


# --------------------------------------------------------------------------- API


def check_and_reserve(
    state: FrequencyState,
    campaign: Campaign,
    global_caps: GlobalCaps | None,
    request_id: str,
    ts_ms: int,
    ttl_ms: int,
    *,
    horizon_ms: int = DEFAULT_HORIZON_MS,
    max_records: int = DEFAULT_MAX_RECORDS,
) -> ReserveOutcome:
    """Check every cap for this request and reserve one slot, in one step.

    Guarantees:

    * *Atomic*: all rules are evaluated before the first write; the row
      either gains one reservation in every applicable log or only an
      outcome record.
    * *Never over the cap*: pending reservations count as used, so however
      many requests are in flight, at most ``limit`` reservations+commits
      are in any window of any cap (campaign, advertiser, global, recency).
    * *Idempotent*: the same ``request_id`` again returns the first outcome
      (``duplicate=True``) without changing counts, for as long as it is
      remembered (see module docstring); once forgotten it is ``stale``.
    * *Event time only*: expiry (``ts + ttl_ms``), windows and pruning use
      ``max(ts_ms, state.clock_ms)``.

    Raises ValueError for malformed arguments (programming errors), never
    for data-dependent outcomes.
    """
    _check_id(request_id)
    _check_int(ts_ms, "ts_ms")
    _check_int(ttl_ms, "ttl_ms", 1)
    _check_int(max_records, "max_records", 1)
    if _check_int(horizon_ms, "horizon_ms", 1) <= ttl_ms:
        raise ValueError("horizon_ms must exceed ttl_ms: outcomes must outlive reservations")

    pending = state.reservations.get(request_id)
    if pending is not None:
        return ReserveOutcome(
            "reserved", state, None, pending.ts_ms, pending.expires_at_ms, duplicate=True
        )
    rec = state.records.get(request_id)
    if rec is not None:
        if rec.status == "capped":
            return ReserveOutcome("capped", state, rec.blocking, duplicate=True)
        return ReserveOutcome("reserved", state, None, rec.ts_ms, None, duplicate=True)

    now = _advance(state, ts_ms, horizon_ms, max_records)
    if state.floor_ms is not None and ts_ms <= state.floor_ms:
        return ReserveOutcome("stale", state)

    blocked = []
    for rule in cap_rules(campaign, global_caps):
        n = _count(state, rule, now)
        if n >= rule.limit:
            blocked.append(_blocking(state, rule, now, n))
    if blocked:
        worst = min(blocked, key=_strictness)
        _put_record(state, request_id, _Record(now, "capped", blocking=worst))
        return ReserveOutcome("capped", state, worst)

    keys = tuple(dict.fromkeys(rule.key for rule in cap_rules(campaign, global_caps)))
    for key in keys:
        if key.endswith(":life"):
            state.counts[key] = state.counts.get(key, 0) + 1
        else:
            state.logs.setdefault(key, []).append(now)  # now >= every entry: stays sorted
    expires = now + ttl_ms
    state.reservations[request_id] = _Reservation(now, keys, expires)
    return ReserveOutcome("reserved", state, None, now, expires)


def commit(
    state: FrequencyState,
    request_id: str,
    ts_ms: int | None = None,
    *,
    horizon_ms: int = DEFAULT_HORIZON_MS,
    max_records: int = DEFAULT_MAX_RECORDS,
) -> SettleResult:
    """Turn a reservation into a served impression (idempotent).

    Guarantees: a pending reservation becomes permanent (it already counts);
    a reservation that had expired is counted again (the ad was served, so
    the count stays truthful even if that exceeds the cap); a repeated
    commit changes nothing. ``ts_ms`` (the settle event's time) advances the
    row clock afterwards, expiring and pruning as every event does.
    """
    _check_id(request_id)
    if ts_ms is not None:
        _check_int(ts_ms, "ts_ms")
    stamp_now = state.clock_ms if state.clock_ms is not None else (ts_ms or 0)
    status: str
    changed = True
    pending = state.reservations.pop(request_id, None)
    rec = state.records.get(request_id)
    if pending is not None:
        # The keys stay on the record so that a release can still take the slot back.
        _put_record(state, request_id, _Record(stamp_now, "committed", pending.ts_ms, pending.keys))
        status = "committed"
    elif rec is None:
        status, changed = "unknown", False
    elif rec.status == "expired":
        assert rec.ts_ms is not None
        for key in rec.keys:
            if key.endswith(":life"):
                state.counts[key] = state.counts.get(key, 0) + 1
                continue
            start = _window_start(key, stamp_now)
            if start is None or rec.ts_ms >= start:
                bisect.insort(state.logs.setdefault(key, []), rec.ts_ms)
        _put_record(state, request_id, _Record(stamp_now, "committed", rec.ts_ms, late=True))
        status = "committed_late"
    elif rec.status == "committed":
        status, changed = "duplicate", False
    elif rec.status == "capped":
        status, changed = "not_reserved", False
    else:
        status, changed = "conflict", False
    if ts_ms is not None:
        _advance(state, ts_ms, horizon_ms, max_records)
    return SettleResult(status, changed, state)


def release(state: FrequencyState, request_id: str) -> SettleResult:
    """Give a reserved or committed slot back (the ad was not served). Idempotent.

    Guarantees: the request's entries leave every log it was counted in
    (``released`` for a reservation, ``revoked`` for a commit: the admit
    stage commits at admission, so a release is how a request that was not
    served stops counting); an entry already outside its window is left
    alone (it no longer counts anyway); releasing again, or releasing an
    expired reservation, changes no count; a commit after a release is
    refused (``conflict``).
    """
    _check_id(request_id)
    pending = state.reservations.pop(request_id, None)
    rec = state.records.get(request_id)
    stamp = state.clock_ms if state.clock_ms is not None else 0
    if pending is not None:
        _unreserve(state, pending)
        _put_record(state, request_id, _Record(stamp, "released", pending.ts_ms))
        return SettleResult("released", True, state)
    if rec is None:
        return SettleResult("unknown", False, state)
    if rec.status == "expired":
        # Already un-counted by expiry; remember the verdict so a late
        # commit cannot count it again.
        _put_record(state, request_id, _Record(stamp, "released", rec.ts_ms))
        return SettleResult("released", True, state)
    if rec.status == "released":
        return SettleResult("duplicate", False, state)
    if rec.status == "capped":
        return SettleResult("not_reserved", False, state)
    if rec.status == "committed" and rec.ts_ms is not None:
        _unreserve(state, _Reservation(rec.ts_ms, rec.keys, rec.ts_ms))
        _put_record(state, request_id, _Record(stamp, "released", rec.ts_ms))
        return SettleResult("revoked", True, state)
    return SettleResult("conflict", False, state)


def expire(state: FrequencyState, now_event_ms: int) -> ExpireResult:
    """Release every reservation whose ``expires_at_ms <= now_event_ms``.

    Guarantees: only reservations are touched (the row clock is not
    advanced, so a timer cannot shift windows); the released ids are
    returned in expiry order (then id order); expiring again is a no-op.
    """
    _check_int(now_event_ms, "now_event_ms")
    return ExpireResult(tuple(_expire_due(state, now_event_ms)), state)


def usage(state: FrequencyState, rule: CapRule, ts_ms: int) -> int:
    """Read-only count of ads (served + in flight) in ``rule``'s window at ``ts_ms``.

    Guarantees: does not modify ``state``; evaluates at
    ``max(ts_ms, clock_ms)`` like :func:`check_and_reserve` and ignores
    reservations that would have expired by then, so
    ``usage(...) < rule.limit`` is exactly the test that rule would apply.
    Advisory only: the answer may be stale by the time a request arrives.
    """
    _check_int(ts_ms, "ts_ms")
    t = ts_ms if state.clock_ms is None else max(ts_ms, state.clock_ms)
    n = _count(state, rule, t)
    start = _window_start(rule.key, t)
    for r in state.reservations.values():
        if r.expires_at_ms <= t and rule.key in r.keys and (start is None or r.ts_ms >= start):
            n -= 1
    return n
