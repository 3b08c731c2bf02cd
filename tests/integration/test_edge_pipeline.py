"""The edge SDK against the REAL pipeline and worker views (no stand-ins).

One ``xsp worker`` with ``XSP_API_TOKEN=t`` serves the module: the advisory
reads (``check_frequency_cap``, ``get_budget``) go through its query API with
the bearer token, ``track_budget`` goes through the spend agent into the
budget table, and two edge *processes* share the worker while each reads
only its own reply topic.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.edge import AuthError, EdgeClient, EdgeConfig, SessionContext, create_session
from streams.kafka_io import create_xsp_topics, read_topic
from streams.records import Decision, DecisionStatus, decode
from streams.settings import Settings
from streams.topics import TopicNames
from tests.conftest import Stack
from tests.integration.test_examples import example

pytestmark = pytest.mark.kafka

TOKEN = "t"


class Running:
    """The module's worker and how an edge reaches it."""

    def __init__(self, stack: Stack, worker: Any) -> None:
        self.stack = stack
        self.worker = worker
        self.url = stack.worker_url(worker)

    def config(self, **overrides: Any) -> EdgeConfig:
        values: dict[str, Any] = {
            "bootstrap_servers": self.stack.settings.bootstrap_servers,
            "topic_prefix": self.stack.settings.topic_prefix,
            "worker_urls": [self.url],
            "api_token": TOKEN,
            "request_timeout_s": 5.0,
            "query_timeout_s": 2.0,
        }
        values.update(overrides)
        return EdgeConfig(**values)

    def campaign(self, *, budget: str = "10", caps: list[dict[str, Any]] | None = None) -> str:
        """Put one campaign (``/inline``, 2.50 cpi, default budget 10, cap 3/h) and wait for it."""
        support = example("_support")
        cid = f"edge-{uuid.uuid4().hex[:8]}"
        config = support.campaign(
            cid,
            f"{self.stack.ad_server}/inline",
            price="2.50",
            budget=budget,
            caps=[{"limit": 3, "window": "1h"}] if caps is None else caps,
        )

        async def put() -> None:
            async with EdgeClient(self.config()) as edge:
                await support.setup_campaigns(edge, [config])

        asyncio.run(put())
        return cid


def _settings(bootstrap: str, workdir: Path) -> Settings:
    unique = uuid.uuid4().hex[:10]
    return Settings(
        bootstrap_servers=bootstrap,
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


def _start(bootstrap: str, ad_server: str, workdir: Path) -> tuple[Stack, Any]:
    settings = _settings(bootstrap, workdir)
    names = TopicNames.from_prefix(settings.topic_prefix)
    asyncio.run(create_xsp_topics(bootstrap, names, partitions=settings.partitions))
    stack = Stack(settings, ad_server, workdir)
    return stack, stack.start_worker(api_token=TOKEN)


async def _serve_once(config: EdgeConfig, cid: str, timeout_s: float = 60) -> None:
    """Return once the worker filled one request for ``cid`` (it is up and routing)."""
    deadline = time.monotonic() + timeout_s
    async with EdgeClient(config) as edge:
        session = await create_session(SessionContext.new("warm-up"), client=edge)
        async with session:
            while time.monotonic() < deadline:
                decision = await session.decide({"campaign_id": cid}, timeout_s=3.0)
                if decision.status is DecisionStatus.FILLED:
                    return
    raise AssertionError("the worker never filled a request")


@pytest.fixture(scope="module")
def running(
    kafka_bootstrap: str, mock_adserver: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    stack, worker = _start(kafka_bootstrap, mock_adserver, tmp_path_factory.mktemp("edgepipe"))
    try:
        state = Running(stack, worker)
        warm = state.campaign(budget="100000", caps=[])
        try:
            asyncio.run(_serve_once(state.config(), warm))
        except Exception:
            print(worker.log_tail())
            raise
        yield state
    finally:
        stack.stop()


def test_advisory_reads_through_the_worker_query_api_with_a_token(running: Running) -> None:
    cid = running.campaign()
    user = f"user-{uuid.uuid4().hex[:8]}"

    async def go() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with EdgeClient(running.config()) as edge:
            session = await create_session(SessionContext.new(user), client=edge)
            async with session:
                out["fresh_cap"] = await session.check_frequency_cap(user, limit=1)
                out["fresh_budget"] = await session.get_budget(cid)
                out["xml"] = await session.request(params={"campaign_id": cid})
                # Settle of the cap slot is asynchronous: wait until nothing is pending.
                deadline = time.monotonic() + 10
                status = await edge.queries.frequency(user)
                while status.pending and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                    status = await edge.queries.frequency(user)
                out["frequency"] = status
                out["cap_1"] = await session.check_frequency_cap(user, limit=1)
                out["cap_2"] = await session.check_frequency_cap(f"freq:daily:{user}", limit=2)
                out["budget"] = await session.budget_status(cid)
                out["remaining"] = await session.get_budget(cid)
                out["spent"] = await session.get_spend(cid)
                out["unknown"] = await session.get_budget("no-such-campaign")
                out["queries"] = edge.stats()["queries"]
        return out

    out = asyncio.run(go())
    assert out["fresh_cap"] is True and out["fresh_budget"] == 10.0
    assert out["xml"] is not None and "<InLine>" in out["xml"]
    frequency = out["frequency"]
    assert (frequency.served_last_hour, frequency.served_last_day, frequency.pending) == (1, 1, 0)
    assert out["cap_1"] is False and out["cap_2"] is True
    budget = out["budget"]
    assert budget.currency == "USD" and budget.total_micros == 10_000_000
    assert budget.spent_micros == 2_500_000 and budget.reserved_micros == 0
    assert budget.remaining_micros == 7_500_000 and budget.exhausted is False
    assert out["remaining"] == 7.5 and out["spent"] == 2.5
    assert out["unknown"] == 0.0
    assert out["queries"]["auth_failures"] == 0


@pytest.mark.parametrize("token", [None, "wrong"])
def test_query_api_refuses_a_missing_or_wrong_token(running: Running, token: str | None) -> None:
    cid = running.campaign()

    async def go() -> list[str]:
        raised = []
        config = running.config(api_token=token, fail_open=True)  # AuthError is never swallowed
        async with EdgeClient(config) as edge:
            session = await create_session(SessionContext.new("u"), client=edge)
            async with session:
                for call in (
                    lambda: session.check_frequency_cap("u", limit=3),
                    lambda: session.get_budget(cid),
                ):
                    try:
                        await call()
                    except AuthError as exc:
                        raised.append(str(exc))
        return raised

    raised = asyncio.run(go())
    assert len(raised) == 2, raised
    assert all("HTTP 401" in message for message in raised)


def _spent(running: Running, cid: str, at_least: int, timeout_s: float = 15) -> int:
    async def go() -> int:
        async with EdgeClient(running.config()) as edge:
            deadline = time.monotonic() + timeout_s
            spent = -1
            while time.monotonic() < deadline:
                status = await edge.queries.budget(cid)
                spent = status.spent_micros
                if spent >= at_least:
                    return spent
                await asyncio.sleep(0.1)
            return spent

    return asyncio.run(go())


def test_track_budget_counts_a_duplicated_event_id_once(running: Running) -> None:
    cid = running.campaign()

    async def go() -> list[str]:
        ids = []
        async with EdgeClient(running.config()) as edge:
            session = await create_session(SessionContext.new("u"), client=edge)
            async with session:
                for _ in range(3):  # the same event, re-sent as after a produce error
                    event = await session.track_budget(cid, "1.25", event_id="fee-1")
                    ids.append(event.event_id)
        # From a second client too: the dedupe is in the pipeline, not the client.
        async with EdgeClient(running.config()) as other:
            session = await create_session(SessionContext.new("u"), client=other)
            async with session:
                await session.track_budget(cid, "1.25", event_id="fee-1")
                # A marker with a new id, same key: once it is applied, so are the copies.
                await session.track_budget(cid, "0.50", event_id="marker")
        return ids

    ids = asyncio.run(go())
    assert ids == ["fee-1"] * 3
    assert _spent(running, cid, at_least=1_750_000) == 1_750_000


def test_track_budget_refuses_negative_amounts_at_the_edge(running: Running) -> None:
    """Negative adjustments are dead-lettered by the pipeline, so the SDK refuses them early."""
    from streams.money import MoneyError

    cid = running.campaign()

    async def go() -> None:
        async with EdgeClient(running.config()) as edge:
            session = await create_session(SessionContext.new("u"), client=edge)
            async with session:
                await session.track_budget(cid, "2.00", event_id="charge")
                with pytest.raises(MoneyError):
                    await session.track_budget(cid, "-0.50", event_id="refund")
                await session.track_budget(cid, "0.25", event_id="marker")

    asyncio.run(go())
    assert _spent(running, cid, at_least=2_250_000, timeout_s=8) == 2_250_000


EDGE_PROCESS = r"""
import asyncio, json, sys
from streams.edge import EdgeClient, EdgeConfig, SessionContext, create_session

async def main(cfg, cid, count, tag):
    async with EdgeClient(EdgeConfig(**cfg)) as edge:
        print("ready", flush=True)
        sys.stdin.readline()  # "go": both processes send at the same time
        async def one(i):
            ctx = SessionContext.new(f"{tag}-user-{i}")
            ctx.request_id = f"{tag}-req-{i}"
            async with await create_session(ctx, client=edge) as session:
                d = await session.decide({"campaign_id": cid})
                return d.request_id, d.status.value
        results = await asyncio.gather(*(one(i) for i in range(count)))
        stats = edge.stats()
        print(json.dumps({"results": results, "stats": stats}), flush=True)

cfg = json.loads(sys.argv[1])
asyncio.run(main(cfg, sys.argv[2], int(sys.argv[3]), sys.argv[4]))
"""


def test_two_edge_processes_each_read_only_their_own_replies(running: Running) -> None:
    cid = running.campaign(budget="100000", caps=[])
    count = 25
    config = running.config()
    procs = {}
    for tag in ("alpha", "beta"):
        cfg = {
            "bootstrap_servers": config.bootstrap_servers,
            "topic_prefix": config.topic_prefix,
            "instance_id": f"{tag}-{uuid.uuid4().hex[:6]}",
            "request_timeout_s": 10.0,
        }
        procs[tag] = (
            cfg,
            subprocess.Popen(
                [sys.executable, "-c", EDGE_PROCESS, json.dumps(cfg), cid, str(count), tag],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
            ),
        )
    try:
        for _, proc in procs.values():
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.strip() == "ready", line + (proc.stderr.read() if proc.stderr else "")
        for _, proc in procs.values():
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        reports = {}
        for tag, (_, proc) in procs.items():
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err[-3000:]
            reports[tag] = json.loads(out.strip().splitlines()[-1])
    finally:
        for _, proc in procs.values():
            if proc.poll() is None:
                proc.kill()

    for tag, (cfg, _) in procs.items():
        report = reports[tag]
        stats = report["stats"]
        assert sorted(rid for rid, _ in report["results"]) == sorted(
            f"{tag}-req-{i}" for i in range(count)
        )
        assert {status for _, status in report["results"]} == {"filled"}, report["results"]
        # Exactly its own replies reached it: no stranger's, none twice.
        assert stats["reply_messages"] == count, stats
        assert stats["unknown_replies"] == 0 and stats["late_replies"] == 0, stats
        # What it read is byte for byte what its own reply topic holds.
        reply_topic = f"{cfg['topic_prefix']}replies.{cfg['instance_id']}"
        messages = asyncio.run(
            read_topic(config.bootstrap_servers, reply_topic, expected=count, timeout_s=15)
        )
        assert len(messages) == count
        assert stats["reply_bytes"] == sum(len(m.value or b"") for m in messages)
        owners = {decode(Decision, m.value or b"").request_id.split("-")[0] for m in messages}
        assert owners == {tag}


def test_query_api_survives_a_second_edge(
    kafka_bootstrap: str, mock_adserver: str, tmp_path: Path
) -> None:
    """Fresh worker: edge A is served, edge B is served, then B's budget read must work."""
    stack, worker = _start(kafka_bootstrap, mock_adserver, tmp_path)
    try:
        state = Running(stack, worker)
        cid = state.campaign(budget="1000", caps=[])
        asyncio.run(_serve_once(state.config(), cid))

        async def second_edge() -> list[str]:
            failures = []
            async with EdgeClient(state.config(retries=0)) as edge:
                session = await create_session(SessionContext.new("b"), client=edge)
                async with session:
                    await session.decide({"campaign_id": cid})
                    for _ in range(5):
                        try:
                            await session.get_budget(cid)
                        except Exception as exc:
                            failures.append(str(exc))
                        await asyncio.sleep(0.3)
            return failures

        failures = asyncio.run(second_edge())
    finally:
        stack.stop()
    assert failures == [], failures[0]
