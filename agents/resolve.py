"""resolve: follow each request's VAST chain over HTTP and record the outcome.

Source ``resolve-requests`` (key request id); each Resolution goes to
``budget-requests`` (key campaign), where the budget agent settles it. The
recorded Resolutions are what a replay folds, so it never calls an ad server.

This stage is stateless and the only concurrent one, and it is deliberately
*not* a Faust agent: Faust's conductor delivers every topic of a worker
through one loop that waits whenever the producer buffer is full or any
agent's queue is, so a burst queued for ``admit`` held resolutions back for
16 s in a 10,000-request test (and the budget agent then expired every
reservation). Here the stage has its own aiokafka consumer (group
``<app id>-resolve``) and producer inside the worker process. Up to
``XSP_RESOLVE_CONCURRENCY`` requests are resolved at once, each sent on as
soon as it is ready (in one ``Resolutions`` message per campaign with the
others that finished while that campaign's previous message was in
flight), and offsets are committed only below
the lowest request whose Resolution is not yet delivered — at least once,
never lost (and not Faust's ``concurrency=N``, which can lose acks,
faust-streaming#606).
Resolving a fetched batch together and sending it whole held every request
for the batch's slowest chain and left newly arrived requests unread
meanwhile: at 100 requests/s the hop took p50 38-47 ms for chains that the
ad server answers in 2 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from streams.app import XspApp
from streams.commit_watch import InFlight
from streams.prompt_fetch import prompt_fetches
from streams.records import (
    MAX_RESOLUTIONS_PER_MESSAGE,
    ContractError,
    DeadLetter,
    Resolution,
    Resolutions,
    ResolveRequest,
    decode,
    encode,
)
from streams.resolution import resolve_request
from streams.settings import Settings
from streams.vast import FetchConfig, VastHttpClient

__all__ = ["fetch_config", "register", "resolve_group"]

log = logging.getLogger(__name__)
STAGE = "resolve"
COMMIT_EVERY_S = 0.2
# A Resolution carries the resolved VAST (up to the fetcher's 1 MiB body cap):
# a message stays below the broker's default message.max.bytes (1 MiB).
RESOLUTIONS_MAX_BYTES = 512 * 1024
_ITEM_OVERHEAD_BYTES = 2048  # a generous bound on a Resolution without its VAST text


def fetch_config(settings: Settings) -> FetchConfig:
    """The HTTP fetcher's configuration for a worker (SSRF allow-list from the settings)."""
    networks = tuple(
        str(ipaddress.ip_network(cidr.strip(), strict=False))
        for cidr in settings.vast_allowed_networks.split(",")
        if cidr.strip()
    )
    return FetchConfig(
        total_timeout_s=settings.vast_timeout_s,
        per_hop_timeout_s=min(settings.vast_timeout_s, FetchConfig().per_hop_timeout_s),
        allowed_networks=networks,
        pool_size=max(settings.resolve_concurrency, 16),
    )


def resolve_group(settings: Settings) -> str:
    """The consumer group of the resolve stage (watch its lag like the app's)."""
    return f"{settings.app_id}-resolve"


def register(app: XspApp) -> None:
    """Run the resolve stage for the lifetime of ``app``'s worker."""

    @app.task
    async def resolve_stage() -> None:
        while True:
            try:
                await _run(app)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("resolve stage failed; restarting in 1 s")
                await asyncio.sleep(1.0)


class _Revocations(ConsumerRebalanceListener):
    """Before partitions move away: finish their resolutions and commit them.

    aiokafka awaits this before it rejoins the group, so the next owner starts
    after the last delivered Resolution, not before it (re-doing a few
    requests is safe but re-calls their ad servers).
    """

    def __init__(self, stage: _ResolveStage) -> None:
        self.stage = stage

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.stage.finish(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        return None


class _Outbox:
    """Resolutions waiting for their message, batched only while their campaign's is in flight.

    ``add`` returns a future that is done once the message carrying the
    Resolution is acknowledged (or fails with the send's error). Per campaign
    at most one message (cut into chunks by ``_chunks``) is in flight: a
    Resolution that finds none goes out on the loop's next turn with any
    others finished in the same turn; those that finish while one is in
    flight leave together as soon as it is acknowledged. So a lone request
    waits for nothing, and under load a batch grows with the broker's ack
    time and the budget agent settles it in one Faust event. A fixed 5 ms
    window did the batching before: at ~120 decisions/s it batched ~1.3
    Resolutions per message and added up to 5 ms to every request.
    """

    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self.waiting: dict[str, list[tuple[Resolution, asyncio.Future[None]]]] = {}
        self.in_flight: dict[str, asyncio.Task[None]] = {}

    def add(self, resolution: Resolution) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        delivered: asyncio.Future[None] = loop.create_future()
        campaign_id = resolution.campaign_id or ""
        entries = self.waiting.setdefault(campaign_id, [])
        entries.append((resolution, delivered))
        # The first one waiting schedules the flush; while a message is in
        # flight, its acknowledgement flushes instead.
        if len(entries) == 1 and campaign_id not in self.in_flight:
            loop.call_soon(self._flush, campaign_id)
        return delivered

    def _flush(self, campaign_id: str) -> None:
        if campaign_id in self.in_flight:
            return  # the message in flight flushes this campaign when it is acknowledged
        entries = self.waiting.pop(campaign_id, None)
        if not entries:
            return
        task = asyncio.create_task(self._send(campaign_id, _chunks(entries)))
        self.in_flight[campaign_id] = task
        task.add_done_callback(lambda _: self._sent(campaign_id))

    def _sent(self, campaign_id: str) -> None:
        self.in_flight.pop(campaign_id, None)
        if self.waiting.get(campaign_id):
            self._flush(campaign_id)

    async def _send(
        self, campaign_id: str, chunks: list[list[tuple[Resolution, asyncio.Future[None]]]]
    ) -> None:
        await asyncio.gather(*(self._send_chunk(campaign_id, chunk) for chunk in chunks))

    async def _send_chunk(
        self, campaign_id: str, chunk: list[tuple[Resolution, asyncio.Future[None]]]
    ) -> None:
        envelope = Resolutions(campaign_id=campaign_id, items=tuple(r for r, _ in chunk))
        try:
            sent = await self.producer.send(
                self.topic, key=campaign_id.encode(), value=encode(envelope)
            )
            await sent
        except asyncio.CancelledError:
            for _, delivered in chunk:
                delivered.cancel()
            raise
        except Exception as exc:  # the waiting requests fail with it, and stay uncommitted
            for _, delivered in chunk:
                if not delivered.done():
                    delivered.set_exception(exc)
            return
        for _, delivered in chunk:
            if not delivered.done():
                delivered.set_result(None)

    def close(self) -> None:
        """Drop what has not been sent (its requests stay uncommitted and are re-read)."""
        for entries in self.waiting.values():
            for _, delivered in entries:
                delivered.cancel()
        self.waiting = {}
        for task in list(self.in_flight.values()):
            task.cancel()


def _chunks(
    entries: list[tuple[Resolution, asyncio.Future[None]]],
) -> list[list[tuple[Resolution, asyncio.Future[None]]]]:
    """``entries`` cut into messages of at most MAX_RESOLUTIONS_PER_MESSAGE and ~512 KiB."""
    chunks: list[list[tuple[Resolution, asyncio.Future[None]]]] = [[]]
    size = 0
    for entry in entries:
        ad = entry[0].ad
        item_bytes = _ITEM_OVERHEAD_BYTES + (len(ad.vast_xml) if ad is not None else 0)
        current = chunks[-1]
        if current and (
            len(current) >= MAX_RESOLUTIONS_PER_MESSAGE or size + item_bytes > RESOLUTIONS_MAX_BYTES
        ):
            chunks.append([])
            size = 0
        chunks[-1].append(entry)
        size += item_bytes
    return chunks


class _ResolveStage:
    """One consumer, one producer, up to ``concurrency`` resolutions at a time.

    Each fetched request is resolved in its own task and its Resolution sent
    as soon as it is ready (a slow ad server delays only its own requests);
    offsets are committed every ``COMMIT_EVERY_S`` up to the lowest request
    whose Resolution is not yet delivered (``InFlight``): at least once.
    """

    def __init__(self, app: XspApp, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> None:
        self.settings = app.xsp_settings
        self.names = app.xsp_topics.names
        self.metrics = app.xsp_metrics
        self.consumer = consumer
        self.producer = producer
        self.client = VastHttpClient(fetch_config(self.settings))
        self.outbox = _Outbox(producer, self.names.budget_requests)
        self.in_flight = InFlight()
        self.tasks: dict[asyncio.Task[None], TopicPartition] = {}
        self.failure: BaseException | None = None

    async def run(self) -> None:
        concurrency = self.settings.resolve_concurrency
        committer = asyncio.create_task(self._commit_periodically())
        try:
            while True:
                if self.failure is not None:
                    raise self.failure
                free = concurrency - len(self.tasks)
                if free <= 0:
                    await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
                    continue
                batch = await self.consumer.getmany(timeout_ms=200, max_records=free)
                # No await from here on: every fetched record has its task
                # before a revocation can look for them.
                for tp, records in batch.items():
                    self.metrics.event_in(STAGE, self.names.resolve_requests, len(records))
                    for record in records:
                        self.in_flight.start(tp, record.offset)
                        task = asyncio.create_task(self._one(tp, record))
                        self.tasks[task] = tp
                        task.add_done_callback(self._finished)
        finally:
            committer.cancel()
            for task in list(self.tasks):
                task.cancel()
            self.outbox.close()
            with contextlib.suppress(asyncio.CancelledError):
                await self.commit()
            await self.client.aclose()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.tasks.pop(task, None)
        if not task.cancelled() and task.exception() is not None and self.failure is None:
            # Its offset stays uncommitted; the stage restarts and re-reads it.
            self.failure = task.exception()

    async def _one(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        names = self.names
        try:
            request = decode(ResolveRequest, record.value or b"")
        except ContractError as exc:
            letter = DeadLetter.of(record, stage=STAGE, reason=str(exc), dead_at=record.timestamp)
            await (await self.producer.send(names.dlq, key=record.key, value=encode(letter)))
            self.metrics.dead_letter(STAGE)
            self.in_flight.done(tp, record.offset)
            return
        resolution = await resolve_request(
            request, self.client, timeout_s=self.settings.vast_timeout_s
        )
        await self.outbox.add(resolution)
        self.in_flight.done(tp, record.offset)
        self.metrics.event_out(STAGE, names.budget_requests)
        if resolution.vast_error_code is not None:
            self.metrics.vast_error(resolution.vast_error_code)
        for hop, ms in resolution.timings_ms.items():
            if hop != "total":
                self.metrics.observe_hop(hop, ms / 1000)

    async def commit(self) -> None:
        """Commit what is delivered in the partitions this consumer still owns.

        A failure (a rebalance under way) is logged and left: the revocation
        commits, or the next owner re-resolves the few requests since the last
        commit.
        """
        owned = self.consumer.assignment()
        offsets = {tp: o for tp, o in self.in_flight.committable().items() if tp in owned}
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)  # type: ignore[arg-type]
        except KafkaError as exc:
            log.info("resolve commit skipped: %r", exc)
            return
        self.in_flight.committed(offsets)  # type: ignore[arg-type]

    async def _commit_periodically(self) -> None:
        while True:
            await asyncio.sleep(COMMIT_EVERY_S)
            await self.commit()

    async def finish(self, revoked: set[TopicPartition]) -> None:
        """Wait for the revoked partitions' resolutions, commit them, forget them."""
        waiting = [task for task, tp in self.tasks.items() if tp in revoked]
        if waiting:
            await asyncio.wait(waiting, timeout=self.settings.vast_timeout_s + 5.0)
        await self.commit()
        self.in_flight.forget(revoked)


async def _run(app: XspApp) -> None:
    settings = app.xsp_settings
    names = app.xsp_topics.names
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=resolve_group(settings),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=settings.consumer_fetch_max_wait_ms,
        session_timeout_ms=int(settings.session_timeout_s * 1000),
        heartbeat_interval_ms=int(settings.heartbeat_interval_s * 1000),
        rebalance_timeout_ms=int(settings.rebalance_timeout_s * 1000),
        # Under exactly-once, a ResolveRequest from an aborted budget transaction
        # must not be resolved: its reservation never existed.
        isolation_level=(
            "read_committed"
            if settings.processing_guarantee == "exactly_once"
            else "read_uncommitted"
        ),
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        acks="all",
        # The outbox batches per campaign while a message is in flight; the
        # linger only joins different campaigns' messages into one request.
        linger_ms=settings.producer_linger_ms,
    )
    stage = _ResolveStage(app, consumer, producer)
    consumer.subscribe([names.resolve_requests], listener=_Revocations(stage))
    await producer.start()
    await consumer.start()
    prompt_fetches(consumer)
    try:
        await stage.run()
    finally:
        with contextlib.suppress(KafkaError, asyncio.CancelledError):
            await consumer.stop()
        with contextlib.suppress(KafkaError, asyncio.CancelledError):
            await producer.stop()
