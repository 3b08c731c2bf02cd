"""The seed-compatible session API on top of :class:`~streams.edge.EdgeClient`.

Edge code written against the old library keeps its shape::

    async with await create_session(context, client=edge) as session:
        if await session.check_frequency_cap("user123", limit=3):
            vast_xml = await session.request(params={"slot": "pre-roll"})

What changed underneath (see docs/migration.md): ``request()`` produces an
event and waits for the pipeline's Decision; the authoritative cap and
budget checks happen atomically inside the pipeline, so
``check_frequency_cap`` and ``get_budget`` are *advisory* reads of worker
state; ``track_budget`` produces an idempotent SpendEvent.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import TracebackType
from typing import Any, Self, TypeVar

from streams.edge.client import EdgeClient, UpstreamError
from streams.edge.queries import (
    AuthError,
    BudgetStatus,
    EdgeConfig,
    EdgeError,
    FrequencyStatus,
    StateUnavailableError,
    UnknownCampaignError,
)
from streams.money import MICROS_PER_UNIT, parse_amount
from streams.records import AdRequest, Decision, DecisionStatus, SpendEvent

__all__ = [
    "DAILY_PREFIX",
    "HOURLY_PREFIX",
    "Session",
    "SessionClosedError",
    "SessionContext",
    "create_session",
    "parse_cap_key",
    "retry_with_backoff",
]

log = logging.getLogger("xsp.edge.session")

T = TypeVar("T")

HOURLY_PREFIX = "freq:hourly:"
DAILY_PREFIX = "freq:daily:"
_HOUR_S = 3600
_DAY_S = 86400


class SessionClosedError(EdgeError):
    """The session was closed; create a new one."""


@dataclass(slots=True)
class SessionContext:
    """Per-session request context, field for field the seed's ``SessionContext``.

    ``timestamp`` (ms) becomes each AdRequest's event time (windows and the
    TIMESTAMP macro), ``correlator`` and ``cachebusting`` feed the VAST
    macros, ``cookies['uid']`` is the default user id, ``request_id`` is the
    id of the session's first request (later ones get ``.2``, ``.3``, …).
    """

    timestamp: int
    correlator: str
    cachebusting: str
    cookies: dict[str, str] = field(default_factory=dict)
    request_id: str = ""

    @classmethod
    def new(cls, user_id: str | None = None) -> SessionContext:
        """A context for "now" with fresh random ids (and ``uid`` cookie if given)."""
        return cls(
            timestamp=int(time.time() * 1000),
            correlator=str(uuid.uuid4()),
            cachebusting=str(uuid.uuid4().int % 1_000_000_000),
            cookies={"uid": user_id} if user_id else {},
            request_id=f"req-{uuid.uuid4().hex[:12]}",
        )


def parse_cap_key(key: str) -> tuple[str, int]:
    """Split a seed cap key into ``(user_id, window_s)``.

    ``freq:hourly:<user>`` → 3600 s, ``freq:daily:<user>`` → 86400 s, and a
    bare user id → 3600 s (the seed's examples cap "ads per hour").
    """
    if key.startswith(HOURLY_PREFIX):
        return key[len(HOURLY_PREFIX) :], _HOUR_S
    if key.startswith(DAILY_PREFIX):
        return key[len(DAILY_PREFIX) :], _DAY_S
    return key, _HOUR_S


async def retry_with_backoff(
    operation: Callable[[], Awaitable[T]],
    *,
    attempts: int = 3,
    base_delay_s: float = 1.0,
    max_delay_s: float = 30.0,
    retry_on: tuple[type[BaseException], ...] = (UpstreamError,),
) -> T:
    """Run ``operation`` up to ``attempts`` times, sleeping ``base * 2**n`` between tries.

    The seed's Retry Pattern (``await asyncio.sleep(2 ** attempt)``) with the
    base and cap as parameters. Guarantees: only exceptions in ``retry_on``
    are retried; the last one is re-raised unchanged after the final attempt.
    Each ``Session.request`` call is a new request (new id); to retry *one*
    request, pass the same ``request_id=`` to ``Session.decide`` (the
    pipeline decides an id once).
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    for attempt in range(attempts):
        try:
            return await operation()
        except retry_on:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(min(max_delay_s, base_delay_s * 2**attempt))
    raise AssertionError("unreachable")  # pragma: no cover


class Session:
    """One ad session: the seed's ``UpstreamSession`` over the stream pipeline.

    Create with :func:`create_session`. A session either borrows a shared
    :class:`EdgeClient` (the normal case: one per process) or owns one built
    from an :class:`EdgeConfig` and closes it with the session.
    """

    def __init__(self, context: SessionContext, client: EdgeClient, *, owns_client: bool) -> None:
        self.context = context
        self.client = client
        self.config = client.config
        self._owns_client = owns_client
        self._closed = False
        self._sequence = 0
        self.last_decision: Decision | None = None
        self.counters: collections.Counter[str] = collections.Counter()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise SessionClosedError("the session is closed")

    def _next_request_id(self) -> str:
        self._sequence += 1
        base = self.context.request_id or f"req-{uuid.uuid4().hex}"
        if not self.context.request_id:
            self.context.request_id = base
        return base if self._sequence == 1 else f"{base}.{self._sequence}"

    def _user_id(self, user_id: str | None) -> str:
        resolved = user_id or self.context.cookies.get("uid")
        if not resolved:
            raise ValueError("no user id: pass user_id= or set context.cookies['uid']")
        return resolved

    async def decide(
        self,
        params: Mapping[str, Any] | None = None,
        *,
        user_id: str | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> Decision:
        """Ask the pipeline for an ad and return its full Decision.

        Guarantees: returns within the timeout (default
        ``config.request_timeout_s``), a ``status=timeout`` Decision if the
        pipeline did not answer in time. ``request_id`` defaults to the
        context's (``.2``, ``.3`` … for later requests); pass an id again to
        retry the same request (the pipeline decides it once). Raises
        :class:`UpstreamError` if the request could not be produced,
        :class:`SessionClosedError` after :meth:`close`, ``ValueError`` with
        no user id.
        """
        self._check_open()
        request = AdRequest(
            request_id=request_id or self._next_request_id(),
            user_id=self._user_id(user_id),
            timestamp=self.context.timestamp,
            correlator=self.context.correlator,
            cachebusting=self.context.cachebusting,
            cookies=dict(self.context.cookies),
            params=dict(params or {}),
        )
        self.counters["requests"] += 1
        decision = await self.client.decide(request, timeout_s)
        self.counters[decision.status.value] += 1
        self.last_decision = decision
        return decision

    async def request(
        self,
        params: Mapping[str, Any] | None = None,
        *,
        user_id: str | None = None,
        timeout_s: float | None = None,
    ) -> str | None:
        """The seed's ``request()``: the VAST XML of a filled decision, else ``None``.

        ``None`` means "serve your fallback": no_fill, capped,
        budget_exhausted, error or timeout (the Decision, with its reason, is
        in :attr:`last_decision`). Same errors as :meth:`decide`.
        """
        decision = await self.decide(params, user_id=user_id, timeout_s=timeout_s)
        if decision.status is not DecisionStatus.FILLED:
            return None
        xml = decision.ad.vast_xml if decision.ad is not None else None
        if xml is None:
            log.warning("filled decision %s carries no VAST XML", decision.request_id)
        return xml

    async def check_frequency_cap(self, user_id: str, limit: int | None = None) -> bool:
        """ADVISORY: True if the user looks under ``limit`` in the key's window.

        ``user_id`` may carry the seed's ``freq:hourly:`` / ``freq:daily:``
        prefix (windows 3600 s / 86400 s; a bare id means hourly). Served ads
        plus in-flight reservations are compared with ``limit``. With
        ``limit=None`` the edge knows no limit (caps live in campaign config,
        enforced by the pipeline): the answer is the worker's optional
        ``headroom`` field when it sends one, else True. Read-only; the
        pipeline's atomic check still decides. If no worker answers: True
        with ``fail_open``, else :class:`StateUnavailableError`;
        :class:`AuthError` is always raised.
        """
        self._check_open()
        bare_user, window_s = parse_cap_key(user_id)
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        try:
            status = await self.client.queries.frequency(bare_user)
        except AuthError:
            raise
        except StateUnavailableError as exc:
            return self._fail_open(exc, True, "check_frequency_cap")
        return _under_cap(status, window_s, limit)

    async def budget_status(self, campaign: str) -> BudgetStatus:
        """The worker's full :class:`BudgetStatus` for ``campaign`` (micros; may raise)."""
        self._check_open()
        return await self.client.queries.budget(campaign)

    async def get_budget(self, campaign: str) -> float:
        """ADVISORY: the campaign's *remaining* budget in currency units.

        NOTE the seed returned the amount *spent*; see :meth:`get_spend`.
        Reserved (in-flight) amounts are already subtracted by the worker.
        An unknown campaign has 0.0 left (the pipeline would not serve it).
        If no worker answers: ``math.inf`` with ``fail_open``, else
        :class:`StateUnavailableError`; :class:`AuthError` is always raised.
        """
        self._check_open()
        try:
            status = await self.client.queries.budget(campaign)
        except UnknownCampaignError:
            log.warning("get_budget: unknown campaign %r", campaign)
            return 0.0
        except AuthError:
            raise
        except StateUnavailableError as exc:
            return self._fail_open(exc, math.inf, "get_budget")
        return status.remaining_micros / MICROS_PER_UNIT

    async def get_spend(self, campaign: str) -> float:
        """ADVISORY: what the campaign has spent, in currency units (the seed's ``get_budget``).

        Same error behaviour as :meth:`get_budget`, failing open to 0.0 and
        raising :class:`UnknownCampaignError` for an unknown campaign.
        """
        self._check_open()
        try:
            status = await self.client.queries.budget(campaign)
        except AuthError:
            raise
        except UnknownCampaignError:
            raise
        except StateUnavailableError as exc:
            return self._fail_open(exc, 0.0, "get_spend")
        return status.spent_micros / MICROS_PER_UNIT

    async def track_budget(
        self,
        campaign: str,
        amount: float | Decimal | str | int,
        *,
        event_id: str | None = None,
        reason: str = "",
    ) -> SpendEvent:
        """Record a budget adjustment (the seed's ``track_budget``) as a SpendEvent.

        ``amount`` is in currency units, converted exactly by
        :func:`streams.money.parse_amount`; it must be >= 0 (the pipeline
        dead-letters negative adjustments) and more than 6 decimals raise
        ``MoneyError``. Returns the acknowledged event; the
        pipeline applies each ``event_id`` once, so re-sending it is safe.
        The pipeline already charges the price of every *filled* decision:
        track only costs it cannot know about.
        """
        self._check_open()
        micros = parse_amount(amount, field="amount")
        event = await self.client.track_spend(
            campaign, micros, event_id, reason=reason or f"session {self.context.correlator}"
        )
        self.counters["spend_events"] += 1
        return event

    async def close(self) -> None:
        """Flush pending sends, release the client if owned, log metrics; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._owns_client:
                await self.client.close()
            elif self.client.running:
                await self.client.flush()
        finally:
            log.info("session %s closed: %s", self.context.correlator or "-", dict(self.counters))

    def _fail_open(self, exc: StateUnavailableError, value: T, what: str) -> T:
        self.counters["state_unavailable"] += 1
        if not self.config.fail_open:
            raise exc
        log.warning("%s: worker state unavailable, failing open: %s", what, exc)
        return value


def _under_cap(status: FrequencyStatus, window_s: int, limit: int | None) -> bool:
    if limit is None:
        # No limit at the edge: defer to the worker's headroom if it reports one.
        return status.headroom is None or status.headroom > 0
    return status.served_in(window_s) < limit


async def create_session(
    context: SessionContext,
    *,
    client: EdgeClient | None = None,
    config: EdgeConfig | None = None,
) -> Session:
    """Open a session (the seed's ``upstream.create_session(context)``).

    With ``client`` the session borrows it (started here if needed, never
    closed by the session). Without, it builds and starts its own
    :class:`EdgeClient` from ``config`` (default :meth:`EdgeConfig.from_env`)
    and closes it on :meth:`Session.close`: fine for scripts, wasteful per
    request (a producer, a consumer and a topic check each time). Passing
    both is a ``ValueError``. Raises :class:`UpstreamError` if Kafka is
    unreachable.
    """
    if client is not None and config is not None:
        raise ValueError("pass either client= or config=, not both")
    if client is not None:
        await client.start()
        return Session(context, client, owns_client=False)
    owned = EdgeClient(config or EdgeConfig.from_env())
    try:
        await owned.start()
    except BaseException:
        await owned.close()
        raise
    return Session(context, owned, owns_client=True)
