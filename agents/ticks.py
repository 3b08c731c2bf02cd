"""ticks: a clock for idle partitions, written into the stages' own input topics.

Every ``XSP_TICK_INTERVAL_S`` each worker sends a Tick to every partition of
``budget-requests`` (so reservations of campaigns with no traffic still
expire and their requests get a ``timeout`` decision) and, once a minute, a
pruning Tick to every partition of ``budget-requests`` and ``ad-requests``
(so outcome records older than the dedupe horizon are forgotten). Ticks
travel through Kafka rather than being handled in the timer because a table
may only be written while processing an event of its partition; and because
they are in the topic, a replay sees them too.
"""

from __future__ import annotations

import time

from streams.app import XspApp
from streams.records import Tick, encode

__all__ = ["register"]

PRUNE_EVERY_S = 60.0


def register(app: XspApp) -> None:
    """Attach the tick timer to ``app``."""
    settings = app.xsp_settings
    topics = app.xsp_topics
    last_prune = {"at": time.monotonic()}

    @app.timer(interval=settings.tick_interval_s, name="ticks")
    async def ticks() -> None:
        prune = time.monotonic() - last_prune["at"] >= PRUNE_EVERY_S
        if prune:
            last_prune["at"] = time.monotonic()
        value = encode(Tick(timestamp=int(time.time() * 1000), prune=prune))
        targets = [topics.budget_requests] + ([topics.ad_requests] if prune else [])
        for topic in targets:
            for partition in range(settings.partitions):
                await topic.send(key=None, value=value, partition=partition)
