"""Which reservations a budget worker is waiting on, and since when: expiry without a scan.

The budget agent writes an ExpireCommand for every reservation whose
Resolution has not come within the TTL. Finding them used to mean listing a
campaign's ``p:`` entries on every tick while any reservation was in flight;
those entries include every request settled within the dedupe horizon (one
hour), so a tick read one key per request of the last hour: 6.7 % of the
worker's CPU in a 20,000-request benchmark burst, and at a steady 100
requests/s it would grow to a scan of 90,000 keys per campaign per second.

``PendingIndex`` is the worker's own list, fed by what its budget agent
reserves and settles. It is advisory, never the truth: the table is. So
the planner (``streams.pipeline.plan_expiry``) lists the table instead when
the index cannot be trusted — a campaign it has not listed yet (a worker
that starts or takes a partition over), a count that differs from the
row's pending count, or a listing older than ``rescan_ms`` (a safety net
for a partition that went away and came back with the same count) — and
checks every reservation the index calls overdue against the table before
it writes a command. No Faust import here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["DEFAULT_RESCAN_MS", "PendingIndex"]

DEFAULT_RESCAN_MS = 60_000
# A message that settles the reservation is in the log (its Resolution, or our
# ExpireCommand): the budget agent will get to it, however long its backlog.
_SETTLING = -1


@dataclass(slots=True)
class _Campaign:
    # Request id -> processing time (ms) it was first known pending, or _SETTLING.
    # Insertion order is (nearly) that time's order: ``overdue`` stops at the first
    # entry that is not old enough.
    since: dict[str, int] = field(default_factory=dict)
    listed_at_ms: int | None = None


class PendingIndex:
    """Per campaign: the request ids this worker believes pending, and since when."""

    def __init__(self, rescan_ms: int = DEFAULT_RESCAN_MS) -> None:
        self.rescan_ms = rescan_ms
        self._campaigns: dict[str, _Campaign] = {}

    def reserved(self, campaign_id: str, request_id: str, now_ms: int) -> None:
        """A reservation was made (or seen again): its clock starts now unless already running."""
        self._campaigns.setdefault(campaign_id, _Campaign()).since.setdefault(request_id, now_ms)

    def settled(self, campaign_id: str, request_id: str) -> None:
        """The reservation was settled, released or expired (or is unknown): forget it."""
        entry = self._campaigns.get(campaign_id)
        if entry is not None:
            entry.since.pop(request_id, None)

    def needs_listing(self, campaign_id: str, pending_count: int, now_ms: int) -> bool:
        """Whether the planner must list the table for this campaign instead of trusting us.

        Guarantees True when the campaign was never listed, when the count
        of ids held differs from ``pending_count`` (the row's), and when the
        last listing is ``rescan_ms`` old or older.
        """
        entry = self._campaigns.get(campaign_id)
        return (
            entry is None
            or entry.listed_at_ms is None
            or len(entry.since) != pending_count
            or now_ms - entry.listed_at_ms >= self.rescan_ms
        )

    def listed(self, campaign_id: str, pending_ids: Iterable[str], now_ms: int) -> None:
        """The table says exactly ``pending_ids`` are pending: adopt that.

        Ids already held keep their clock (or their settling mark); new ones
        start it at ``now_ms``; the others are dropped.
        """
        entry = self._campaigns.setdefault(campaign_id, _Campaign())
        pending = set(pending_ids)
        since = {rid: at for rid, at in entry.since.items() if rid in pending}
        for rid in sorted(pending - since.keys()):
            since[rid] = now_ms
        entry.since = since
        entry.listed_at_ms = now_ms

    def overdue(self, campaign_id: str, now_ms: int, ttl_ms: int) -> list[str]:
        """Ids pending ``ttl_ms`` or more with nothing in the log to settle them, oldest first."""
        entry = self._campaigns.get(campaign_id)
        if entry is None:
            return []
        due = []
        for rid, since in entry.since.items():
            if since == _SETTLING:
                continue
            if now_ms - since < ttl_ms:
                break
            due.append(rid)
        return due

    def settling(self, campaign_id: str, request_id: str) -> None:
        """A message that settles it is in the log: its Resolution, or an ExpireCommand.

        It is never overdue again. Under a backlog of ``budget-requests`` a
        delivered Resolution may wait there longer than the TTL; an
        ExpireCommand behind it would only add to the backlog (a full-size
        benchmark burst wrote 19,827 for 26,161 requests, every one after its
        Resolution). An id not held (already settled) stays unheld.
        """
        entry = self._campaigns.get(campaign_id)
        if entry is not None and request_id in entry.since:
            entry.since[request_id] = _SETTLING

    def held(self, campaign_id: str) -> int:
        """How many ids are held for the campaign (settling ones included)."""
        entry = self._campaigns.get(campaign_id)
        return len(entry.since) if entry is not None else 0
