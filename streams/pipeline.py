"""The decision pipeline as plain functions: state rows in, state rows and messages out.

Each agent in ``agents/`` is a loop around one of these handlers; nothing
here imports Faust. A handler reads and writes rows through a ``RowStore``
(the agent backs it with its Faust table, unit tests with a dict), and
returns the messages to send as ``Output`` values.

Rows and keys
-------------
* frequency table (owned by ``admit``, source keyed by user):
  ``u:<user>`` = the user's cap state (``streams.caps.FrequencyState`` without
  its outcome records) plus recent serve times for advisory queries;
  ``r:<user>\\x1f<request>`` = the outcome record of one request.
* budget table (owned by ``budget``, source keyed by campaign):
  ``c:<campaign>`` = ``streams.budget.BudgetState`` without reservations and
  records, plus their sums;
  ``p:<campaign>\\x1f<request>`` = one request's budget entry: its pending
  reservation with its routing data (user, reply topic), replaced by its
  outcome record (and decision) when it is settled, released or expires;
  ``s:<campaign>\\x1f<spend event>`` = one spend event's record.

Outcome records live under their own keys because a row that remembered
every request would grow with traffic and be rewritten (and sent to the
changelog) whole on every event: 10,000 requests for one campaign made a
600 kB row. Every key still starts with the row's key, so it lands in the
same partition as the row.

Money and decisions
-------------------
* A request reaches ``filled`` only if its budget reservation was still
  pending when its Resolution arrived; a Resolution that arrives after the
  reservation expired is released and the decision is ``timeout`` — the
  edge never plays an ad that was not paid for within the budget.
* Every handler is idempotent by request id (or spend event id): a
  redelivered message re-derives the same decision and re-sends the same
  downstream messages, and re-writes its row (DESIGN: the changelog may be
  behind local state after a crash).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol, TypeVar

from streams import budget as budget_logic
from streams import caps as caps_logic
from streams import json_codec
from streams.campaign import Campaign
from streams.campaign_directory import DirectoryView
from streams.pending import PendingIndex
from streams.record_floor import RecordFloor
from streams.records import (
    MAX_ADMITTED_PER_MESSAGE,
    Admitted,
    AdPayload,
    AdRequest,
    CampaignStatus,
    ContractError,
    Decision,
    DecisionStatus,
    ExpireCommand,
    FrequencySettle,
    Resolution,
    ResolveRequest,
    SpendEvent,
    Tick,
    admitted_batch_bytes,
    decode,
    encode,
)

__all__ = [
    "RECORD_PREFIXES",
    "DeadLetterError",
    "DeferredRowStore",
    "Output",
    "PipelineConfig",
    "Position",
    "Pruned",
    "RowStore",
    "budget_snapshot",
    "decode_or_dead_letter",
    "exhausted_campaigns",
    "frequency_snapshot",
    "handle_ad_request",
    "handle_admitted",
    "handle_campaign_status",
    "handle_expire",
    "handle_frequency_settle",
    "handle_resolution",
    "handle_spend",
    "pack_admissions",
    "pending_reservations",
    "plan_expiry",
    "prune_records",
    "prune_unless_floor",
    "record_time",
    "row_owner",
]

SEP = "\x1f"
log = logging.getLogger(__name__)


R = TypeVar(
    "R",
    AdRequest,
    Admitted,
    CampaignStatus,
    ExpireCommand,
    FrequencySettle,
    Resolution,
    SpendEvent,
    Tick,
)
TIMEOUT_REASON = "no resolution before the budget reservation expired"
Route = Literal["budget", "resolve", "decision", "frequency", "status", "broadcast"]
# Where a message sits in its source partition: (offset, item index in a batch message).
Position = tuple[int, int]


class RowStore(Protocol):
    """The table operations a handler needs (a Faust table in agents, a dict in tests)."""

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, value: bytes) -> None: ...

    def delete(self, key: str) -> None: ...

    def scan(self, prefix: str) -> Iterator[tuple[str, bytes]]: ...


@dataclass(frozen=True, slots=True)
class Output:
    """One message a handler wants sent; ``topic`` is set only for decisions (reply topic).

    A decision also carries, for the worker's metrics, its status, event
    time, campaign and spend: what the router counts without decoding it.
    """

    route: Route
    key: str
    value: bytes
    topic: str | None = None
    status: str | None = None
    event_time_ms: int | None = None
    campaign_id: str | None = None
    spend_micros: int = 0


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """Timing rules of the money core (all event time, milliseconds).

    ``budget_ttl_ms`` (processing time) is how long the budget agent waits
    for a reservation's Resolution before it writes an ExpireCommand into
    its own input log; it must exceed the resolve deadline. The decision is
    recorded in the log because it depends on the wall clock: a replay
    applies the same commands at the same places instead of re-deciding.
    ``safety_ttl_ms`` and ``frequency_ttl_ms`` are event-time backstops in
    the rows themselves (a reservation whose every message was lost); the
    cap slot outlives the budget one so the budget's verdict reaches it
    first. ``horizon_ms`` is how long outcome records are remembered.
    """

    budget_ttl_ms: int = 5_000
    safety_ttl_ms: int = 1_800_000
    frequency_ttl_ms: int = 2_700_000
    horizon_ms: int = 3_600_000
    max_hops: int = 5
    served_log_ms: int = 86_400_000
    served_log_max: int = 1_000


def pack_admissions(
    outputs: Iterable[Output], max_items: int = MAX_ADMITTED_PER_MESSAGE
) -> list[Output]:
    """admit's outputs with its Admitted records packed into ``AdmittedBatch`` messages.

    ``outputs`` are what ``handle_ad_request`` returned for a batch of events
    (of one source partition under exactly-once, where an envelope travels in
    that partition's transaction); every ``budget`` output among them is an
    Admitted. Guarantees: the other outputs are kept, in order; each
    campaign's Admitted items keep their order and travel in as few messages
    as ``max_items`` allows (one per campaign up to that size).
    """
    others: list[Output] = []
    by_campaign: dict[str, list[bytes]] = {}
    for output in outputs:
        if output.route == "budget":
            by_campaign.setdefault(output.key, []).append(output.value)
        else:
            others.append(output)
    packed = [
        Output("budget", campaign_id, admitted_batch_bytes(campaign_id, items[i : i + max_items]))
        for campaign_id, items in by_campaign.items()
        for i in range(0, len(items), max_items)
    ]
    return others + packed


class DeferredRowStore:
    """A ``RowStore`` that holds back campaign-row (``c:``) writes until ``flush``.

    The budget agent handles every item of a batch message through one of
    these, so a campaign row is written to the table (and its changelog)
    once per message instead of once per request. Side keys (``p:``, ``r:``,
    ``s:``) are written through as usual. This keeps the crash rule of
    ``_committed``: side writes carry the seq of a row write that comes
    later, so a worker killed before ``flush`` leaves them uncommitted and the
    redelivered message starts again from the last committed row. One rule
    keeps ``prev`` chains whole: a side key is never overwritten while its
    previous version waits for a held-back row, so a second write of a side
    key within one message flushes the rows first.
    """

    def __init__(self, store: RowStore) -> None:
        self.store = store
        self._rows: dict[str, bytes] = {}
        self._written: set[str] = set()

    @staticmethod
    def _is_row(key: str) -> bool:
        return key.startswith("c:")

    def get(self, key: str) -> bytes | None:
        held = self._rows.get(key)
        return held if held is not None else self.store.get(key)

    def put(self, key: str, value: bytes) -> None:
        if self._is_row(key):
            self._rows[key] = value
            return
        self._side_write(key)
        self.store.put(key, value)

    def delete(self, key: str) -> None:
        # Handlers never delete a campaign row; one that did would go through at once.
        if self._is_row(key):
            self.flush()
        else:
            self._side_write(key)
        self.store.delete(key)

    def scan(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        self.flush()
        return self.store.scan(prefix)

    def _side_write(self, key: str) -> None:
        if key in self._written:
            self.flush()
        self._written.add(key)

    def flush(self) -> None:
        """Write the held-back rows (after every side key written so far)."""
        for key, value in self._rows.items():
            self.store.put(key, value)
        self._rows.clear()
        self._written.clear()


class DeadLetterError(ValueError):
    """The input cannot be processed; the agent dead-letters it with this message."""


# --------------------------------------------------------------------------- rows


def _load(store: RowStore, key: str) -> dict[str, Any] | None:
    raw = store.get(key)
    return None if raw is None else json_codec.loads(raw)


def _record_key(row_key: str, request_id: str) -> str:
    return f"r:{row_key}{SEP}{request_id}"


def _hydrated(
    store: RowStore, state_dict: dict[str, Any], row_key: str, ids: Iterable[str], row_seq: int
) -> dict[str, Any]:
    """``state_dict`` with the committed records of ``ids`` put back (see ``_committed``)."""
    records = {}
    for rid in ids:
        rec = _committed(_load(store, _record_key(row_key, rid)), row_seq)
        if rec is not None:
            records[rid] = rec["rec"]
    return {**state_dict, "records": records}


def _store_records(
    store: RowStore,
    row_key: str,
    state_dict: dict[str, Any],
    extra: dict[str, dict[str, Any]],
    wall_ms: int | None,
    seq: int | None = None,
    key_of: Callable[[str, str], str] = _record_key,
    row_seq: int = 0,
) -> dict[str, Any]:
    """Move outcome records out of ``state_dict`` into their own keys; return the slim state.

    ``key_of(row_key, request_id)`` names a record's key. A record replaces
    whatever that key held before (a campaign's pending reservation, see
    ``_save_budget``), keeping only extra fields such as a stored decision.
    A write at ``seq`` keeps as ``prev`` the version its row (now at
    ``row_seq``) has committed, never a newer leftover of a killed attempt: a
    second kill in the same place must still fall back to what the row counts.
    ``at`` is the broker time the record was written: dedupe guards against
    redelivery, which happens within processing time, so records are
    forgotten a horizon of processing time later (whatever their event time).
    """
    for rid, rec in state_dict.pop("records", {}).items():
        key = key_of(row_key, rid)
        old = _load(store, key) or {}
        if old.get("rec") == rec and not extra.get(rid):
            continue  # unchanged: rewriting it would only grow the changelog
        at = wall_ms if wall_ms is not None else rec.get("at", 0)
        kept = {k: v for k, v in old.items() if k not in _REPLACED_BY_RECORD}
        value = {**kept, "rec": rec, "at": at, **extra.get(rid, {})}
        if seq is not None:
            value["seq"] = seq
            committed = _committed(old, row_seq) if old else None
            if committed:
                # In case this write outlives its row write.
                value["prev"] = {k: v for k, v in committed.items() if k != "prev"}
        store.put(key, json_codec.dumps(value))
    state_dict["records"] = {}
    # The floor guards forgotten ids inside one row; here records expire by key instead.
    state_dict["floor_ms"] = None
    return state_dict


# The fields a record's write drops from its key's previous version.
_REPLACED_BY_RECORD = frozenset({"rec", "at", "seq", "prev", "res", "meta", "gone"})


def row_owner(table_key: str) -> str | None:
    """The user or campaign id whose source partition holds ``table_key``.

    A table key lives in the changelog partition of the event that wrote it,
    which is its row owner's partition of the source topic (every key starts
    with its row's key, see "Rows and keys"). ``x:<partition>`` status rows
    have no owner: None.
    """
    kind, _, rest = table_key.partition(":")
    if kind in ("u", "c"):
        return rest
    if kind in ("r", "p", "s"):
        return row_owner(rest.split(SEP, 1)[0])
    return None


RECORD_PREFIXES = ("r:", "s:", "p:")


class Pruned(NamedTuple):
    """What a pruning scan did: keys deleted, and the oldest record it left (None: none).

    Pending reservations do not count as left: expiry, not pruning, ends them,
    and their settle writes them again.
    """

    deleted: int
    oldest_left_ms: int | None


def record_time(value: dict[str, Any]) -> int:
    """The time pruning reads from an outcome record (a record without one is stale)."""
    at: int = value.get("at", 0)
    return at


def prune_records(
    store: RowStore,
    tick: Tick,
    config: PipelineConfig,
    owns: Callable[[str], bool] | None = None,
) -> Pruned:
    """Forget outcome records (``r:``, ``s:``, settled ``p:`` entries) past the horizon.

    Only keys for which ``owns(key)`` holds are deleted. A worker's store
    holds every partition assigned to it while a deletion goes to the
    changelog partition of the tick being processed, so agents pass the
    tick's partition: a key deleted from another partition came back on the
    next restore (its own changelog still had it), and a replay pruned
    whatever partitions that worker happened to hold. The oldest record left
    counts every key the scan read, owned or not (a ``memory://`` store reads
    them all): a bound for the tick's partition, if not the tightest.
    """
    if not tick.prune:
        return Pruned(0, None)
    cutoff = tick.timestamp - config.horizon_ms
    stale = []
    oldest_left: int | None = None
    for prefix in RECORD_PREFIXES:
        for key, raw in store.scan(prefix):
            value = json_codec.loads(raw)
            if prefix == "p:" and _is_pending(value):
                continue  # a pending reservation: expiry, not pruning, ends it
            at = record_time(value)
            # Ownership last: it hashes the key (murmur2 in Python), and only
            # the few stale keys need it.
            if at < cutoff and (owns is None or owns(key)):
                stale.append(key)
            elif oldest_left is None or at < oldest_left:
                oldest_left = at
    for key in stale:
        store.delete(key)
    return Pruned(len(stale), oldest_left)


def prune_unless_floor(
    store: RowStore,
    tick: Tick,
    config: PipelineConfig,
    floor: RecordFloor,
    partition: int,
    generation: int,
    owns: Callable[[str], bool] | None = None,
) -> bool:
    """``prune_records`` for a pruning ``tick`` of ``partition``, unless ``floor`` shows
    that none of its records can be past the horizon; returns whether it scanned.

    Either way exactly the records past the horizon are deleted
    (``streams.record_floor``); a scan resets the partition's floor.
    """
    if floor.nothing_before(partition, generation, tick.timestamp - config.horizon_ms):
        return False
    pruned = prune_records(store, tick, config, owns)
    floor.scanned(partition, generation, pruned.oldest_left_ms)
    return True


# --------------------------------------------------------------------------- decisions


def _decision(
    request_id: str,
    status: DecisionStatus,
    *,
    user_id: str,
    reply_to: str | None,
    decided_at: int,
    campaign_id: str | None = None,
    reason: str = "",
    ad: AdPayload | None = None,
    spend_micros: int = 0,
    vast_error_code: int | None = None,
    hops: int = 0,
    timings_ms: dict[str, float] | None = None,
) -> Output:
    decision = Decision(
        request_id=request_id,
        status=status,
        user_id=user_id,
        campaign_id=campaign_id,
        ad=ad,
        vast_error_code=vast_error_code,
        reason=reason,
        spend_micros=spend_micros,
        hops=hops,
        timings_ms=timings_ms or {},
        decided_at=decided_at,
    )
    return Output(
        "decision",
        request_id,
        encode(decision),
        topic=reply_to,
        status=status.value,
        event_time_ms=decided_at,
        campaign_id=campaign_id,
        spend_micros=spend_micros,
    )


def _frequency(request_id: str, user_id: str, action: str, ts: int) -> Output:
    settle = FrequencySettle(request_id=request_id, user_id=user_id, action=action, timestamp=ts)
    return Output("frequency", user_id, encode(settle))


# --------------------------------------------------------------------------- admit


def _user_key(user_id: str) -> str:
    return f"u:{user_id}"


@dataclass
class _UserRow:
    """A user's row: cap state, campaigns of pending reservations, recent serve times."""

    state: caps_logic.FrequencyState
    pending: dict[str, str]
    served: list[int]
    record_campaign: str | None
    wall_ms: int | None = None
    seq: int = 0
    src: list[int] | None = None
    position: Position | None = None


def _load_user(store: RowStore, user_id: str, request_id: str) -> _UserRow:
    """The user's row with the request's record, as far as the row has committed it.

    A request's record is written before the row that counts it (admission)
    or un-counts it (release); a worker killed in between leaves a record
    newer than its row, which must not count: the redelivered event then
    starts from the state its first attempt did (``_committed``).
    """
    row_key = _user_key(user_id)
    row = _load(store, row_key)
    seq = row.get("seq", 0) if row else 0
    base = row["state"] if row else caps_logic.FrequencyState().to_dict()
    state = caps_logic.FrequencyState.from_dict(_hydrated(store, base, row_key, [request_id], seq))
    record = _committed(_load(store, _record_key(row_key, request_id)), seq)
    return _UserRow(
        state=state,
        pending=dict(row.get("pending", {})) if row else {},
        served=list(row.get("served", [])) if row else [],
        record_campaign=record.get("campaign") if record else None,
        seq=seq,
        src=row.get("src") if row else None,
    )


def _save_user(store: RowStore, user_id: str, row: _UserRow) -> None:
    row_key = _user_key(user_id)
    # Reservations that became records (settled or expired) take their campaign along.
    extra = {
        rid: {"campaign": row.pending.pop(rid)}
        for rid in list(row.pending)
        if rid not in row.state.reservations
    }
    seq, src = _next_write(row.seq, row.src, row.position)
    slim = _store_records(
        store, row_key, row.state.to_dict(), extra, row.wall_ms, seq, row_seq=row.seq
    )
    body = {"seq": seq, "state": slim, "pending": row.pending, "served": row.served}
    if src is not None:
        body["src"] = src
    store.put(row_key, json_codec.dumps(body))


def handle_ad_request(
    store: RowStore,
    request: AdRequest,
    view: DirectoryView,
    config: PipelineConfig,
    *,
    wall_ms: int | None = None,
    exhausted: set[str] | None = None,
    position: Position | None = None,
) -> list[Output]:
    """admit: dedupe, pick a campaign, check every cap and reserve one slot, in the user's row.

    ``exhausted`` is the set of campaigns admit has been told are out of
    budget (``exhausted_campaigns``), defaulting to the directory's view.

    Guarantees: at most one reservation per request id; a duplicate request
    re-sends what the first one sent; a capped request gets one ``capped``
    decision naming the window that blocked it; an unknown campaign hint
    raises ``DeadLetterError``.
    """
    rid, ts = request.request_id, request.timestamp
    row = _load_user(store, request.user_id, rid)
    row.wall_ms = wall_ms
    row.position = position
    chosen = row.pending.get(rid) or row.record_campaign
    if exhausted is None:
        exhausted = set(view.exhausted)
    candidates = _candidates(request, view, chosen, exhausted)
    if not candidates:
        return [
            _decision(
                rid,
                DecisionStatus.NO_FILL,
                user_id=request.user_id,
                reply_to=request.reply_to,
                decided_at=ts,
                reason="no eligible campaign (none in schedule and not exhausted)",
            )
        ]
    outcome, campaign = _reserve_first(row.state, candidates, view, rid, ts, config)
    if outcome.status == "stale":
        raise DeadLetterError(
            f"request {rid!r} is older than the dedupe horizon of user {request.user_id!r}"
        )
    if outcome.status == "reserved":
        if rid in row.state.reservations:
            # Counted as served from admission on; only a release (the ad was
            # not served) takes the slot back. A fill then needs no settle
            # message back to this row: one message, one Faust event and one
            # changelog write fewer per fill (bench_pipeline: 14 -> 12 messages).
            row.pending[rid] = campaign.campaign_id  # moves onto the record on save
            caps_logic.commit(row.state, rid)
            row.served = _served_with(row.served, ts, config)
        _save_user(store, request.user_id, row)
        admitted = Admitted(request=request, campaign_id=campaign.campaign_id)
        return [Output("budget", campaign.campaign_id, encode(admitted))]
    _save_user(store, request.user_id, row)
    store.put(
        _record_key(_user_key(request.user_id), rid),
        _with_campaign(store.get(_record_key(_user_key(request.user_id), rid)), campaign),
    )
    return [
        _decision(
            rid,
            DecisionStatus.CAPPED,
            user_id=request.user_id,
            reply_to=request.reply_to,
            decided_at=ts,
            campaign_id=campaign.campaign_id,
            reason=_capped_reason(outcome),
        )
    ]


def _with_campaign(raw: bytes | None, campaign: Campaign) -> bytes:
    value = json_codec.loads(raw) if raw is not None else {"at": 0}
    value["campaign"] = campaign.campaign_id
    return json_codec.dumps(value)


def _candidates(
    request: AdRequest, view: DirectoryView, chosen_id: str | None, exhausted: set[str]
) -> list[Campaign]:
    if chosen_id is not None:
        campaign = view.campaigns.get(chosen_id)
        if campaign is None:
            raise DeadLetterError(f"campaign {chosen_id!r} no longer exists")
        return [campaign]
    hint = request.campaign_hint
    if hint is not None:
        campaign = view.campaigns.get(hint)
        if campaign is None:
            raise DeadLetterError(f"unknown campaign {hint!r}")
        return [campaign]
    return [
        c
        for c in view.by_priority()
        if c.schedule.contains(request.timestamp) and c.campaign_id not in exhausted
    ]


def _reserve_first(
    state: caps_logic.FrequencyState,
    candidates: list[Campaign],
    view: DirectoryView,
    rid: str,
    ts: int,
    config: PipelineConfig,
) -> tuple[caps_logic.ReserveOutcome, Campaign]:
    """Reserve with the first campaign whose caps allow it; else record the first one's cap."""
    if len(candidates) > 1 and rid not in state.records and rid not in state.reservations:
        for campaign in candidates:
            trial = caps_logic.FrequencyState.from_dict(state.to_dict())
            probe = caps_logic.check_and_reserve(
                trial,
                campaign,
                view.global_caps,
                rid,
                ts,
                config.frequency_ttl_ms,
                horizon_ms=config.horizon_ms,
            )
            if probe.status == "reserved":
                return _reserve(state, campaign, view, rid, ts, config), campaign
    campaign = candidates[0]
    return _reserve(state, campaign, view, rid, ts, config), campaign


def _reserve(
    state: caps_logic.FrequencyState,
    campaign: Campaign,
    view: DirectoryView,
    rid: str,
    ts: int,
    config: PipelineConfig,
) -> caps_logic.ReserveOutcome:
    return caps_logic.check_and_reserve(
        state,
        campaign,
        view.global_caps,
        rid,
        ts,
        config.frequency_ttl_ms,
        horizon_ms=config.horizon_ms,
    )


def _capped_reason(outcome: caps_logic.ReserveOutcome) -> str:
    blocking = outcome.blocking
    if blocking is None:
        return "capped"
    described = blocking.to_dict()
    parts = [f"{k}={v}" for k, v in sorted(described.items()) if v is not None]
    return "frequency cap reached: " + ", ".join(parts)


def _status_key(partition: int) -> str:
    return f"x:{partition}"


def exhausted_campaigns(store: RowStore, partition: int) -> set[str]:
    """Campaigns admit skips on ``partition``, as of this point in its log."""
    row = _load(store, _status_key(partition))
    return {cid for cid, exhausted in (row or {}).items() if exhausted}


def handle_campaign_status(store: RowStore, status: CampaignStatus, partition: int) -> None:
    """admit: remember a campaign's exhausted flag in this partition's status row."""
    row = _load(store, _status_key(partition)) or {}
    row[status.campaign_id] = status.exhausted
    store.put(_status_key(partition), json_codec.dumps(row))


def handle_frequency_settle(
    store: RowStore,
    settle: FrequencySettle,
    config: PipelineConfig,
    *,
    wall_ms: int | None = None,
    position: Position | None = None,
) -> list[Output]:
    """admit: release (not served) one cap slot, or commit one. Idempotent.

    Admission already commits every admitted request, so the pipeline only
    sends releases; a commit still applies (a late one after an expiry, or
    one from an older log being replayed).
    """
    row = _load_user(store, settle.user_id, settle.request_id)
    row.wall_ms = wall_ms
    row.position = position
    if settle.action == "commit":
        result = caps_logic.commit(
            row.state, settle.request_id, settle.timestamp, horizon_ms=config.horizon_ms
        )
        if result.status in ("committed", "committed_late"):
            row.served = _served_with(row.served, settle.timestamp, config)
    else:
        revoked = caps_logic.release(row.state, settle.request_id).status == "revoked"
        if revoked and settle.timestamp in row.served:
            row.served.remove(settle.timestamp)
    _save_user(store, settle.user_id, row)
    return []


def _served_with(served: list[int], ts: int, config: PipelineConfig) -> list[int]:
    """The advisory serve log with ``ts`` added (bounded by age and length)."""
    cutoff = ts - config.served_log_ms
    return sorted([t for t in served if t > cutoff] + [ts])[-config.served_log_max :]


def frequency_snapshot(store: RowStore, user_id: str, now_ms: int) -> dict[str, Any]:
    """The advisory view the edge's ``check_frequency_cap`` reads.

    ``served_*`` counts every admitted request that was not released, in
    flight included (admission commits); ``pending`` counts reservations held
    without a commit, which admission no longer leaves (0 unless a row was
    written by an older version), so ``served + pending`` stays the usage.
    """
    row = _load(store, _user_key(user_id))
    served: list[int] = row.get("served", []) if row else []
    pending = len(row["state"].get("reservations", {})) if row else 0
    return {
        "user_id": user_id,
        "as_of_ms": now_ms,
        "served_last_hour": sum(1 for t in served if t > now_ms - 3_600_000),
        "served_last_day": sum(1 for t in served if t > now_ms - 86_400_000),
        "pending": pending,
    }


# --------------------------------------------------------------------------- budget


def _campaign_key(campaign_id: str) -> str:
    return f"c:{campaign_id}"


def _pending_key(row_key: str, request_id: str) -> str:
    """A request's budget entry: its pending reservation, later its outcome record."""
    return f"p:{row_key}{SEP}{request_id}"


def _is_pending(entry: dict[str, Any]) -> bool:
    """A budget entry that holds a reservation (not its record, nor a legacy deletion mark)."""
    return "res" in entry and "gone" not in entry


def _next_write(
    row_seq: int, row_src: list[int] | None, position: Position | None
) -> tuple[int, list[int] | None]:
    """The ``seq`` and ``src`` of a row write by the message at ``position`` (offset, item).

    A row remembers in ``src`` the source position of the last message that
    wrote it. A message at or before that position is being delivered again
    (its offset was not committed before a crash or rebalance) and writes at
    the row's own ``seq``. Bumping it, as every write used to, let the row's
    ``seq`` catch up with side keys that a killed attempt of a *later* message
    had left uncommitted, and commit them without their row: a reservation
    that the row never counted, released later, drove a campaign's pending
    count to -1..-13 in the rocksdb chaos test (the changelog showed the row at
    seq 196 skip to 198, 200, 203 over five orphaned ``p:`` keys of seq 197-201).
    Without a position (unit tests of one handler) every write bumps ``seq``.
    """
    if position is not None and row_src is not None and tuple(position) <= tuple(row_src):
        return row_seq, row_src
    return row_seq + 1, list(position) if position is not None else row_src


def _committed(value: dict[str, Any] | None, row_seq: int) -> dict[str, Any] | None:
    """The version of a side key that the campaign row has committed, or None.

    One event writes its side keys (``p:``, ``r:``, ``s:``) first and the row
    last, all into the same changelog partition, so Kafka keeps them in
    order; a worker killed in between leaves side keys newer than their row.
    Every side write carries the row's next ``seq``: a version with a larger
    ``seq`` than the row's is not committed yet and the previous version
    (``prev``) counts instead; a deletion is a ``gone`` mark with its
    ``seq``, so an uncommitted deletion is undone the same way. A redelivered
    event then finds exactly the state its first attempt started from.
    """
    if value is None:
        return None
    if "gone" in value:
        if value["gone"] <= row_seq:
            return None
        return {k: v for k, v in value.items() if k != "gone"}
    if value.get("seq", 0) > row_seq:
        return _committed(value.get("prev"), row_seq)
    return value


def _budget_state(
    store: RowStore, campaign_id: str, ids: Iterable[str], position: Position | None = None
) -> tuple[budget_logic.BudgetState, dict[str, Any]]:
    """A campaign's budget state with only the entries of ``ids`` loaded.

    Each request has one ``p:`` entry, its pending reservation and then its
    outcome record, and the row keeps the reservations' sums: a row that
    listed every reservation in flight was rewritten whole on every event,
    4 ms per event with 2,000 in flight (quadratic in a burst). The sums are
    exact because every change to a reservation goes through this row.
    """
    ids = list(ids)
    row_key = _campaign_key(campaign_id)
    row = _load(store, row_key)
    seq = row.get("seq", 0) if row else 0
    base = row["state"] if row else budget_logic.BudgetState(campaign_id=campaign_id).to_dict()
    pending = {}
    records = {}
    for rid in ids:
        entry = _committed(_load(store, _pending_key(row_key, rid)), seq)
        if entry is None:
            continue
        if _is_pending(entry):
            pending[rid] = entry
        elif "rec" in entry:
            records[rid] = entry["rec"]
    state_dict = {**base, "records": records}
    state_dict["reservations"] = {rid: value["res"] for rid, value in pending.items()}
    state = budget_logic.BudgetState.from_dict(state_dict)
    if row is not None:
        state.reserved_total = row["reserved_total"]
        state.reserved_by_day = dict(row["reserved_by_day"])
    extras = {
        "meta": {rid: value["meta"] for rid, value in pending.items()},
        "loaded": set(pending),
        "exhausted": bool(row.get("exhausted", False)) if row else False,
        "wall_ms": row.get("wall_ms") if row else None,
        "pending_count": row.get("pending_count", 0) if row else 0,
        "seq": seq,
        "src": row.get("src") if row else None,
        "position": position,
    }
    return state, extras


def _save_budget(
    store: RowStore,
    campaign_id: str,
    state: budget_logic.BudgetState,
    extras: dict[str, Any],
    record_extra: dict[str, dict[str, Any]] | None = None,
) -> None:
    row_key = _campaign_key(campaign_id)
    seq, src = _next_write(extras["seq"], extras["src"], extras["position"])
    at = extras["wall_ms"] or 0
    state_dict = state.to_dict()
    reservations = state_dict.pop("reservations")
    loaded = extras.get("loaded", set())
    new = reservations.keys() - loaded
    for rid in new:
        meta = extras["meta"].get(rid)
        body = {"res": reservations[rid], "meta": meta, "seq": seq, "at": at}
        store.put(_pending_key(row_key, rid), json_codec.dumps(body))
    gone = loaded - reservations.keys()
    # A settled, released or expired reservation leaves a record, written over
    # its entry below (one changelog write where a deletion mark and a record
    # key took two); a mark is only for one that somehow left none.
    for rid in gone - state_dict["records"].keys():
        key = _pending_key(row_key, rid)
        mark = {**(_load(store, key) or {}), "gone": seq, "at": at}
        store.put(key, json_codec.dumps(mark))
    pending_count = extras["pending_count"] + len(new) - len(gone)
    if pending_count < 0 <= extras["pending_count"]:
        # Cannot happen if every write of the row reached the changelog in
        # order; chaos runs (memory and rocksdb) ended at -1. Said loudly,
        # once, by the event that broke it (every later event would repeat it).
        log.error(
            "campaign %s: pending reservation count went negative (%d) at seq %d "
            "(previous count %d, new %s, gone %s)",
            campaign_id,
            pending_count,
            seq,
            extras["pending_count"],
            sorted(new),
            sorted(gone),
        )
    state_dict["reservations"] = {}
    for event_id, spend in state_dict.pop("spend_events", {}).items():
        at = extras["wall_ms"] if extras["wall_ms"] is not None else spend.get("at", 0)
        body = {"spend": spend, "at": at, "seq": seq}
        store.put(f"s:{row_key}{SEP}{event_id}", json_codec.dumps(body))
    state_dict["spend_events"] = {}
    extra = dict(record_extra or {})
    for rid, (decision, reply_to) in extras.pop("decisions", {}).items():
        extra.setdefault(rid, {})["decision"] = decision
        if reply_to:
            extra[rid]["reply_to"] = reply_to
    slim = _store_records(
        store,
        row_key,
        state_dict,
        extra,
        extras["wall_ms"],
        seq,
        key_of=_pending_key,
        row_seq=extras["seq"],
    )
    store.put(
        row_key,
        json_codec.dumps(
            {
                "seq": seq,
                "state": slim,
                "reserved_total": state.reserved_total,
                "reserved_by_day": state.reserved_by_day,
                "pending_count": pending_count,
                "exhausted": extras["exhausted"],
                "wall_ms": extras["wall_ms"],
                **({"src": src} if src is not None else {}),
            }
        ),
    )


def _expire_budget(
    state: budget_logic.BudgetState, extras: dict[str, Any], now_ms: int, campaign_id: str
) -> list[Output]:
    """Release reservations past their TTL: a timeout decision and a cap release for each."""
    _, expired = budget_logic.expire(state, now_ms)
    outputs: list[Output] = []
    for rid in expired:
        outputs += _timed_out(rid, extras, campaign_id)
    return outputs


def _timed_out(rid: str, extras: dict[str, Any], campaign_id: str) -> list[Output]:
    """A released reservation's cap release and its remembered ``timeout`` decision."""
    meta = extras["meta"].pop(rid, None)
    if meta is None:
        return []
    user_id, reply_to, ts = meta
    decision = _decision(
        rid,
        DecisionStatus.TIMEOUT,
        user_id=user_id,
        reply_to=reply_to,
        decided_at=ts,
        campaign_id=campaign_id,
        reason=TIMEOUT_REASON,
    )
    _remember(extras, decision)
    return [_frequency(rid, user_id, "release", ts), decision]


def _remember(extras: dict[str, Any], decision: Output) -> None:
    """Keep the decision's bytes with the request's record: a redelivered message re-sends
    exactly these bytes (a second Resolution may differ in timings, or even outcome)."""
    extras.setdefault("decisions", {})[decision.key] = (decision.value.decode(), decision.topic)


def _resend_recorded(
    store: RowStore,
    campaign_id: str,
    rid: str,
    seq: int,
    reply_to: str | None = None,
    *,
    only: DecisionStatus | None = None,
) -> list[Output]:
    """The decision recorded for ``rid`` in the campaign's row, sent again.

    Nothing if none is recorded, or if ``only`` is given and it has another status.
    """
    prior = _committed(_load(store, _pending_key(_campaign_key(campaign_id), rid)), seq)
    if prior is None or "decision" not in prior:
        return []
    decision = json_codec.loads(prior["decision"])
    if only is not None and decision["status"] != only.value:
        return []
    return _resend(prior, decision["user_id"], reply_to or prior.get("reply_to"))


def _resend(prior: dict[str, Any], user_id: str, reply_to: str | None) -> list[Output]:
    """The decision already made for a request, and its cap release if not filled, sent again."""
    body = prior["decision"]
    decision = json_codec.loads(body)
    rid = decision["request_id"]
    settle = []
    if decision["status"] != DecisionStatus.FILLED.value:
        settle.append(_frequency(rid, user_id, "release", decision["decided_at"]))
    return [
        *settle,
        Output(
            "decision",
            rid,
            body.encode(),
            topic=reply_to,
            status=decision["status"],
            event_time_ms=decision["decided_at"],
            campaign_id=decision.get("campaign_id"),
            spend_micros=decision.get("spend_micros", 0),
        ),
    ]


def handle_admitted(
    store: RowStore,
    admitted: Admitted,
    view: DirectoryView,
    config: PipelineConfig,
    *,
    wall_ms: int,
    position: Position | None = None,
) -> list[Output]:
    """budget: reserve the campaign's maximum price if spent + reserved + price fits the budget.

    Guarantees: ``spent + reserved <= total`` (and daily) after every event,
    so overspend is impossible however many requests are in flight; an
    exhausted campaign is announced on ``campaign-status`` so admit skips it.
    """
    request = admitted.request
    rid, ts, cid = request.request_id, request.timestamp, admitted.campaign_id
    campaign = view.campaigns.get(cid)
    if campaign is None:
        raise DeadLetterError(f"unknown campaign {cid!r}")
    state, extras = _budget_state(store, cid, [rid], position)
    extras["wall_ms"] = wall_ms
    outputs = _expire_budget(state, extras, max(ts, state.clock_ms or ts), cid)
    _, result = budget_logic.try_reserve(
        state, campaign, rid, ts, config.safety_ttl_ms, horizon_ms=config.horizon_ms
    )
    if isinstance(result, budget_logic.Stale):
        raise DeadLetterError(f"request {rid!r} is older than the dedupe horizon of {cid!r}")
    if isinstance(result, budget_logic.Reserved):
        if rid in state.reservations:
            extras["meta"].setdefault(rid, [request.user_id, request.reply_to, ts])
        else:
            # Already settled or expired: a redelivered Admitted re-sends that
            # decision (a crash may have lost it after the table write).
            _save_budget(store, cid, state, extras)
            return outputs + _resend_recorded(store, cid, rid, extras["seq"], request.reply_to)
        resolve = ResolveRequest(
            request=request,
            campaign_id=cid,
            vast_url=campaign.vast_url,
            max_price_micros=result.amount_micros,
            currency=campaign.price.currency,
            max_hops=config.max_hops,
        )
        _save_budget(store, cid, state, extras)
        return [*outputs, Output("resolve", rid, encode(resolve))]
    # Exhausted: nothing was reserved.
    outputs.append(_frequency(rid, request.user_id, "release", ts))
    outputs.append(
        _decision(
            rid,
            DecisionStatus.BUDGET_EXHAUSTED,
            user_id=request.user_id,
            reply_to=request.reply_to,
            decided_at=ts,
            campaign_id=cid,
            reason=f"{result.reason} budget of campaign {cid} cannot cover another impression",
        )
    )
    if result.reason in ("total", "daily") and not extras["exhausted"]:
        extras["exhausted"] = True
        outputs += _status(cid, True, result.reason)
    _save_budget(store, cid, state, extras)
    return outputs


def _status(campaign_id: str, exhausted: bool, reason: str) -> list[Output]:
    """The campaign's new state, twice: to the compacted status topic (operators,
    directories) and broadcast into every ``ad-requests`` partition for admit, which
    must see it at a fixed place in its own log to stay replayable."""
    body = json_codec.dumps({"campaign_id": campaign_id, "exhausted": exhausted, "reason": reason})
    status = CampaignStatus(campaign_id=campaign_id, exhausted=exhausted, reason=reason)
    return [
        Output("status", campaign_id, body),
        Output("broadcast", campaign_id, encode(status)),
    ]


def handle_resolution(
    store: RowStore,
    resolution: Resolution,
    view: DirectoryView,
    config: PipelineConfig,
    *,
    wall_ms: int,
    position: Position | None = None,
) -> list[Output]:
    """settle (in the budget row): commit at the actual price or release; one decision.

    Guarantees: a fill is charged ``min(actual, reserved)`` only while its
    reservation is pending; the decision for a request is the same however
    often its Resolution is delivered.
    """
    cid = resolution.campaign_id
    if cid is None:
        raise DeadLetterError("Resolution.campaign_id is required")
    rid = resolution.request_id
    campaign = view.campaigns.get(cid)
    state, extras = _budget_state(store, cid, [rid], position)
    prior = _committed(_load(store, _pending_key(_campaign_key(cid), rid)), extras["seq"])
    if prior is not None and "decision" in prior and rid not in state.reservations:
        return _resend(prior, resolution.user_id, resolution.reply_to)
    record = state.records.get(rid)
    if rid not in state.reservations and (record is None or record.status == "exhausted"):
        # Never reserved in the state that counts: its reservation was in an
        # aborted transaction (the resolve stage, in process, resolved it all the
        # same), lost with a killed worker's unflushed writes and redone as
        # exhausted, or forgotten past the horizon. Nothing to settle, and the
        # request's decision, if any, is already made: a second, different one
        # (a late-fill timeout) failed an exactly-once chaos run in session 13.
        return []
    extras["wall_ms"] = wall_ms
    now = max(resolution.request_timestamp, state.clock_ms or 0)
    outputs = _expire_budget(state, extras, now, cid)
    extras["meta"].pop(rid, None)
    pending = rid in state.reservations
    filled = resolution.status == DecisionStatus.FILLED
    price: int | None = None
    if pending and filled and campaign is not None:
        price = budget_logic.actual_price(campaign, _vast_pricing(resolution.ad))
    _, settled = budget_logic.settle(state, rid, price if pending else None, ts_ms=now)
    record = state.records.get(rid)
    charged = record.amount if record is not None and record.status == "settled" else 0
    status, reason = _settled_status(resolution, record.status if record else None)
    if status != DecisionStatus.FILLED:  # admission counted it as served
        outputs.append(_frequency(rid, resolution.user_id, "release", resolution.request_timestamp))
    decision = _decision(
        rid,
        status,
        user_id=resolution.user_id,
        reply_to=resolution.reply_to,
        decided_at=resolution.request_timestamp,
        campaign_id=cid,
        reason=reason,
        ad=resolution.ad if status == DecisionStatus.FILLED else None,
        spend_micros=charged if status == DecisionStatus.FILLED else 0,
        vast_error_code=resolution.vast_error_code,
        hops=resolution.hops,
        timings_ms=resolution.timings_ms,
    )
    _remember(extras, decision)
    outputs.append(decision)
    if extras["exhausted"] and campaign is not None and settled.status == "released":
        left = budget_logic.remaining(state, campaign, now)
        if left.total_micros >= campaign.max_price_micros and (
            left.daily_micros is None or left.daily_micros >= campaign.max_price_micros
        ):
            extras["exhausted"] = False
            outputs += _status(cid, False, "budget available again")
    _save_budget(store, cid, state, extras)
    return outputs


def _settled_status(
    resolution: Resolution, record_status: str | None
) -> tuple[DecisionStatus, str]:
    if record_status == "settled":
        return DecisionStatus.FILLED, ""
    if resolution.status == DecisionStatus.FILLED:
        # Only a late fill is released: its reservation had expired first.
        return DecisionStatus.TIMEOUT, TIMEOUT_REASON
    return resolution.status, resolution.reason


def _vast_pricing(ad: AdPayload | None) -> budget_logic.VastPricing | None:
    if ad is None or ad.price_micros is None or not ad.currency:
        return None
    return budget_logic.VastPricing(
        model=(ad.price_model or "cpm").lower(), currency=ad.currency, amount_micros=ad.price_micros
    )


def handle_spend(
    store: RowStore,
    event: SpendEvent,
    config: PipelineConfig,
    *,
    wall_ms: int | None = None,
    position: Position | None = None,
) -> list[Output]:
    """spend: apply an edge's adjustment to the campaign's spend once per event id."""
    if event.amount_micros < 0:
        raise DeadLetterError(f"SpendEvent.amount_micros must be >= 0, got {event.amount_micros}")
    cid = event.campaign_id
    state, extras = _budget_state(store, cid, [], position)
    if wall_ms is not None:
        extras["wall_ms"] = max(extras["wall_ms"] or 0, wall_ms)
    row_key = _campaign_key(cid)
    seen = _committed(_load(store, f"s:{row_key}{SEP}{event.event_id}"), extras["seq"])
    if seen is not None:
        state.spend_events.clear()
        state_dict = state.to_dict()
        state_dict["spend_events"] = {event.event_id: seen["spend"]}
        state = budget_logic.BudgetState.from_dict(state_dict)
    _, result = budget_logic.apply_spend(
        state, event.event_id, event.amount_micros, event.timestamp, horizon_ms=config.horizon_ms
    )
    if result.status == "stale":
        raise DeadLetterError(f"spend event {event.event_id!r} is older than the dedupe horizon")
    _save_budget(store, cid, state, extras)
    return []


def plan_expiry(
    store: RowStore,
    campaign_ids: Iterable[str],
    pending: PendingIndex,
    now_wall_ms: int,
    config: PipelineConfig,
) -> list[Output]:
    """budget (on a tick): ExpireCommands for reservations pending longer than the TTL.

    ``pending`` is the agent's index of what it is waiting on and since when
    (processing time: it lives in the agent, not the table; a worker that
    takes over a partition starts the clock afresh, which only delays
    expiry). A campaign's ``p:`` entries are listed only when the index
    cannot be trusted (``PendingIndex.needs_listing``), and each reservation
    the index calls overdue is checked against the table before its
    command is written, so a wrong index delays an expiry but never expires
    a settled request. A tick covers the campaigns of its partition only:
    the agent handles every partition's ticks with one index (forgetting the
    other partitions' clocks on every tick meant that with more than one
    partition per worker nothing ever expired, found in session 13). Reads
    rows, writes none; emits one command per reservation. The command lands
    in the log after any Resolution that was already produced, so a late but
    real resolution still wins.
    """
    outputs: list[Output] = []
    for cid in campaign_ids:
        row_key = _campaign_key(cid)
        row = _load(store, row_key) or {}
        count = row.get("pending_count", 0)
        if count <= 0:
            pending.listed(cid, (), now_wall_ms)
            continue
        seq = row.get("seq", 0)
        if pending.needs_listing(cid, count, now_wall_ms):
            pending.listed(cid, _listed_pending(store, row_key, seq), now_wall_ms)
        for rid in pending.overdue(cid, now_wall_ms, config.budget_ttl_ms):
            entry = _committed(_load(store, _pending_key(row_key, rid)), seq)
            if entry is None or not _is_pending(entry):
                pending.settled(cid, rid)  # the index was wrong; the count check relists
                continue
            command = ExpireCommand(campaign_id=cid, request_id=rid, timestamp=now_wall_ms)
            outputs.append(Output("budget", cid, encode(command)))
            pending.settling(cid, rid)
    return outputs


def _listed_pending(store: RowStore, row_key: str, row_seq: int) -> list[str]:
    """The request ids of a campaign's committed pending reservations, from its ``p:`` keys."""
    prefix = _pending_key(row_key, "")
    ids = []
    for key, raw in store.scan(prefix):
        entry = _committed(json_codec.loads(raw), row_seq)
        if entry is not None and _is_pending(entry):
            ids.append(key[len(prefix) :])
    return ids


def handle_expire(
    store: RowStore,
    command: ExpireCommand,
    config: PipelineConfig,
    *,
    position: Position | None = None,
) -> list[Output]:
    """budget: release a reservation whose Resolution did not come in time.

    Guarantees: only a still-pending reservation is released (its budget and
    cap slot freed, a ``timeout`` decision sent); after a settle it is a no-op;
    delivered again after it expired the reservation, it re-sends that decision.
    A Resolution arriving later for it gets the same ``timeout`` decision.
    """
    cid, rid = command.campaign_id, command.request_id
    state, extras = _budget_state(store, cid, [rid], position)
    if rid not in state.reservations:
        # Settled: nothing to do. Expired by this very command, redelivered after
        # a crash that may have lost its decision: send that decision again.
        return _resend_recorded(store, cid, rid, extras["seq"], only=DecisionStatus.TIMEOUT)
    extras["wall_ms"] = command.timestamp
    budget_logic.settle(state, rid, None)
    outputs = _timed_out(rid, extras, cid)
    _save_budget(store, cid, state, extras)
    return outputs


def pending_reservations(store: RowStore, campaign_id: str) -> int:
    """How many reservations of ``campaign_id`` wait for their Resolution."""
    row = _load(store, _campaign_key(campaign_id))
    return int(row.get("pending_count", 0)) if row else 0


def budget_snapshot(store: RowStore, campaign: Campaign, now_ms: int) -> dict[str, Any]:
    """The advisory view behind the edge's ``get_budget``."""
    state, extras = _budget_state(store, campaign.campaign_id, [])
    left = budget_logic.remaining(state, campaign, now_ms)
    day = budget_logic.day_key(now_ms, campaign.timezone)
    return {
        "campaign_id": campaign.campaign_id,
        "currency": campaign.price.currency,
        "total_micros": campaign.budget.total_micros,
        "daily_micros": campaign.budget.daily_micros,
        "spent_micros": state.spent_total,
        "spent_today_micros": state.spent_by_day.get(day, 0),
        "reserved_micros": state.reserved_total,
        "remaining_micros": left.total_micros,
        "exhausted": bool(extras["exhausted"]),
    }


def decode_or_dead_letter(cls: type[R], raw: bytes | None) -> R:
    """Decode an internal-topic record; malformed input (a tombstone too) becomes a
    ``DeadLetterError`` with ``records.parse``'s reason."""
    try:
        return decode(cls, raw)
    except ContractError as exc:
        raise DeadLetterError(str(exc)) from None
