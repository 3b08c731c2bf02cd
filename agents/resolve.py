"""resolve: follow each reserved request's VAST chain over HTTP and record the outcome.

The budget agent hands every request it reserved to this stage in the same
worker process (``ResolveStage.submit``); each Resolution goes to
``budget-requests`` (key campaign), where the budget agent settles it. The
recorded Resolutions are what a replay folds, so it never calls an ad server.

There is no Kafka topic between budget and resolve. Until session 13 a
``resolve-requests`` topic carried them (one message per request, read back
by a consumer group of this stage's own): one Kafka hop and ~12 % of a
decision's messages for a durability nobody could use. A request whose
resolution dies with its worker is settled by reservation expiry (a
``timeout`` decision after ``XSP_RESERVATION_TTL_MS``, its cap slot and
budget released); the re-read from the topic happened only after the group
noticed the death and rebalanced, seconds after any edge had fallen back.
Under exactly-once a request may be resolved for a reservation whose
transaction later aborts; its Resolution settles the redone reservation of
the same request, or finds none (or the request refused as exhausted) and is
ignored: ``handle_resolution`` decides nothing for a request it never
reserved (a chaos run that caught this gave a request two decisions).

This stage is stateless and the only concurrent one, and it is deliberately
*not* a Faust agent: Faust's conductor delivers every topic of a worker
through one loop that waits whenever the producer buffer is full or any
agent's queue is, so a burst queued for ``admit`` held resolutions back for
16 s in a 10,000-request test (and the budget agent then expired every
reservation). Here ``XSP_RESOLVE_CONCURRENCY`` workers take requests from an
unbounded queue (submitting never blocks the budget agent) and resolve one
each; each Resolution is sent as soon as it is ready (in one ``Resolutions``
message per campaign with the others that finished while that campaign's
previous message was in flight) by the stage's own producer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from streams.app import XspApp
from streams.records import (
    MAX_RESOLUTIONS_PER_MESSAGE,
    Resolution,
    Resolutions,
    ResolveRequest,
    decode,
    encode,
)
from streams.resolution import resolve_request
from streams.settings import Settings
from streams.vast import FetchConfig, VastHttpClient

__all__ = ["ResolveStage", "fetch_config", "register"]

log = logging.getLogger(__name__)
STAGE = "resolve"
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


def register(app: XspApp) -> ResolveStage:
    """Run the resolve stage for the lifetime of ``app``'s worker; return it (for ``submit``)."""
    stage = ResolveStage(app)

    @app.task
    async def resolve_stage() -> None:
        while True:
            try:
                await stage.run()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("resolve stage failed; restarting in 1 s")
                await asyncio.sleep(1.0)

    return stage


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


class ResolveStage:
    """A queue of reserved requests and ``XSP_RESOLVE_CONCURRENCY`` workers resolving them.

    ``submit`` never blocks and never fails: a request waits in the queue
    until a worker is free (requests submitted before the stage runs, or
    while it restarts, wait too). Guarantee: every submitted request is
    resolved and its Resolution delivered to ``budget-requests``, unless the
    process dies, a stop does not let it finish within the resolve deadline,
    the delivery fails (logged), or it waited in the queue for the reservation
    TTL (counted in ``xsp_resolve_skipped_total``); then its reservation expires.
    """

    def __init__(self, app: XspApp) -> None:
        self.settings = app.xsp_settings
        self.names = app.xsp_topics.names
        self.metrics = app.xsp_metrics
        # (monotonic time it was submitted, the encoded ResolveRequest)
        self.queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        # A request that waited this long is being expired by the budget agent.
        self.stale_after_s = self.settings.reservation_ttl_ms / 1000
        self.busy = 0
        # Told (campaign id, request id) once a Resolution is in budget-requests:
        # the budget agent then writes no ExpireCommand for it (streams/pending.py).
        self.on_delivered: Callable[[str, str], None] | None = None

    def submit(self, encoded_request: bytes) -> None:
        """Queue one ``ResolveRequest`` (its canonical bytes, as the budget agent made it)."""
        self.queue.put_nowait((time.monotonic(), encoded_request))
        self._report()

    def _report(self) -> None:
        self.metrics.set_resolve_queue(self.queue.qsize(), self.busy)

    async def run(self) -> None:
        """Resolve what is submitted until cancelled (its own producer and HTTP client)."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap_servers,
            acks="all",
            # The outbox batches per campaign while a message is in flight; the
            # linger only joins different campaigns' messages into one request.
            linger_ms=self.settings.producer_linger_ms,
        )
        client = VastHttpClient(fetch_config(self.settings))
        outbox = _Outbox(producer, self.names.budget_requests)
        await producer.start()
        workers = [
            asyncio.create_task(self._work(client, outbox))
            for _ in range(self.settings.resolve_concurrency)
        ]
        try:
            # Not gather: cancelling a gather cancels the resolvers at once.
            await asyncio.wait(workers)
        finally:
            await self._drain()
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            outbox.close()
            await client.aclose()
            with contextlib.suppress(KafkaError, asyncio.CancelledError):
                await producer.stop()

    async def _drain(self) -> None:
        """On a stop, let queued and resolving requests finish (within the resolve deadline).

        They are then decided by their Resolutions rather than by expiry 5 s
        after the next owner takes over. A SIGKILL skips this, of course.
        """
        deadline = self.settings.vast_timeout_s + 1.0
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(self.queue.join(), timeout=deadline)

    async def _work(self, client: VastHttpClient, outbox: _Outbox) -> None:
        while True:
            submitted, encoded = await self.queue.get()
            if time.monotonic() - submitted >= self.stale_after_s:
                # Its reservation is past the TTL: the budget agent expires it
                # (a timeout decision) whatever a resolution would say, so the
                # ad server is not asked. Under overload this keeps the stage on
                # requests someone still waits for instead of working through a
                # backlog nobody does.
                self.metrics.resolve_skipped("stale")
                self.queue.task_done()
                self._report()
                continue
            self.busy += 1
            self._report()
            try:
                await self._one(encoded, client, outbox)
            except Exception:
                # A bug, not an ad server's failure (those become error Resolutions).
                log.exception("resolve failed; the request's reservation will expire")
            finally:
                self.busy -= 1
                self.queue.task_done()
                self._report()

    async def _one(self, encoded: bytes, client: VastHttpClient, outbox: _Outbox) -> None:
        # Our own encoding: a failure here is a bug, and the reservation expires.
        request = decode(ResolveRequest, encoded)
        resolution = await resolve_request(request, client, timeout_s=self.settings.vast_timeout_s)
        try:
            await outbox.add(resolution)
        except KafkaError as exc:  # the outbox's producer gave up
            log.warning(
                "Resolution of %s not delivered (%r); its reservation will expire",
                request.request.request_id,
                exc,
            )
            return
        if self.on_delivered is not None and resolution.campaign_id is not None:
            self.on_delivered(resolution.campaign_id, resolution.request_id)
        self.metrics.event_out(STAGE, self.names.budget_requests)
        if resolution.vast_error_code is not None:
            self.metrics.vast_error(resolution.vast_error_code)
        for hop, ms in resolution.timings_ms.items():
            if hop != "total":
                self.metrics.observe_hop(hop, ms / 1000)
