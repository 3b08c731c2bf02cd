"""``xsp resolve URL``: resolve one VAST tag from the command line (no Kafka).

Exit codes: 0 filled, 1 no fill, 2 error, 3 timeout.
"""

from __future__ import annotations

import json
import math
import sys
from typing import TextIO

from streams.vast.errors import VastErrorCode
from streams.vast.http import FetchConfig, VastHttpClient
from streams.vast.resolver import ChainResult, resolve_chain

EXIT_CODES = {"filled": 0, "no_fill": 1, "error": 2, "timeout": 3}


def _code_name(code: int | None) -> str:
    if code is None:
        return "-"
    try:
        return f"{code} {VastErrorCode(code).name}"
    except ValueError:
        return str(code)


def format_result(r: ChainResult) -> str:
    """Human-readable multi-line summary of a :class:`ChainResult`."""
    lines = [
        f"status: {r.status}",
        f"vast error: {_code_name(r.vast_error_code)}" + (f" ({r.reason})" if r.reason else ""),
        f"hops: {r.hops}",
    ]
    for i, (url, ms) in enumerate(zip(r.hop_urls, r.hop_timings_ms, strict=False)):
        t = "failed" if math.isnan(ms) else f"{ms:.1f} ms"
        lines.append(f"  hop {i}: {t}  {url}")
    total = sum(ms for ms in r.hop_timings_ms if not math.isnan(ms))
    lines.append(f"total fetch time: {total:.1f} ms")
    for n, ad in enumerate(r.pod or ([r.ad] if r.ad else [])):
        lines.append(
            f"ad[{n}]: id={ad.ad_id} sequence={ad.sequence} system={ad.ad_system} "
            f"title={ad.ad_title} wrappers={ad.wrapper_count}"
        )
        if ad.pricing:
            lines.append(f"  price: {ad.pricing.value} {ad.pricing.currency} ({ad.pricing.model})")
        else:
            lines.append("  price: -")
        for m in ad.media_files:
            dims = f"{m.width}x{m.height}" if m.width and m.height else "?"
            lines.append(
                f"  media: {m.type or '?'} {dims} {m.bitrate or '?'}kbps "
                f"{m.delivery or '?'} {m.url}"
            )
        lines.append(
            f"  impressions: {len(ad.impressions)}  error urls: {len(ad.error_urls)}  "
            f"click trackers: {len(ad.click_trackings())}"
        )
        counts = ad.tracking_counts()
        if counts:
            lines.append("  trackers: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    if r.error_urls:
        lines.append("error urls to fire:")
        lines.extend(f"  {u}" for u in r.error_urls)
    return "\n".join(lines)


async def resolve_command(
    url: str,
    *,
    as_json: bool,
    max_hops: int,
    timeout_s: float,
    allow_private: bool,
    out: TextIO | None = None,
) -> int:
    """Resolve ``url`` and print the outcome; return the exit code (see module doc).

    ``allow_private`` switches the SSRF rule off (for local mock servers).
    With ``as_json`` exactly one JSON object is printed.
    """
    out = out or sys.stdout
    cfg = FetchConfig(
        allow_private_networks=allow_private,
        total_timeout_s=timeout_s,
        per_hop_timeout_s=min(timeout_s, FetchConfig().per_hop_timeout_s),
    )
    async with VastHttpClient(cfg) as client:
        r = await resolve_chain(url, client=client, max_hops=max_hops, timeout_s=timeout_s)
    if as_json:
        d = r.to_dict()
        d["hop_timings_ms"] = [None if math.isnan(x) else x for x in r.hop_timings_ms]
        d.pop("final_xml", None)
        d["exit_code"] = EXIT_CODES[r.status]
        out.write(json.dumps(d) + "\n")
    else:
        out.write(format_result(r) + "\n")
    return EXIT_CODES[r.status]
