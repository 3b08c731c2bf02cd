"""The edge's worker-state queries against a real HTTP server on 127.0.0.1.

The worker's HTTP views have not landed yet, so a small aiohttp.web server
implements the agreed contract in their place (``/xsp/v1/frequency/{user}``,
``/xsp/v1/budget/{campaign}``, bearer token, 401, 404). The Session query
methods touch no Kafka, so these sessions wrap an EdgeClient that is never
started (its constructor opens no connection).
"""

from __future__ import annotations

import asyncio
import math
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from streams.edge import (
    AuthError,
    EdgeClient,
    EdgeConfig,
    Session,
    SessionContext,
    StateBackendError,
    StateUnavailableError,
    UnknownCampaignError,
    WorkerQueries,
)
from streams.settings import SettingsError

TOKEN = "s3cret-token"
FREQUENCY = {"served_last_hour": 2, "served_last_day": 10, "pending": 1}
BUDGET = {
    "campaign_id": "camp-1",
    "currency": "USD",
    "total_micros": 100_000_000,
    "daily_micros": None,
    "spent_micros": 80_000_000,
    "spent_today_micros": 5_000_000,
    "reserved_micros": 7_654_322,
    "remaining_micros": 12_345_678,
    "exhausted": False,
}


@dataclass
class FakeWorker:
    """Stand-in for a worker's HTTP views (until they land); records what it was asked."""

    token: str | None = TOKEN
    mode: str = "ok"  # ok | error500 | malformed | slow
    seen_paths: list[str] = field(default_factory=list)
    seen_auth: list[str | None] = field(default_factory=list)

    def _check(self, request: web.Request) -> web.Response | None:
        self.seen_paths.append(request.path)
        self.seen_auth.append(request.headers.get("Authorization"))
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"error": "unauthorized"}, status=401)
        if self.mode == "error500":
            return web.json_response({"error": "boom"}, status=500)
        if self.mode == "malformed":
            return web.json_response({"served_last_hour": "two"})
        return None

    async def frequency(self, request: web.Request) -> web.Response:
        if self.mode == "slow":
            await asyncio.sleep(2)
        refused = self._check(request)
        if refused is not None:
            return refused
        user = request.match_info["user_id"]
        return web.json_response({"user_id": user, "as_of_ms": int(time.time() * 1000)} | FREQUENCY)

    async def budget(self, request: web.Request) -> web.Response:
        refused = self._check(request)
        if refused is not None:
            return refused
        if request.match_info["campaign_id"] != "camp-1":
            return web.json_response({"error": "unknown campaign"}, status=404)
        return web.json_response(BUDGET)


@asynccontextmanager
async def serve(worker: FakeWorker) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/xsp/v1/frequency/{user_id}", worker.frequency)
    app.router.add_get("/xsp/v1/budget/{campaign_id}", worker.budget)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def dead_url() -> str:
    """A loopback URL nobody listens on (the port was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def config(urls: list[str], **extra: object) -> EdgeConfig:
    values: dict[str, object] = {"api_token": TOKEN, "query_timeout_s": 0.5, "retries": 0}
    values.update(extra)
    return EdgeConfig(worker_urls=urls, **values)  # type: ignore[arg-type]


def offline_session(cfg: EdgeConfig) -> Session:
    # Session queries use only the client's HTTP pool; the Kafka side stays unstarted.
    return Session(SessionContext.new("u-1"), EdgeClient(cfg), owns_client=True)


def test_queries_send_bearer_token_and_parse_contract() -> None:
    async def scenario() -> None:
        worker = FakeWorker()
        async with serve(worker) as url:
            queries = WorkerQueries(config([url]))
            try:
                freq = await queries.frequency("user/with:odd chars")
                budget = await queries.budget("camp-1")
            finally:
                await queries.close()
        assert worker.seen_auth == [f"Bearer {TOKEN}"] * 2
        # The user id is one path segment, however odd its characters.
        assert worker.seen_paths[0] == "/xsp/v1/frequency/user/with:odd chars"
        assert (freq.served_last_hour, freq.served_last_day, freq.pending) == (2, 10, 1)
        assert freq.user_id == "user/with:odd chars" and freq.headroom is None
        assert budget.remaining_micros == 12_345_678 and budget.daily_micros is None
        assert budget.currency == "USD" and budget.exhausted is False

    asyncio.run(scenario())


def test_wrong_token_raises_auth_error_even_when_failing_open() -> None:
    async def scenario() -> None:
        worker = FakeWorker()
        async with serve(worker) as url:
            queries = WorkerQueries(config([url], api_token="wrong"))
            with pytest.raises(AuthError, match="HTTP 401"):
                await queries.frequency("u-1")
            await queries.close()
            session = offline_session(config([url], api_token=None, fail_open=True))
            with pytest.raises(AuthError):
                await session.check_frequency_cap("u-1", limit=3)
            with pytest.raises(AuthError):
                await session.get_budget("camp-1")
            await session.close()
        assert worker.seen_auth == ["Bearer wrong", None, None]
        assert issubclass(AuthError, StateUnavailableError)

    asyncio.run(scenario())


def test_server_down_raises_state_unavailable_and_fails_over() -> None:
    async def scenario() -> None:
        down = dead_url()
        queries = WorkerQueries(config([down], retries=1, retry_backoff_s=0.01))
        started = time.monotonic()
        with pytest.raises(StateUnavailableError, match="no worker answered the frequency"):
            await queries.frequency("u-1")
        assert time.monotonic() - started < 2.0
        assert queries.stats()["query_attempts"] == 2  # retries=1: two passes over one URL
        await queries.close()

        worker = FakeWorker()
        async with serve(worker) as url:
            # First URL dead, second alive: the answer comes from the second.
            queries = WorkerQueries(config([down, url]))
            freq = await queries.frequency("u-1")
            assert freq.served_last_hour == 2
            assert queries.stats()["query_failovers"] == 1
            await queries.close()

            for mode in ("error500", "malformed", "slow"):
                worker.mode = mode
                queries = WorkerQueries(config([url], query_timeout_s=0.3))
                started = time.monotonic()
                with pytest.raises(StateUnavailableError):
                    await queries.frequency("u-1")
                assert time.monotonic() - started < 1.0, mode
                await queries.close()

    asyncio.run(scenario())


def test_fail_open_choice() -> None:
    async def scenario() -> None:
        down = dead_url()
        open_session = offline_session(config([down], fail_open=True))
        assert await open_session.check_frequency_cap("u-1", limit=0) is True
        assert await open_session.get_budget("camp-1") == math.inf
        assert open_session.counters["state_unavailable"] == 2
        await open_session.close()

        closed_session = offline_session(config([down], fail_open=False))
        with pytest.raises(StateUnavailableError):
            await closed_session.check_frequency_cap("u-1", limit=3)
        # The seed's exception name still catches it.
        with pytest.raises(StateBackendError):
            await closed_session.get_budget("camp-1")
        await closed_session.close()

    asyncio.run(scenario())


def test_cap_key_prefixes_map_to_windows() -> None:
    # served_last_hour=2, served_last_day=10, pending=1 (pending counts as served).
    async def scenario() -> None:
        worker = FakeWorker()
        async with serve(worker) as url:
            session = offline_session(config([url]))
            hourly = "freq:hourly:user-7"
            daily = "freq:daily:user-7"
            results = [
                await session.check_frequency_cap(hourly, limit=3),  # 2+1 < 3 → False
                await session.check_frequency_cap(hourly, limit=4),  # 3 < 4 → True
                await session.check_frequency_cap(daily, limit=11),  # 10+1 < 11 → False
                await session.check_frequency_cap(daily, limit=12),  # 11 < 12 → True
                await session.check_frequency_cap("user-7", limit=4),  # bare id = hourly
                await session.check_frequency_cap("user-7"),  # no limit, no headroom field
            ]
            await session.close()
        assert results == [False, True, False, True, True, True]
        # The worker is always asked about the bare user id.
        assert set(worker.seen_paths) == {"/xsp/v1/frequency/user-7"}

    asyncio.run(scenario())


def test_get_budget_returns_currency_units() -> None:
    async def scenario() -> None:
        async with serve(FakeWorker()) as url:
            session = offline_session(config([url]))
            assert await session.get_budget("camp-1") == pytest.approx(12.345678)
            assert await session.get_spend("camp-1") == pytest.approx(80.0)
            status = await session.budget_status("camp-1")
            assert status.reserved_micros == 7_654_322
            # Unknown campaign: nothing to serve from it.
            assert await session.get_budget("nope") == 0.0
            with pytest.raises(UnknownCampaignError):
                await session.get_spend("nope")
            await session.close()

    asyncio.run(scenario())


def test_config_from_env() -> None:
    cfg = EdgeConfig.from_env(
        {
            "XSP_BOOTSTRAP_SERVERS": "127.0.0.1:9093",
            "XSP_TOPIC_PREFIX": "p.",
            "XSP_EDGE_INSTANCE_ID": "pod-3",
            "XSP_WORKER_URLS": "http://127.0.0.1:6066/, http://127.0.0.1:6067",
            "XSP_API_TOKEN": "tok",
            "XSP_EDGE_TIMEOUT_S": "0.25",
            "XSP_EDGE_FAIL_OPEN": "yes",
        }
    )
    assert cfg.reply_topic == "p.replies.pod-3"
    assert cfg.worker_urls == ["http://127.0.0.1:6066", "http://127.0.0.1:6067"]
    assert (cfg.api_token, cfg.request_timeout_s, cfg.fail_open) == ("tok", 0.25, True)
    assert "tok" not in repr(cfg)
    with pytest.raises(SettingsError, match="XSP_EDGE_FAIL_OPEN"):
        EdgeConfig.from_env({"XSP_EDGE_FAIL_OPEN": "maybe"})
    with pytest.raises(SettingsError, match="XSP_EDGE_INSTANCE_ID"):
        EdgeConfig.from_env({"XSP_EDGE_INSTANCE_ID": "bad/id"})
    with pytest.raises(SettingsError, match="XSP_EDGE_TIMEOUT_S"):
        EdgeConfig.from_env({"XSP_EDGE_TIMEOUT_S": "soon"})
