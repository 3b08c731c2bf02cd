"""Edge configuration, the error types, and the HTTP query client for worker state.

The edge asks the workers two *read-only* questions: how many ads a user was
served recently, and how much budget a campaign has left. Both answers are
advisory: the authoritative cap and budget checks happen atomically inside
the pipeline (check + reserve in one keyed table row), so an answer that is
a few milliseconds stale can never overspend; it can only make the edge skip
a request the pipeline would have served, or send one it will refuse.

Worker contract (the worker side implements exactly this):

* ``GET {base}/xsp/v1/frequency/{user_id}`` → 200 ``{"user_id", "as_of_ms",
  "served_last_hour", "served_last_day", "pending"}``; 401 on a bad token.
* ``GET {base}/xsp/v1/budget/{campaign_id}`` → 200 ``{"campaign_id",
  "currency", "total_micros", "daily_micros", "spent_micros",
  "spent_today_micros", "reserved_micros", "remaining_micros", "exhausted"}``;
  404 ``{"error": "unknown campaign"}``.

Any worker answers any key (Faust routes to the owner), so ``worker_urls`` is
a list tried in order: the next URL is a fail-over, not a shard.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from streams.settings import SettingsError

__all__ = [
    "AuthError",
    "BudgetStatus",
    "EdgeConfig",
    "EdgeError",
    "FrequencyStatus",
    "StateBackendError",
    "StateUnavailableError",
    "UnknownCampaignError",
    "WorkerQueries",
    "default_instance_id",
]

log = logging.getLogger("xsp.edge.queries")

T = TypeVar("T")

# Kafka topic names allow [a-zA-Z0-9._-] up to 249 characters; the reply topic
# is "<prefix>replies.<instance_id>", so the id gets the same alphabet.
_INSTANCE_ID = re.compile(r"[A-Za-z0-9._-]{1,120}")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class EdgeError(Exception):
    """Base class of every error the edge SDK raises on purpose."""


class StateUnavailableError(EdgeError):
    """No worker could answer a state query (down, timing out, 5xx, malformed answer).

    The seed called this ``StateBackendError``; the alias below keeps seed
    ``except`` clauses working.
    """


StateBackendError = StateUnavailableError


class AuthError(StateUnavailableError):
    """A worker refused the bearer token (HTTP 401/403).

    A subclass of :class:`StateUnavailableError` so seed-style handlers catch
    it, but ``fail_open`` never swallows it: a wrong token is a deployment
    mistake that must be loud, not a blip to ride out.
    """


class UnknownCampaignError(EdgeError, LookupError):
    """The workers do not know the campaign (HTTP 404)."""


def default_instance_id() -> str:
    """A reply-topic-safe id unique per process: ``<host>-<8 hex>``."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:60] or "edge"
    return f"{host}-{uuid.uuid4().hex[:8]}"


@dataclass(slots=True)
class EdgeConfig:
    """Configuration of one edge process (one :class:`~streams.edge.EdgeClient`).

    ``instance_id`` names this process's reply topic; give a stable id (e.g. a
    StatefulSet pod name) to reuse one topic across restarts, or leave the
    default (host + random suffix) for a fresh topic per process.
    ``request_timeout_s`` bounds :meth:`EdgeClient.decide`; ``query_timeout_s``
    bounds one HTTP query to one worker; ``retries`` is how many extra passes
    over ``worker_urls`` a query makes (backoff ``retry_backoff_s * 2**n``).
    """

    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = "xsp."
    instance_id: str = field(default_factory=default_instance_id)
    worker_urls: list[str] = field(default_factory=list)
    # repr=False: configs get logged; the token must not be.
    api_token: str | None = field(default=None, repr=False)
    request_timeout_s: float = 1.0
    query_timeout_s: float = 0.5
    fail_open: bool = False
    retries: int = 1
    retry_backoff_s: float = 0.05
    reply_retention_ms: int = 3_600_000
    linger_ms: int = 1
    delete_reply_topic_on_close: bool = False

    def __post_init__(self) -> None:
        self.validate()

    @property
    def reply_topic(self) -> str:
        """This instance's reply topic: ``<prefix>replies.<instance_id>``."""
        return f"{self.topic_prefix}replies.{self.instance_id}"

    def validate(self) -> None:
        """Raise ``SettingsError`` naming the field if the values cannot work."""
        if not self.bootstrap_servers.strip():
            raise SettingsError("XSP_BOOTSTRAP_SERVERS must not be empty")
        if not _INSTANCE_ID.fullmatch(self.instance_id):
            raise SettingsError(
                "XSP_EDGE_INSTANCE_ID must be 1-120 characters of [A-Za-z0-9._-], "
                f"got {self.instance_id!r}"
            )
        for url in self.worker_urls:
            if not url.startswith(("http://", "https://")):
                raise SettingsError(f"XSP_WORKER_URLS entries must be http(s) URLs, got {url!r}")
        if self.request_timeout_s <= 0:
            raise SettingsError(f"XSP_EDGE_TIMEOUT_S must be > 0, got {self.request_timeout_s}")
        if self.query_timeout_s <= 0:
            raise SettingsError(f"query_timeout_s must be > 0, got {self.query_timeout_s}")
        if self.retries < 0:
            raise SettingsError(f"retries must be >= 0, got {self.retries}")
        if self.reply_retention_ms < 1000:
            raise SettingsError(
                f"reply_retention_ms must be >= 1000, got {self.reply_retention_ms}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EdgeConfig:
        """Build a config from ``XSP_*`` variables (default ``os.environ``).

        Reads XSP_BOOTSTRAP_SERVERS, XSP_TOPIC_PREFIX, XSP_EDGE_INSTANCE_ID,
        XSP_WORKER_URLS (comma-separated), XSP_API_TOKEN, XSP_EDGE_TIMEOUT_S,
        XSP_EDGE_FAIL_OPEN, plus XSP_EDGE_QUERY_TIMEOUT_S and XSP_EDGE_RETRIES.
        Unset or empty variables keep the defaults; bad values raise
        ``SettingsError`` naming the variable.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}

        def text(var: str) -> str | None:
            raw = env.get(var)
            return raw.strip() if raw is not None and raw.strip() else None

        def number(var: str, kind: type[float] | type[int]) -> float | int | None:
            raw = text(var)
            if raw is None:
                return None
            try:
                return kind(raw)
            except ValueError:
                raise SettingsError(f"{var} must be {kind.__name__}, got {raw!r}") from None

        for var, name in (
            ("XSP_BOOTSTRAP_SERVERS", "bootstrap_servers"),
            ("XSP_TOPIC_PREFIX", "topic_prefix"),
            ("XSP_EDGE_INSTANCE_ID", "instance_id"),
            ("XSP_API_TOKEN", "api_token"),
        ):
            if (raw := text(var)) is not None:
                values[name] = raw
        if (raw := text("XSP_WORKER_URLS")) is not None:
            values["worker_urls"] = [u.strip().rstrip("/") for u in raw.split(",") if u.strip()]
        for var, name, kind in (
            ("XSP_EDGE_TIMEOUT_S", "request_timeout_s", float),
            ("XSP_EDGE_QUERY_TIMEOUT_S", "query_timeout_s", float),
            ("XSP_EDGE_RETRIES", "retries", int),
        ):
            if (value := number(var, kind)) is not None:
                values[name] = value
        if (raw := text("XSP_EDGE_FAIL_OPEN")) is not None:
            if raw.lower() in _TRUE:
                values["fail_open"] = True
            elif raw.lower() in _FALSE:
                values["fail_open"] = False
            else:
                raise SettingsError(f"XSP_EDGE_FAIL_OPEN must be true/false, got {raw!r}")
        return cls(**values)


@dataclass(frozen=True, slots=True)
class FrequencyStatus:
    """A worker's view of one user's recent impressions (``as_of_ms`` is its clock).

    ``headroom`` is an optional field (not yet in the worker contract): the
    smallest number of ads the user may still see across the caps the worker
    enforces; ``None`` when the worker does not send it.
    """

    user_id: str
    as_of_ms: int
    served_last_hour: int
    served_last_day: int
    pending: int
    headroom: int | None = None

    def served_in(self, window_s: int) -> int:
        """Served plus in-flight reservations in the window (3600 or 86400 s).

        Pending reservations count: most of them become impressions, so an
        advisory check that ignored them would let a burst past the cap.
        """
        if window_s == 3600:
            return self.served_last_hour + self.pending
        if window_s == 86400:
            return self.served_last_day + self.pending
        raise ValueError(f"the worker reports 3600 s and 86400 s windows, not {window_s} s")


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """A worker's view of one campaign's budget, in integer micros."""

    campaign_id: str
    currency: str
    total_micros: int
    daily_micros: int | None
    spent_micros: int
    spent_today_micros: int
    reserved_micros: int
    remaining_micros: int
    exhausted: bool


class _Malformed(Exception):
    """A 200 answer that does not match the contract (treated like a failing worker)."""


def _int(obj: Mapping[str, Any], name: str, *, nullable: bool = False) -> Any:
    value = obj.get(name)
    if value is None and nullable:
        return None
    if type(value) is not int:
        raise _Malformed(f"{name} must be an integer, got {value!r}")
    return value


def _parse_frequency(obj: Mapping[str, Any]) -> FrequencyStatus:
    return FrequencyStatus(
        user_id=str(obj.get("user_id", "")),
        as_of_ms=_int(obj, "as_of_ms"),
        served_last_hour=_int(obj, "served_last_hour"),
        served_last_day=_int(obj, "served_last_day"),
        pending=_int(obj, "pending"),
        headroom=_int(obj, "headroom", nullable=True),
    )


def _parse_budget(obj: Mapping[str, Any]) -> BudgetStatus:
    exhausted = obj.get("exhausted")
    if not isinstance(exhausted, bool):
        raise _Malformed(f"exhausted must be a boolean, got {exhausted!r}")
    return BudgetStatus(
        campaign_id=str(obj.get("campaign_id", "")),
        currency=str(obj.get("currency", "")),
        total_micros=_int(obj, "total_micros"),
        daily_micros=_int(obj, "daily_micros", nullable=True),
        spent_micros=_int(obj, "spent_micros"),
        spent_today_micros=_int(obj, "spent_today_micros"),
        reserved_micros=_int(obj, "reserved_micros"),
        remaining_micros=_int(obj, "remaining_micros"),
        exhausted=exhausted,
    )


def _default_transport() -> httpx.AsyncBaseTransport:
    # The project measured httpx's own pool as slow under concurrency; the
    # aiohttp transport keeps the httpx API with aiohttp's pool underneath.
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=30)
    try:
        from httpx_aiohttp import AiohttpTransport
    except ImportError:  # pragma: no cover - httpx-aiohttp is a declared dependency
        return httpx.AsyncHTTPTransport(limits=limits, retries=0)
    return AiohttpTransport(limits=limits, trust_env=False)


class WorkerQueries:
    """Read-only queries of worker state over HTTP; one pooled client per edge.

    Guarantees: every call returns a parsed status or raises one of
    :class:`StateUnavailableError`, :class:`AuthError` or
    :class:`UnknownCampaignError` (never an httpx/aiohttp exception); each
    HTTP attempt is bounded by ``query_timeout_s``; a call makes at most
    ``(retries + 1) * len(worker_urls)`` attempts. Counters are in
    :meth:`stats`.
    """

    def __init__(
        self, config: EdgeConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.config = config
        self._urls = [u.rstrip("/") for u in config.worker_urls]
        headers = {"Accept": "application/json", "User-Agent": "xsp-edge/1"}
        if config.api_token:
            headers["Authorization"] = f"Bearer {config.api_token}"
        self._client = httpx.AsyncClient(
            transport=transport or _default_transport(),
            headers=headers,
            timeout=config.query_timeout_s,
            follow_redirects=False,
            trust_env=False,  # never send the token through an env-configured proxy
        )
        self._closed = False
        self.counters: dict[str, int] = {
            "queries": 0,
            "query_attempts": 0,
            "query_failures": 0,
            "query_failovers": 0,
            "auth_failures": 0,
        }

    async def frequency(self, user_id: str) -> FrequencyStatus:
        """The worker's counters for ``user_id`` (the bare user id, no ``freq:`` prefix)."""
        path = f"/xsp/v1/frequency/{quote(user_id, safe='')}"
        return await self._get(path, _parse_frequency, what="frequency")

    async def budget(self, campaign_id: str) -> BudgetStatus:
        """The worker's budget view of ``campaign_id``; 404 → :class:`UnknownCampaignError`."""
        path = f"/xsp/v1/budget/{quote(campaign_id, safe='')}"
        return await self._get(path, _parse_budget, what="budget")

    def stats(self) -> dict[str, int]:
        """A copy of the query counters."""
        return dict(self.counters)

    async def close(self) -> None:
        """Close the connection pool; idempotent."""
        if not self._closed:
            self._closed = True
            await self._client.aclose()

    async def _get(self, path: str, parse: Callable[[Mapping[str, Any]], T], *, what: str) -> T:
        self.counters["queries"] += 1
        if self._closed:
            raise StateUnavailableError("the query client is closed")
        if not self._urls:
            self.counters["query_failures"] += 1
            raise StateUnavailableError("no worker URLs configured (XSP_WORKER_URLS)")
        errors: list[str] = []
        for attempt in range(self.config.retries + 1):
            if attempt:
                await asyncio.sleep(self.config.retry_backoff_s * 2 ** (attempt - 1))
            for index, base in enumerate(self._urls):
                if errors:
                    self.counters["query_failovers"] += 1
                self.counters["query_attempts"] += 1
                try:
                    # Parsing inside the loop: a malformed answer is one bad
                    # worker (e.g. mid-upgrade), so the next one is asked.
                    return parse(await self._get_one(base + path, what=what))
                except _Malformed as exc:
                    errors.append(f"{base}: malformed {what} answer: {exc}")
                except _Failed as exc:
                    errors.append(f"{base}: {exc}")
                log.debug("worker %d (%s) failed: %s", index, base, errors[-1])
        self.counters["query_failures"] += 1
        raise StateUnavailableError(f"no worker answered the {what} query: " + "; ".join(errors))

    async def _get_one(self, url: str, *, what: str) -> dict[str, Any]:
        started = time.monotonic()
        try:
            # The asyncio timeout is the real bound: it covers connect, headers
            # and body whatever the transport does with httpx's timeout object.
            async with asyncio.timeout(self.config.query_timeout_s):
                response = await self._client.get(url)
                body = response.content
        except TimeoutError:
            raise _Failed(f"no answer within {self.config.query_timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise _Failed(f"{type(exc).__name__}: {exc}") from None
        status = response.status_code
        if status in (401, 403):
            self.counters["auth_failures"] += 1
            raise AuthError(f"worker {url} refused the API token (HTTP {status})")
        if status == 404 and what == "budget":
            raise UnknownCampaignError(f"unknown campaign ({url})")
        if status != 200:
            raise _Failed(f"HTTP {status} after {time.monotonic() - started:.3f} s")
        try:
            obj = response.json() if body else None
        except ValueError:
            raise _Malformed("not JSON") from None
        if not isinstance(obj, dict):
            raise _Malformed("not a JSON object")
        return obj


class _Failed(Exception):
    """One attempt at one worker failed in a way another worker might not."""
