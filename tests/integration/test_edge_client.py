"""The edge SDK's Kafka side against a real broker: request-reply, timeouts, routing, spend.

The pipeline's settle stage (the one that publishes each Decision to the
request's ``reply_to``) has not landed yet, so these tests run a small
*responder* in its place: a real aiokafka consumer of the ad-requests topic
that produces a Decision to each request's ``reply_to``. The behaviour per
request comes from ``params["outcome"]``. Nothing about Kafka is mocked.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from decimal import Decimal

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.edge import (
    EdgeClient,
    EdgeConfig,
    SessionClosedError,
    SessionContext,
    UpstreamError,
    create_session,
)
from streams.kafka_io import create_topics, produce, read_topic
from streams.money import MoneyError
from streams.records import (
    AdPayload,
    AdRequest,
    Decision,
    DecisionStatus,
    SpendEvent,
    decode,
    encode,
)
from streams.topics import TopicNames

pytestmark = pytest.mark.kafka


def vast_for(request_id: str) -> str:
    return f'<VAST version="4.2"><Ad id="{request_id}"><InLine/></Ad></VAST>'


def decision_for(request: AdRequest, outcome: str) -> Decision:
    if outcome == "filled" or outcome == "late":
        return Decision(
            request_id=request.request_id,
            status=DecisionStatus.FILLED,
            user_id=request.user_id,
            campaign_id="camp-1",
            ad=AdPayload(
                ad_id="ad-1",
                vast_xml=vast_for(request.request_id),
                price_micros=2_500_000,
                currency="USD",
            ),
            spend_micros=2_500_000,
            decided_at=int(time.time() * 1000),
        )
    if outcome == "capped":
        return Decision(
            request_id=request.request_id,
            status=DecisionStatus.CAPPED,
            user_id=request.user_id,
            reason="hourly cap 3 reached",
        )
    if outcome == "no_fill":
        return Decision(
            request_id=request.request_id,
            status=DecisionStatus.NO_FILL,
            user_id=request.user_id,
            vast_error_code=303,
            reason="no ad",
        )
    raise AssertionError(f"unknown outcome {outcome}")


class Responder:
    """Stand-in for the pipeline (until the settle agent lands): one reply per request.

    ``params["outcome"]``: filled | capped | no_fill answer at once, ``late``
    answers filled after ``late_delay_s``, ``ignore`` never answers.
    """

    def __init__(self, bootstrap: str, topic: str, *, late_delay_s: float = 0.0) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.late_delay_s = late_delay_s
        self.requests: list[tuple[bytes | None, AdRequest]] = []
        self.sent_messages: collections.Counter[str] = collections.Counter()
        self.sent_bytes: collections.Counter[str] = collections.Counter()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Responder:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10
        )
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=0)
        await self.consumer.start()
        await self.producer.start()
        parts = self.consumer.partitions_for_topic(self.topic)
        while not parts:
            await self.consumer._client.force_metadata_update()
            parts = self.consumer.partitions_for_topic(self.topic)
        tps = [TopicPartition(self.topic, p) for p in parts]
        self.consumer.assign(tps)
        await self.consumer.seek_to_beginning(*tps)
        self._loop = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._loop.cancel()
        for task in [self._loop, *self._tasks]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.consumer.stop()
        await self.producer.stop()

    async def _run(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=100)
            for records in batches.values():
                for record in records:
                    request = decode(AdRequest, record.value or b"")
                    self.requests.append((record.key, request))
                    outcome = str(request.params.get("outcome", "filled"))
                    if outcome == "ignore":
                        continue
                    delay = self.late_delay_s if outcome == "late" else 0.0
                    task = asyncio.create_task(self._reply(request, outcome, delay))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)

    async def _reply(self, request: AdRequest, outcome: str, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        assert request.reply_to, "the edge must set reply_to"
        raw = encode(decision_for(request, outcome))
        await self.producer.send_and_wait(
            request.reply_to, key=request.request_id.encode(), value=raw
        )
        self.sent_messages[request.reply_to] += 1
        self.sent_bytes[request.reply_to] += len(raw)


def edge_config(bootstrap: str, prefix: str, instance: str, **extra: object) -> EdgeConfig:
    values: dict[str, object] = {
        "request_timeout_s": 5.0,
        "delete_reply_topic_on_close": True,
        **extra,
    }
    return EdgeConfig(
        bootstrap_servers=bootstrap,
        topic_prefix=prefix,
        instance_id=instance,
        **values,  # type: ignore[arg-type]
    )


async def make_topics(bootstrap: str, prefix: str) -> TopicNames:
    names = TopicNames.from_prefix(prefix)
    await create_topics(bootstrap, [names.ad_requests, names.spend], partitions=2)
    return names


def ad_request(request_id: str, user: str = "user-1", **params: object) -> AdRequest:
    return AdRequest(
        request_id=request_id, user_id=user, timestamp=int(time.time() * 1000), params=params
    )


def test_decide_round_trip(kafka_bootstrap: str, unique: str) -> None:
    prefix = f"e{unique}."

    async def scenario() -> None:
        names = await make_topics(kafka_bootstrap, prefix)
        async with (
            Responder(kafka_bootstrap, names.ad_requests) as responder,
            EdgeClient(edge_config(kafka_bootstrap, prefix, "edge-a")) as client,
        ):
            assert client.reply_topic == f"{prefix}replies.edge-a"
            # reply_to given by the caller is overwritten with the instance's topic.
            sent = ad_request("r-1", outcome="filled")
            decision = await client.decide(sent)
            assert decision.status is DecisionStatus.FILLED
            assert decision.request_id == "r-1"
            assert decision.ad is not None and decision.ad.vast_xml == vast_for("r-1")
            key, seen = responder.requests[0]
            assert key == b"user-1"  # keyed by user: the frequency row's partition
            assert seen.reply_to == client.reply_topic

            capped = await client.decide(ad_request("r-2", "user-2", outcome="capped"))
            assert capped.status is DecisionStatus.CAPPED
            stats = client.stats()
            assert stats["requests"] == 2
            assert stats["decisions"] == {"filled": 1, "capped": 1}
            assert stats["timeouts"] == 0 and stats["in_flight"] == 0
            assert stats["latency_ms"]["count"] == 2
            assert 0 < stats["latency_ms"]["p50"] <= stats["latency_ms"]["p99"] < 5000
            pending = asyncio.create_task(client.decide(ad_request("r-3", outcome="ignore")))
            await asyncio.sleep(0.05)
            with pytest.raises(ValueError, match="already in flight"):
                await client.decide(ad_request("r-3", outcome="filled"))
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending
            assert client.stats()["in_flight"] == 0

    asyncio.run(scenario())


def test_session_request_returns_vast_or_none(kafka_bootstrap: str, unique: str) -> None:
    prefix = f"e{unique}."

    async def scenario() -> None:
        names = await make_topics(kafka_bootstrap, prefix)
        async with (
            Responder(kafka_bootstrap, names.ad_requests) as responder,
            EdgeClient(edge_config(kafka_bootstrap, prefix, f"s-{unique}")) as client,
        ):
            context = SessionContext(
                timestamp=int(time.time() * 1000),
                correlator="corr-1",
                cachebusting="42",
                cookies={"uid": "cookie-user"},
                request_id="req-abc",
            )
            async with await create_session(context, client=client) as session:
                xml = await session.request(params={"slot": "pre-roll", "outcome": "filled"})
                assert xml == vast_for("req-abc")
                assert await session.request(params={"outcome": "capped"}) is None
                assert session.last_decision is not None
                assert session.last_decision.status is DecisionStatus.CAPPED
                assert session.last_decision.reason == "hourly cap 3 reached"
                none = await session.request(params={"outcome": "no_fill"}, user_id="explicit")
                assert none is None
                assert session.last_decision.status is DecisionStatus.NO_FILL
            ids = [r.request_id for _, r in responder.requests]
            assert ids == ["req-abc", "req-abc.2", "req-abc.3"]
            users = [r.user_id for _, r in responder.requests]
            assert users == ["cookie-user", "cookie-user", "explicit"]
            first = responder.requests[0][1]
            assert (first.correlator, first.cachebusting) == ("corr-1", "42")
            assert first.params == {"slot": "pre-roll", "outcome": "filled"}
            assert first.timestamp == context.timestamp
            # The borrowed client outlives the session.
            assert client.running

    asyncio.run(scenario())


def test_timeout_fallback_and_late_reply_counted(kafka_bootstrap: str, unique: str) -> None:
    prefix = f"e{unique}."

    async def scenario() -> None:
        names = await make_topics(kafka_bootstrap, prefix)
        async with (
            Responder(kafka_bootstrap, names.ad_requests, late_delay_s=0.8) as responder,
            EdgeClient(edge_config(kafka_bootstrap, prefix, f"t-{unique}")) as client,
        ):
            # Warm up so metadata lookups do not eat the short timeouts below.
            assert (await client.decide(ad_request("warm"))).status is DecisionStatus.FILLED

            started = time.monotonic()
            ignored = await client.decide(ad_request("r-ignored", outcome="ignore"), 0.3)
            elapsed = time.monotonic() - started
            assert ignored.status is DecisionStatus.TIMEOUT
            assert ignored.reason == "no decision within 0.3 s"
            assert ignored.request_id == "r-ignored" and ignored.user_id == "user-1"
            assert 0.3 <= elapsed < 0.45, elapsed

            late = await client.decide(ad_request("r-late", outcome="late"), 0.3)
            assert late.status is DecisionStatus.TIMEOUT
            deadline = time.monotonic() + 5
            while client.stats()["late_replies"] < 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            stats = client.stats()
            assert stats["late_replies"] == 1
            assert stats["unknown_replies"] == 0
            assert stats["timeouts"] == 2
            assert stats["decisions"] == {"filled": 1, "timeout": 2}
            assert responder.sent_messages[client.reply_topic] == 2  # warm + late
            assert stats["reply_messages"] == 2

            # Through the session API the timeout is the seed's fallback: None.
            session = await create_session(SessionContext.new("u-9"), client=client)
            assert await session.request(params={"outcome": "ignore"}, timeout_s=0.2) is None
            assert session.last_decision is not None
            assert session.last_decision.status is DecisionStatus.TIMEOUT
            await session.close()

    asyncio.run(scenario())


def test_two_clients_read_only_their_own_replies(kafka_bootstrap: str, unique: str) -> None:
    prefix = f"e{unique}."
    per_client = 25

    async def scenario() -> None:
        names = await make_topics(kafka_bootstrap, prefix)
        async with (
            Responder(kafka_bootstrap, names.ad_requests) as responder,
            EdgeClient(edge_config(kafka_bootstrap, prefix, "one")) as one,
            EdgeClient(edge_config(kafka_bootstrap, prefix, "two")) as two,
        ):
            assert one.reply_topic != two.reply_topic
            calls = []
            for i in range(per_client):
                outcome = "filled" if i % 2 else "capped"
                calls.append(one.decide(ad_request(f"one-{i}", f"u{i}", outcome=outcome)))
                calls.append(two.decide(ad_request(f"two-{i}", f"u{i}", outcome=outcome)))
            decisions = await asyncio.gather(*calls)
            for i in range(per_client):
                assert decisions[2 * i].request_id == f"one-{i}"
                assert decisions[2 * i + 1].request_id == f"two-{i}"
            assert all(d.status is not DecisionStatus.TIMEOUT for d in decisions)
            # A reply can be read before the broker's ack reaches the responder,
            # which counts what it sent only then.
            for _ in range(100):
                if sum(responder.sent_messages.values()) >= 2 * per_client:
                    break
                await asyncio.sleep(0.05)
            for client in (one, two):
                stats = client.stats()
                # Each consumer read exactly the replies addressed to it, byte for byte.
                assert stats["reply_messages"] == per_client
                assert stats["reply_bytes"] == responder.sent_bytes[client.reply_topic]
                assert stats["unknown_replies"] == 0 and stats["late_replies"] == 0
                assert stats["requests"] == per_client

    asyncio.run(scenario())


def test_consumer_starts_after_old_replies(kafka_bootstrap: str, unique: str) -> None:
    """A restarted instance with a stable id must not take an old reply for a new one."""
    prefix = f"e{unique}."
    config = edge_config(kafka_bootstrap, prefix, "stable", delete_reply_topic_on_close=False)

    async def scenario() -> None:
        names = await make_topics(kafka_bootstrap, prefix)
        # Previous incarnation: its topic holds a stale "filled" answer for r-1.
        await create_topics(kafka_bootstrap, [config.reply_topic], partitions=1)
        stale = decision_for(ad_request("r-1"), "filled")
        await produce(kafka_bootstrap, config.reply_topic, [(b"r-1", encode(stale))])
        async with (
            Responder(kafka_bootstrap, names.ad_requests),
            EdgeClient(config) as client,
        ):
            assert client.start_offset == 1
            decision = await client.decide(ad_request("r-1", outcome="capped"))
            assert decision.status is DecisionStatus.CAPPED
            assert client.stats()["reply_messages"] == 1

    asyncio.run(scenario())


def test_track_budget_produces_spend_events(kafka_bootstrap: str, unique: str) -> None:
    prefix = f"e{unique}."

    async def scenario() -> list[SpendEvent]:
        names = await make_topics(kafka_bootstrap, prefix)
        config = edge_config(kafka_bootstrap, prefix, f"b-{unique}")
        async with await create_session(SessionContext.new("u"), config=config) as session:
            first = await session.track_budget("camp-1", 2.50)
            second = await session.track_budget("camp-2", Decimal("0.000001"), event_id="ev-7")
            third = await session.track_budget("camp-1", "1.25")
            with pytest.raises(MoneyError):  # more than 6 decimals
                await session.track_budget("camp-1", 0.1234567)
            with pytest.raises(MoneyError):  # negative: the pipeline would dead-letter it
                await session.track_budget("camp-1", "-1.25")
            assert session.client.stats()["spend_events"] == 3
        assert first.amount_micros == 2_500_000 and len(first.event_id) == 36
        assert second.event_id == "ev-7" and second.amount_micros == 1
        assert third.amount_micros == 1_250_000
        messages = await read_topic(kafka_bootstrap, names.spend, expected=3, timeout_s=15)
        assert len(messages) == 3
        by_id = {decode(SpendEvent, m.value or b"").event_id: m for m in messages}
        assert by_id[second.event_id].key == b"camp-2"
        assert by_id[first.event_id].key == b"camp-1"
        return [decode(SpendEvent, m.value or b"") for m in messages]

    events = asyncio.run(scenario())
    assert sorted(e.amount_micros for e in events) == [1, 1_250_000, 2_500_000]


def test_close_is_idempotent(
    kafka_bootstrap: str, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = f"e{unique}."
    caplog.set_level(logging.INFO, logger="xsp.edge")

    async def scenario() -> None:
        await make_topics(kafka_bootstrap, prefix)
        config = edge_config(kafka_bootstrap, prefix, f"c-{unique}")
        session = await create_session(SessionContext.new("u"), config=config)
        client = session.client
        assert client.running
        await session.close()
        await session.close()
        assert session.closed and not client.running  # an owned client closes with it
        with pytest.raises(SessionClosedError):
            await session.request()
        with pytest.raises(UpstreamError):
            await client.decide(ad_request("after-close"))
        with pytest.raises(UpstreamError):
            await client.track_spend("camp-1", 1)
        await client.close()
        with pytest.raises(UpstreamError):
            await client.start()

        # A borrowed client stays open after the session closes, and closes twice fine.
        async with EdgeClient(edge_config(kafka_bootstrap, prefix, f"d-{unique}")) as shared:
            borrowed = await create_session(SessionContext.new("u"), client=shared)
            await borrowed.close()
            await borrowed.close()
            assert shared.running
            await shared.close()
            await shared.close()
            assert not shared.running

    asyncio.run(scenario())
    # Each close released and logged its metrics exactly once.
    closed = [r.getMessage().split(":")[0] for r in caplog.records if " closed:" in r.getMessage()]
    edges = sorted(m for m in closed if m.startswith("edge "))
    assert edges == [f"edge c-{unique} closed", f"edge d-{unique} closed"], closed
    assert len([m for m in closed if m.startswith("session ")]) == 2, closed
