"""The worker's query API for edges (advisory reads of caps and budgets).

``GET /xsp/v1/frequency/{user_id}`` and ``GET /xsp/v1/budget/{campaign_id}``.
Any worker answers: Faust's ``table_route`` forwards the request to the
worker that owns the key's partition. With ``XSP_API_TOKEN`` set, a request
without ``Authorization: Bearer <token>`` gets 401. These reads are
advisory — the authoritative check-and-reserve happens inside the pipeline.
Faust's own ``/table`` debug pages are not registered (they expose user data).
"""

from __future__ import annotations

import hmac
import time
from typing import Any

from faust.web import Request, Response, View

from agents.wiring import TableStore
from streams.app import XspApp
from streams.pipeline import budget_snapshot, frequency_snapshot

__all__ = ["register"]


def register(app: XspApp) -> None:
    """Attach the query views to ``app``'s web server."""
    token = app.xsp_settings.api_token
    frequency_store = TableStore(app.xsp_tables.frequency)
    budget_store = TableStore(app.xsp_tables.budget)

    def denied(view: View, request: Request) -> Response | None:
        if not token:
            return None
        header = request.headers.get("Authorization", "")
        if hmac.compare_digest(header, f"Bearer {token}"):
            return None
        return view.json({"error": "missing or wrong bearer token"}, status=401)

    @app.page("/xsp/v1/frequency/{user_id}")
    class FrequencyView(View):
        async def get(self, request: Request, user_id: str) -> Response:
            return denied(self, request) or await self._routed(request, user_id=user_id)

        @app.table_route(table=app.xsp_tables.frequency, match_info="user_id")
        async def _routed(self, request: Request, user_id: str) -> Response:
            now_ms = int(time.time() * 1000)
            return self.json(frequency_snapshot(frequency_store, user_id, now_ms))

    @app.page("/xsp/v1/budget/{campaign_id}")
    class BudgetView(View):
        async def get(self, request: Request, campaign_id: str) -> Response:
            return denied(self, request) or await self._routed(request, campaign_id=campaign_id)

        @app.table_route(table=app.xsp_tables.budget, match_info="campaign_id")
        async def _routed(self, request: Request, campaign_id: str) -> Response:
            campaign = app.xsp_directory.view.campaigns.get(campaign_id)
            if campaign is None:
                return self.json({"error": "unknown campaign"}, status=404)
            snapshot: dict[str, Any] = budget_snapshot(
                budget_store, campaign, int(time.time() * 1000)
            )
            return self.json(snapshot)
