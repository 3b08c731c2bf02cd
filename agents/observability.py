"""Worker observability: ``/metrics`` on Faust's web server, and consumer lag every 10 s.

Faust's built-in ``/table`` debug pages are not registered by xsp (they
would expose user data); the only pages a worker serves are these and the
query API.
"""

from __future__ import annotations

import logging
from typing import Any

from streams.app import XspApp
from streams.metrics import exposition, refresh_lag

__all__ = ["LAG_REFRESH_S", "register"]

log = logging.getLogger(__name__)
LAG_REFRESH_S = 10.0


def register(app: XspApp) -> None:
    """Serve ``/metrics`` and keep the lag gauges fresh."""
    settings = app.xsp_settings
    metrics = app.xsp_metrics

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        content_type, body = exposition(metrics)
        # aiohttp refuses a charset inside content_type=; a header carries it intact.
        return web.bytes(body, headers={"Content-Type": content_type})

    @app.timer(interval=LAG_REFRESH_S, name="consumer-lag")
    async def lag() -> None:
        try:
            await refresh_lag(metrics, settings.bootstrap_servers, settings.app_id)
        except Exception as exc:  # a metrics refresh must never stop the worker
            log.warning("consumer lag refresh failed: %s", exc)
