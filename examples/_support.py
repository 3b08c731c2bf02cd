"""What every example shares: configuration from the environment, campaign setup, output.

Not part of the SDK: the examples keep their own setup here so that each
scenario file shows only the seed-shaped edge code.

Configuration comes from the same ``XSP_*`` variables as every xsp process
(:meth:`streams.edge.EdgeConfig.from_env`); two defaults are added for a
laptop stack started with the README's commands:

* ``XSP_WORKER_URLS`` defaults to ``http://127.0.0.1:6066`` (``xsp worker``'s
  default web port), because the examples' advisory reads need a worker;
* the ad server is ``--ad-server URL``, else ``XSP_AD_SERVER_URL``, else
  ``http://127.0.0.1:8089`` (``xsp mock-adserver``'s default port).

Each run puts its own campaigns with a fresh suffix (``ex2-capped-1a2b3c4d``)
and uses fresh user ids, so runs never disturb each other or earlier runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from streams.campaign_admin import put_campaigns
from streams.edge import (
    AuthError,
    EdgeClient,
    EdgeConfig,
    EdgeError,
    SessionContext,
    StateUnavailableError,
    UnknownCampaignError,
)
from streams.topics import TopicNames

__all__ = [
    "DEFAULT_AD_SERVER",
    "DEFAULT_WORKER_URL",
    "SetupError",
    "campaign",
    "edge_config",
    "new_context",
    "parse_args",
    "run_main",
    "run_suffix",
    "setup_campaigns",
    "short",
]

DEFAULT_AD_SERVER = "http://127.0.0.1:8089"
DEFAULT_WORKER_URL = "http://127.0.0.1:6066"
AD_SERVER_ENV = "XSP_AD_SERVER_URL"

# Exit codes of every example's main().
OK, NOT_AS_PROMISED, SETUP_FAILED = 0, 1, 2


class SetupError(Exception):
    """The stack is not usable (no broker, no worker, campaign never became visible)."""


def edge_config(environ: Mapping[str, str] | None = None, **overrides: Any) -> EdgeConfig:
    """``EdgeConfig.from_env()`` with ``XSP_WORKER_URLS`` defaulting to the local worker.

    ``overrides`` (e.g. ``request_timeout_s=5.0``) replace fields after the
    environment was read. Raises ``SettingsError`` for malformed variables.
    """
    env = dict(os.environ if environ is None else environ)
    if not env.get("XSP_WORKER_URLS", "").strip():
        env["XSP_WORKER_URLS"] = DEFAULT_WORKER_URL
    config = EdgeConfig.from_env(env)
    for name, value in overrides.items():
        setattr(config, name, value)
    config.validate()
    return config


def parse_args(description: str, argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line every example accepts: ``--ad-server URL``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--ad-server",
        default=os.environ.get(AD_SERVER_ENV) or DEFAULT_AD_SERVER,
        help=f"base URL of the (mock) ad server the example's campaigns point at "
        f"(default: ${AD_SERVER_ENV} or {DEFAULT_AD_SERVER})",
    )
    args = parser.parse_args(argv)
    args.ad_server = args.ad_server.rstrip("/")
    return args


def run_suffix() -> str:
    """A fresh 8-hex suffix for this run's campaign and user ids."""
    return uuid.uuid4().hex[:8]


def campaign(
    campaign_id: str,
    vast_url: str,
    *,
    price: str = "0.10",
    budget: str = "1000",
    caps: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A campaign config in the format of ``xsp campaigns put`` (cpi price, USD, UTC)."""
    return {
        "campaign_id": campaign_id,
        "advertiser_id": "examples",
        "price": {"model": "cpi", "amount": price, "currency": "USD"},
        "budget": {"total": budget, "timezone": "UTC"},
        "caps": caps or [],
        "vast_url": vast_url,
    }


async def setup_campaigns(
    edge: EdgeClient, configs: list[dict[str, Any]], *, timeout_s: float = 30.0
) -> None:
    """Put ``configs`` on the campaigns topic and wait until a worker knows every one.

    Guarantees: on return a worker's budget view answers for each campaign
    (so the pipeline will not dead-letter a request naming it). Raises
    :class:`SetupError` if no worker answers or a campaign stays unknown for
    ``timeout_s``.
    """
    names = TopicNames.from_prefix(edge.config.topic_prefix)
    await put_campaigns(edge.config.bootstrap_servers, names, json.dumps(configs).encode())
    deadline = time.monotonic() + timeout_s
    for config in configs:
        cid = config["campaign_id"]
        last = "never asked"
        while True:
            try:
                await edge.queries.budget(cid)
                break
            except UnknownCampaignError:
                last = "the worker does not know it yet"
            except AuthError as exc:
                raise SetupError(f"{exc} (set XSP_API_TOKEN)") from exc
            except StateUnavailableError as exc:
                last = str(exc)  # no worker answered (yet): keep waiting
            if time.monotonic() > deadline:
                raise SetupError(f"campaign {cid} not visible after {timeout_s:.0f} s: {last}")
            await asyncio.sleep(0.2)


def new_context(user_id: str, label: str) -> SessionContext:
    """A seed-style SessionContext for "now" (the seed guide builds it field by field)."""
    return SessionContext(
        timestamp=int(time.time() * 1000),
        correlator=f"{label}-{user_id}",
        cachebusting=str(random.randint(0, 999_999_999)),
        cookies={"uid": user_id},
        request_id=f"req-{uuid.uuid4().hex[:8]}",
    )


def short(xml: str | None, limit: int = 100) -> str:
    """The first ``limit`` characters of ``xml`` on one line (``None`` → ``"None (fallback)"``)."""
    if xml is None:
        return "None (fallback)"
    flat = " ".join(xml.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def run_main(body: Callable[[], Awaitable[bool]]) -> int:
    """Run an example's async body; map the outcome to an exit code and print why.

    0: the seed's promise held; 1: it did not; 2: the stack was not usable
    (Kafka unreachable, no worker, campaign not visible).
    """
    try:
        held = asyncio.run(body())
    except (SetupError, EdgeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(
            "is the stack running? see examples/README.md (xsp kafka start, xsp topics create, "
            "xsp mock-adserver, xsp worker; XSP_BOOTSTRAP_SERVERS, XSP_WORKER_URLS)",
            file=sys.stderr,
        )
        return SETUP_FAILED
    except KeyboardInterrupt:
        return 130
    print("OK" if held else "NOT AS PROMISED")
    return OK if held else NOT_AS_PROMISED
