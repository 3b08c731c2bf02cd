"""budget: reserve, settle and adjust campaign spend — the one writer of the budget table.

Source ``budget-requests`` (key campaign), one ordered log per campaign
partition carrying: Admitted requests from admit, many to a message
(reserve), Resolutions from the resolve stage, many to a message (settle:
commit at the actual price or release), spend adjustments forwarded by the
``spend`` agent, and clock ticks (expire idle reservations). A single source
topic keeps every write in the campaign's changelog partition and makes a
replay apply the same events in the same order. Settling lives here, not in
a separate agent, because the commit must happen in the campaign's row: a
separate settle agent would add one Kafka hop per request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from faust import StreamT
from faust.types import EventT

from agents.resolve import ResolveStage
from agents.wiring import Router, TableStore, dead_letter, prune_on_tick
from streams.app import XspApp
from streams.faust_router import partition_of
from streams.metrics import Metrics
from streams.pending import PendingIndex
from streams.pipeline import (
    DeadLetterError,
    DeferredRowStore,
    Output,
    budget_snapshot,
    handle_admitted,
    handle_expire,
    handle_resolution,
    handle_spend,
    pending_reservations,
    plan_expiry,
)
from streams.records import (
    Admitted,
    AdmittedBatch,
    ContractError,
    ExpireCommand,
    Resolution,
    Resolutions,
    SpendEvent,
    encode,
    kind_of,
    parse,
)

log = logging.getLogger(__name__)

__all__ = ["register"]

STAGE = "budget"


def _report_budgets(
    store: TableStore,
    campaign_ids: list[str],
    view: Any,
    metrics: Metrics,
    partition: int,
    open_by_partition: dict[int, int],
) -> None:
    """Gauges on each tick: budget, spend and open reservations of this partition's campaigns."""
    reserved = 0
    for cid in campaign_ids:
        campaign = view.campaigns.get(cid)
        if campaign is None:
            continue
        snapshot = budget_snapshot(store, campaign, int(time.time() * 1000))
        metrics.set_budget(cid, snapshot["total_micros"])
        metrics.set_budget_spent(cid, snapshot["spent_micros"])
        reserved += pending_reservations(store, cid)
    open_by_partition[partition] = reserved
    metrics.set_reservations_open(STAGE, sum(open_by_partition.values()))


def _follow_reserved(
    pending: PendingIndex, admissions: Sequence[Admitted], outputs: Sequence[Output]
) -> None:
    """Index the reservations an Admitted message made (each sends its request to resolve)."""
    sent = {output.key for output in outputs if output.route == "resolve"}
    now_ms = int(time.time() * 1000)
    for admitted in admissions:
        if admitted.request.request_id in sent:
            pending.reserved(admitted.campaign_id, admitted.request.request_id, now_ms)


def _follow_settled(pending: PendingIndex, resolutions: Sequence[Resolution]) -> None:
    """Unindex what a Resolutions message settled (whatever the outcome: the table decides)."""
    for resolution in resolutions:
        if resolution.campaign_id is not None:
            pending.settled(resolution.campaign_id, resolution.request_id)


def register(app: XspApp, resolver: ResolveStage | None) -> None:
    """Attach the ``budget`` agent to ``app``; reserved requests go to ``resolver``.

    ``resolver`` is None only in a replay, which sends nothing.
    """
    store = TableStore(app.xsp_tables.budget)
    router = Router(app, STAGE, resolver.submit if resolver is not None else None)
    metrics = app.xsp_metrics
    partitions = app.xsp_settings.partitions
    # What this worker waits on and since when (not table state: it is this
    # worker's clock, and only decides when to write an ExpireCommand).
    pending = PendingIndex()
    if resolver is not None:
        resolver.on_delivered = pending.settling
    open_by_partition: dict[int, int] = {}

    async def handle_each(
        event: EventT, items: Sequence[Any], handler: Callable[..., list[Output]]
    ) -> list[Output]:
        """Handle every item of a batch message, writing the campaign row once at the end.

        One bad item is dead-lettered with its own bytes; the others are still
        decided (``DeferredRowStore`` says why the held-back row stays exact).
        """
        metrics.observe_batch(STAGE, len(items))
        deferred = DeferredRowStore(store)
        view, config = app.xsp_directory.view, app.xsp_pipeline
        wall_ms = int(event.message.timestamp * 1000)
        outputs: list[Output] = []
        try:
            for i, item in enumerate(items):
                # Each item is a position of its own (see pipeline._next_write).
                position = (event.message.offset, i)
                try:
                    outputs += handler(
                        deferred, item, view, config, wall_ms=wall_ms, position=position
                    )
                except DeadLetterError as exc:
                    await dead_letter(app, event, STAGE, str(exc), original=encode(item))
                except Exception as exc:
                    log.exception("internal error in %s", STAGE)
                    reason = f"internal error: {exc!r}"
                    await dead_letter(app, event, STAGE, reason, original=encode(item))
        finally:
            deferred.flush()
        return outputs

    async def budget_one(event: EventT) -> list[Output]:
        """One event's outputs; invalid input is dead-lettered (no outputs)."""
        message = event.message
        metrics.event_in(STAGE, message.topic)
        view = app.xsp_directory.view
        config = app.xsp_pipeline
        try:
            obj = parse(message.value)
            kind = kind_of(obj)
            # The broker timestamp is recorded with the message: replays see it too.
            wall_ms = int(message.timestamp * 1000)
            position = (message.offset, 0)
            if kind == "resolutions":
                batch = Resolutions.from_dict(obj)
                outputs = await handle_each(event, batch.items, handle_resolution)
                _follow_settled(pending, batch.items)
            elif kind == "admitted_batch":
                admissions = AdmittedBatch.from_dict(obj)
                outputs = await handle_each(event, admissions.items, handle_admitted)
                _follow_reserved(pending, admissions.items, outputs)
            elif kind == "resolution":  # one per message, as older logs hold them
                resolution = Resolution.from_dict(obj)
                outputs = handle_resolution(
                    store, resolution, view, config, wall_ms=wall_ms, position=position
                )
                _follow_settled(pending, [resolution])
            elif kind == "spend":
                spend = SpendEvent.from_dict(obj)
                outputs = handle_spend(store, spend, config, wall_ms=wall_ms, position=position)
            elif kind == "expire":
                command = ExpireCommand.from_dict(obj)
                outputs = handle_expire(store, command, config, position=position)
                pending.settled(command.campaign_id, command.request_id)
                if outputs:
                    metrics.reservations_expired_inc(STAGE)
            elif kind == "tick":
                prune_on_tick(store, message, config, partitions, metrics, "budget")
                mine = [
                    cid
                    for cid in view.campaigns
                    if partition_of(cid.encode(), partitions) == message.partition
                ]
                # Expiry is decided on this worker's clock and written to the log.
                now_ms = int(time.time() * 1000)
                outputs = plan_expiry(store, mine, pending, now_ms, config)
                _report_budgets(store, mine, view, metrics, message.partition, open_by_partition)
            else:  # one Admitted per message, as older logs hold them
                admitted = Admitted.from_dict(obj)
                outputs = handle_admitted(
                    store, admitted, view, config, wall_ms=wall_ms, position=position
                )
                _follow_reserved(pending, [admitted], outputs)
        except (ContractError, DeadLetterError) as exc:
            await dead_letter(app, event, STAGE, str(exc))
            return []
        except Exception as exc:
            # A bug must not become a poison pill that stops the partition:
            # the input is kept in the DLQ and its reservation will expire.
            log.exception("internal error in %s", STAGE)
            await dead_letter(app, event, STAGE, f"internal error: {exc!r}")
            return []
        return outputs

    @app.agent(app.xsp_topics.budget_requests, name=STAGE, concurrency=1)
    async def budget(stream: StreamT) -> None:
        await app.xsp_directory.wait_ready()
        async for event in stream.events():
            # Rows and outputs of one event go into one commit (streams/commit_gate.py).
            async with app.xsp_commit_gate.event():
                outputs = await budget_one(event)
                await store.send_changelog()
                await router.send(outputs)
