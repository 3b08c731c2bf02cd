"""Worker observability: ``/metrics`` on Faust's web server, and consumer lag every 10 s.

Faust's built-in ``/table`` debug pages are not registered by xsp (they
would expose user data); the only pages a worker serves are these and the
query API. ``kill -USR1 <pid>`` writes the stack of every asyncio task to the
log: the way to see where a worker that stopped making progress is waiting.
"""

from __future__ import annotations

import asyncio
import io
import logging
import signal
from typing import Any

from agents.commit_guard import commit_progress
from streams.app import XspApp
from streams.metrics import exposition, refresh_lag

__all__ = ["LAG_REFRESH_S", "dump_tasks", "register"]

log = logging.getLogger(__name__)
LAG_REFRESH_S = 10.0


def _await_chain(task: asyncio.Task[Any]) -> list[str]:
    """``file:line in function`` for each coroutine the task is awaiting, outermost first."""
    frames: list[str] = []
    awaited: Any = task.get_coro()
    while awaited is not None and len(frames) < 40:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is not None:
            code = frame.f_code
            frames.append(f"{code.co_filename}:{frame.f_lineno} in {code.co_name}")
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return frames


def dump_tasks(app: XspApp | None = None) -> str:
    """Every asyncio task with the chain of awaits it is waiting in, and the
    consumer's commit bookkeeping (committed offset, acked-but-uncommitted
    offsets, paused partitions) when ``app`` is given."""
    out = io.StringIO()
    tasks = asyncio.all_tasks()
    out.write(f"{len(tasks)} asyncio tasks\n")
    for task in tasks:
        out.write(f"--- {task.get_name()}\n")
        for line in _await_chain(task):
            out.write(f"    {line}\n")
    consumer: Any = getattr(app, "_consumer", None) if app is not None else None
    if consumer is not None:
        for p in commit_progress(consumer):
            tp = p.partition
            out.write(
                f"commit {tp.topic}[{tp.partition}] committed={p.committed} "
                f"highest_acked={p.highest_acked}\n"
            )
        out.write(_fetch_state(consumer))
    return out.getvalue()


def _fetch_state(consumer: Any) -> str:
    """Per assigned partition: Faust's read offset and flow sets, aiokafka's position.

    A partition that is assigned but absent from ``active`` (or whose read
    offset is far above the committed one) is one Faust has stopped feeding.
    """
    kafka: Any = getattr(getattr(consumer, "_thread", None), "_consumer", None)
    if kafka is None:
        return ""
    lines = [f"paused (aiokafka): {sorted(map(str, kafka.paused()))}\n"]
    active = consumer._active_partitions or set()
    buffered = consumer._buffered_partitions
    for tp in sorted(kafka.assignment()):
        try:
            position = kafka._subscription.subscription.assignment.state_value(tp).position
        except Exception:  # the private layout changed, or the partition just moved
            position = "?"
        lines.append(
            f"fetch {tp.topic}[{tp.partition}] read={consumer._read_offset.get(tp)} "
            f"position={position} active={tp in active} buffered={tp in buffered} "
            f"faust_paused={tp in consumer._paused_partitions}\n"
        )
    return "".join(lines)


def register(app: XspApp) -> None:
    """Serve ``/metrics`` and keep the lag gauges fresh."""
    settings = app.xsp_settings
    metrics = app.xsp_metrics

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        content_type, body = exposition(metrics)
        # aiohttp refuses a charset inside content_type=; a header carries it intact.
        return web.bytes(body, headers={"Content-Type": content_type})

    @app.task
    async def install_task_dump() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, lambda: log.warning("%s", dump_tasks(app)))

    @app.timer(interval=LAG_REFRESH_S, name="consumer-lag")
    async def lag() -> None:
        try:
            await refresh_lag(metrics, settings.bootstrap_servers, settings.app_id)
        except Exception as exc:  # a metrics refresh must never stop the worker
            log.warning("consumer lag refresh failed: %s", exc)
