"""The examples/ scripts against real Kafka, a real ``xsp worker`` and the mock ad server.

Each seed scenario's promise is asserted on what the example observed:
Scenario 1 returns the inline's VAST XML, Scenario 2's 4th request under a
cap of 3 gets ``None``, Scenario 3 falls back once the budget is gone (and
``get_budget`` reports 0 remaining), Scenario 4's wrapper chain resolves to
the inline, and a slow ad server or a missing worker means timeout →
fallback. Then every script runs as a user would run it (a subprocess,
configured from ``XSP_*`` variables) and must exit 0.

One worker serves the whole module (starting one per test would triple the
run time); every example run puts campaigns with a fresh suffix and uses
fresh user ids, so the tests cannot see each other's caps or budgets.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from streams.campaign_admin import put_campaigns
from streams.edge import EdgeClient, EdgeConfig, SessionContext, create_session
from streams.kafka_io import create_xsp_topics
from streams.mock_adserver import inline_xml
from streams.records import DecisionStatus
from streams.settings import Settings
from streams.topics import TopicNames
from tests.conftest import Stack

pytestmark = pytest.mark.kafka

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SCRIPTS = [
    "scenario_1_preroll.py",
    "scenario_2_frequency_cap.py",
    "scenario_3_budget.py",
    "scenario_4_vast_chain.py",
    "production_patterns.py",
]


def example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` the way ``python examples/<name>.py`` would find it."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)


class Running:
    """The module's stack: settings, the worker, and the ``XSP_*`` environment of an edge."""

    def __init__(self, stack: Stack, worker: Any) -> None:
        self.stack = stack
        self.worker = worker
        self.ad_server = stack.ad_server
        self.env = {
            "XSP_BOOTSTRAP_SERVERS": stack.settings.bootstrap_servers,
            "XSP_TOPIC_PREFIX": stack.settings.topic_prefix,
            "XSP_WORKER_URLS": stack.worker_url(worker),
        }

    def edge_config(self, **overrides: Any) -> EdgeConfig:
        """The examples' own config builder, fed this stack's environment."""
        return example("_support").edge_config(self.env, **overrides)


async def _wait_until_serving(config: EdgeConfig, ad_server: str, timeout_s: float) -> str:
    """Return once the worker fills a request end to end (admit, budget, resolve, settle)."""
    support = example("_support")
    cid = f"warm-{uuid.uuid4().hex[:8]}"
    names = TopicNames.from_prefix(config.topic_prefix)
    configs = [support.campaign(cid, f"{ad_server}/inline")]
    await put_campaigns(config.bootstrap_servers, names, json.dumps(configs).encode())
    async with EdgeClient(config) as edge:
        deadline = time.monotonic() + timeout_s
        session = await create_session(SessionContext.new("warm-up"), client=edge)
        async with session:
            while time.monotonic() < deadline:
                # Before the worker knows the campaign the request is dead-lettered (timeout).
                decision = await session.decide({"campaign_id": cid}, timeout_s=3.0)
                if decision.status is DecisionStatus.FILLED:
                    return cid
        raise AssertionError(f"the worker did not fill a request in {timeout_s} s")


@pytest.fixture(scope="module")
def running(
    kafka_bootstrap: str, mock_adserver: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    """Topics, one worker (web API on), serving: shared by the module's tests."""
    unique = uuid.uuid4().hex[:10]
    workdir = tmp_path_factory.mktemp("examples")
    settings = Settings(
        bootstrap_servers=kafka_bootstrap,
        app_id=f"xsp-test-{unique}",
        topic_prefix=f"t{unique}.",
        partitions=4,
        data_dir=workdir / "worker-data",
        web_enabled=True,
        session_timeout_s=6.0,
        heartbeat_interval_s=0.5,
        rebalance_timeout_s=6.0,
        vast_allowed_networks="127.0.0.1/32",
        tick_interval_s=0.5,
    )
    asyncio.run(
        create_xsp_topics(
            kafka_bootstrap, TopicNames.from_prefix(settings.topic_prefix), partitions=4
        )
    )
    stack = Stack(settings, mock_adserver, workdir)
    try:
        worker = stack.start_worker()
        state = Running(stack, worker)
        try:
            asyncio.run(_wait_until_serving(state.edge_config(), mock_adserver, 60))
        except Exception:
            print(worker.log_tail())
            raise
        yield state
    finally:
        stack.stop()


def test_scenario_1_preroll_returns_the_inline_vast(running: Running) -> None:
    async def go() -> Any:
        async with EdgeClient(running.edge_config()) as edge:
            return await example("scenario_1_preroll").run(edge, running.ad_server)

    result = asyncio.run(go())
    assert result.decision is not None and result.decision.status is DecisionStatus.FILLED, (
        result.decision
    )
    # Byte for byte the document the ad server sent for /inline.
    assert result.vast_xml == inline_xml(running.ad_server)
    assert result.decision.campaign_id == result.campaign_id
    assert result.decision.spend_micros == 100_000  # the campaign's 0.10 cpi price


def test_scenario_2_fourth_request_under_a_cap_of_3_gets_none(running: Running) -> None:
    async def go() -> Any:
        async with EdgeClient(running.edge_config()) as edge:
            return await example("scenario_2_frequency_cap").run(edge, running.ad_server)

    result = asyncio.run(go())
    assert [ad is not None for ad in result.ads] == [True, True, True, False], result
    assert all(ad == inline_xml(running.ad_server) for ad in result.ads[:3])
    assert result.advisory == [True, True, True, False]
    # Without the advisory check the pipeline's atomic check refuses it.
    assert result.unchecked_status == "capped"
    assert "frequency cap" in result.unchecked_reason


def test_scenario_3_exhausted_budget_falls_back_and_reports_zero(running: Running) -> None:
    async def go() -> tuple[Any, Any]:
        async with EdgeClient(running.edge_config()) as edge:
            result = await example("scenario_3_budget").run(edge, running.ad_server)
            status = await edge.queries.budget(result.campaign_id)
            return result, status

    result, status = asyncio.run(go())
    assert [ad is not None for ad in result.ads] == [True, True, False], result
    assert result.remaining_before == [5.0, 2.5, 0.0]
    assert result.unchecked_status == "budget_exhausted"
    assert result.remaining_after == 0.0
    assert result.spent_after == 5.0
    assert status.remaining_micros == 0 and status.reserved_micros == 0
    assert status.spent_micros == status.total_micros == 5_000_000
    assert status.exhausted is True


def test_scenario_4_wrapper_chain_resolves_to_the_inline(running: Running) -> None:
    async def go() -> Any:
        async with EdgeClient(running.edge_config()) as edge:
            return await example("scenario_4_vast_chain").run(edge, running.ad_server)

    result = asyncio.run(go())
    decision = result.decision
    assert decision is not None and decision.status is DecisionStatus.FILLED, decision
    # The XML is the inline's (the last hop), not a wrapper's.
    assert result.vast_xml == inline_xml(running.ad_server)
    assert "<Wrapper>" not in result.vast_xml
    assert decision.hops == 4
    assert decision.ad is not None and decision.ad.ad_id == "inline-0"
    impressions = set(decision.ad.impression_urls)
    for ad_id in ("w3", "w2", "w1", "inline-0"):
        assert f"{running.ad_server}/pixel/imp/{ad_id}" in impressions


def test_production_patterns_and_timeout_fallback(running: Running) -> None:
    async def go() -> tuple[Any, int, int]:
        async with EdgeClient(running.edge_config()) as edge:
            module = example("production_patterns")
            result = await module.run(edge, running.ad_server)
            # 7 fills at 0.10 plus one 0.25 fee sent twice with one event id,
            # then a 0.01 marker with a new id: the marker lands after both
            # copies (same key, same partition), so once it shows, a double
            # count would show too.
            expected = 7 * 100_000 + 250_000
            session = await create_session(SessionContext.new("marker"), client=edge)
            async with session:
                await session.track_budget(result.campaign_id, "0.01")
            spent = -1
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                spent = (await edge.queries.budget(result.campaign_id)).spent_micros
                if spent >= expected + 10_000:
                    break
                await asyncio.sleep(0.1)
            return result, spent, expected + 10_000

    result, spent, expected = asyncio.run(go())
    assert all(ad == inline_xml(running.ad_server) for ad in result.served), result.served
    assert result.metrics.request_count == 5 and result.metrics.error_count == 0
    assert result.metrics.statuses == {"filled": 5}
    assert result.retried_ad == inline_xml(running.ad_server)
    assert result.timeout_result == example("production_patterns").FALLBACK
    assert result.timeout_status == "timeout"
    assert result.cap_recovery_ad is not None
    assert len(set(result.spend_event_ids)) == 1 and len(result.spend_event_ids) == 2
    assert spent == expected


def test_no_worker_means_timeout_and_fallback(xsp_stack: Stack) -> None:
    """Nobody consumes the requests: ``request()`` returns None after the edge timeout."""

    async def go() -> tuple[str | None, Any, float]:
        config = EdgeConfig(
            bootstrap_servers=xsp_stack.settings.bootstrap_servers,
            topic_prefix=xsp_stack.settings.topic_prefix,
            request_timeout_s=1.0,
        )
        async with EdgeClient(config) as edge:
            session = await create_session(SessionContext.new("nobody-home"), client=edge)
            async with session:
                started = time.monotonic()
                xml = await session.request(params={"slot": "pre-roll"})
                return xml, session.last_decision, time.monotonic() - started

    xml, decision, elapsed = asyncio.run(go())
    assert xml is None
    assert decision is not None and decision.status is DecisionStatus.TIMEOUT
    assert "no decision within 1 s" in decision.reason
    assert 0.9 <= elapsed < 3.0


def test_every_example_runs_as_a_script(running: Running) -> None:
    """``python examples/<script>.py --ad-server URL`` with XSP_* set exits 0 and says OK."""
    # Five scripts at once on a 2-core machine: the edge's default 1 s decision
    # timeout would turn a slow answer into a fallback and break the cap arithmetic.
    env = {**os.environ, **running.env, "XSP_EDGE_TIMEOUT_S": "10"}
    procs = {
        script: subprocess.Popen(
            [sys.executable, str(EXAMPLES / script), "--ad-server", running.ad_server],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for script in SCRIPTS
    }
    failures = []
    for script, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        if proc.returncode != 0 or not out.rstrip().endswith("OK"):
            failures.append(f"{script}: exit {proc.returncode}\n{out}\n{err[-3000:]}")
    assert not failures, "\n\n".join(failures)


def test_example_exits_2_when_the_stack_is_down(tmp_path: Path) -> None:
    """A script pointed at no broker says so and exits 2 (no traceback)."""
    env = {
        **os.environ,
        "XSP_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "XSP_WORKER_URLS": "http://127.0.0.1:1",
    }
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "scenario_1_preroll.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "is the stack running?" in proc.stderr
    assert "Traceback" not in proc.stderr
