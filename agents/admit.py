"""admit: validate ad requests, dedupe, choose a campaign, check caps and reserve a slot.

Source ``ad-requests`` (key user), taken in batches (``Stream.take_ready``:
a lone request at an idle worker goes at once, under load a batch gathers
for up to ``XSP_ADMIT_BATCH_WINDOW_MS``): the requests of one batch admitted
for one campaign travel to the budget agent in one ``AdmittedBatch`` message.
Besides the edge's requests it carries the budget agent's cap releases
(unfilled requests) and pruning ticks for the same users: one source topic
for the frequency table means the table is a fold over one ordered log per
partition, so a replay applies the same events in the same order and
rebuilds the same bytes. Concurrency 1 (table writers never run
concurrently). Invalid input never stops the worker: it goes to the
dead-letter topic with the reason.
"""

from __future__ import annotations

import logging
import time
from typing import cast

from faust import StreamT
from faust.types import EventT

from agents.wiring import Router, TableStore, dead_letter, processing, prune_on_tick
from streams.admission import validate_ad_request
from streams.app import XspApp
from streams.faust_stream import Stream
from streams.pipeline import (
    DeadLetterError,
    Output,
    exhausted_campaigns,
    handle_ad_request,
    handle_campaign_status,
    handle_frequency_settle,
    pack_admissions,
)
from streams.records import CampaignStatus, ContractError, FrequencySettle, kind_of, parse

log = logging.getLogger(__name__)

__all__ = ["register"]

STAGE = "admit"
# At most this many events per batch (the window usually closes first).
BATCH_EVENTS = 500


def register(app: XspApp) -> None:
    """Attach the ``admit`` agent to ``app``."""
    settings = app.xsp_settings
    store = TableStore(app.xsp_tables.frequency)
    router = Router(app, STAGE)
    metrics = app.xsp_metrics
    partitions = settings.partitions
    # Under exactly-once an envelope must travel in its events' partition's
    # transaction: one per campaign and source partition. Under at-least-once
    # no output belongs to a partition: one per campaign, so a batch spread
    # over many partitions still costs the budget agent one event per campaign.
    envelope_per_partition = settings.exactly_once

    async def admit_one(event: EventT) -> list[Output]:
        """One event's outputs; invalid input is dead-lettered (no outputs)."""
        message = event.message
        metrics.event_in(STAGE, message.topic)
        config = app.xsp_pipeline
        try:
            obj = parse(message.value)
            kind = kind_of(obj)
            # The broker timestamp is recorded with the message: replays see it too.
            wall_ms = int(message.timestamp * 1000)
            if kind == "frequency_settle":
                settle = FrequencySettle.from_dict(obj)
                return handle_frequency_settle(
                    store, settle, config, wall_ms=wall_ms, position=(message.offset, 0)
                )
            if kind == "campaign_status":
                status = CampaignStatus.from_dict(obj)
                handle_campaign_status(store, status, message.partition)
                return []
            if kind == "tick":
                prune_on_tick(store, message, config, partitions, metrics, "frequency")
                return []
            request = validate_ad_request(
                obj,
                now_ms=int(time.time() * 1000),
                max_future_skew_ms=settings.max_future_skew_ms,
            )
            return handle_ad_request(
                store,
                request,
                app.xsp_directory.view,
                config,
                wall_ms=wall_ms,
                exhausted=exhausted_campaigns(store, message.partition),
                position=(message.offset, 0),
            )
        except (ContractError, DeadLetterError) as exc:
            await dead_letter(app, event, STAGE, str(exc))
        except Exception as exc:
            # A bug must not become a poison pill that stops the partition:
            # the input is kept in the DLQ and its reservation will expire.
            log.exception("internal error in %s", STAGE)
            await dead_letter(app, event, STAGE, f"internal error: {exc!r}")
        return []

    @app.agent(app.xsp_topics.ad_requests, name=STAGE, concurrency=1)
    async def admit(stream: StreamT) -> None:
        await app.xsp_directory.wait_ready()
        window_s = settings.admit_batch_window_ms / 1000
        # take_ready acks a batch's events only after this body has handed
        # their outputs to the producer, and a commit drains the producer first,
        # so a batched send is as safe as one send per event (at least once).
        async for events in cast(Stream, stream).take_ready(BATCH_EVENTS, window_s):
            metrics.observe_batch(STAGE, len(events))
            # A batch's rows and outputs go into one commit (streams/commit_gate.py).
            async with app.xsp_commit_gate.event():
                last_event: dict[int, EventT] = {}
                outputs: dict[int, list[Output]] = {}
                for event in events:
                    with processing(event):
                        produced = await admit_one(event)
                        await store.send_changelog()
                    group = event.message.partition if envelope_per_partition else 0
                    last_event[group] = event
                    outputs.setdefault(group, []).extend(produced)
                for group, event in last_event.items():
                    with processing(event):
                        await router.send(pack_admissions(outputs[group]))
