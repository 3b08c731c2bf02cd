"""The budget tick's cost against a campaign's traffic of the last hour.

Usage: ``python -m benchmarks.bench_expiry [--quick] [--json-out PATH]``

On every tick (1 s) the budget agent looks for reservations whose Resolution
is overdue. It used to list the campaign's ``p:`` entries to find them, and
those include every request settled within the dedupe horizon (one hour):
the cost of a tick grew with the traffic of the last hour. It now keeps a
``PendingIndex`` and lists only when the index cannot be trusted.

For each size N this builds one campaign's budget table with the real
handlers (N settled requests and 100 pending ones) in the ``memory://``
store's dict (``GroupedDict``, which already finds a campaign's keys
without a full pass), then times ticks of ``plan_expiry`` two ways, taking
turns in the same run:

* ``listing`` (the baseline, what every tick did before): a fresh index on
  each tick, so every tick lists and decodes the campaign's entries;
* ``index``: one index kept across ticks, as the agent keeps it.

The same table also times a pruning tick (once a minute per partition) two
ways: ``scan`` (the baseline, what every pruning tick did until session 17:
read and decode every outcome record to find those past the horizon) and
``floor`` (``RecordFloor``: a tick that cannot find one reads none). Here
nothing is past the horizon, the common case.

Prints a table (median ms per tick) and writes JSON. No target: the point
is how each grows with N.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from streams.campaign import parse_campaign
from streams.campaign_directory import DirectoryView
from streams.key_groups import GroupedDict
from streams.pending import PendingIndex
from streams.pipeline import (
    SEP,
    PipelineConfig,
    handle_admitted,
    handle_resolution,
    pending_reservations,
    plan_expiry,
    prune_records,
    prune_unless_floor,
)
from streams.record_floor import RecordFloor
from streams.records import (
    Admitted,
    AdPayload,
    AdRequest,
    DecisionStatus,
    Resolution,
    Tick,
)

CAMPAIGN = "bench-c1"
PENDING = 100
T0 = 1_764_000_000_000
CONFIG = PipelineConfig()


class GroupedStore:
    """A ``RowStore`` over the ``memory://`` store's dict, scanning as the agent's table does."""

    def __init__(self) -> None:
        self.data = GroupedDict((b"p:",), SEP.encode())

    def get(self, key: str) -> bytes | None:
        return self.data.get(key.encode())

    def put(self, key: str, value: bytes) -> None:
        self.data[key.encode()] = value

    def delete(self, key: str) -> None:
        self.data.pop(key.encode(), None)

    def scan(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        for key in self.data.scan(prefix.encode()):
            yield key.decode(), self.data[key]


def _view() -> DirectoryView:
    view = DirectoryView()
    view.campaigns[CAMPAIGN] = parse_campaign(
        {
            "campaign_id": CAMPAIGN,
            "advertiser_id": "adv",
            "price": {"model": "cpi", "amount": "0.001", "currency": "USD"},
            "budget": {"total": "1000000", "timezone": "UTC"},
            "caps": [],
            "vast_url": "http://127.0.0.1:9/inline",
        }
    )
    return view


def build(settled: int) -> GroupedStore:
    """One campaign's table after ``settled`` filled requests and ``PENDING`` in flight."""
    store, view = GroupedStore(), _view()
    for i in range(settled + PENDING):
        ts = T0 + i
        request = AdRequest(request_id=f"r{i}", user_id=f"u{i}", timestamp=ts)
        admitted = Admitted(request=request, campaign_id=CAMPAIGN)
        handle_admitted(store, admitted, view, CONFIG, wall_ms=ts)
        if i < settled:
            resolution = Resolution(
                request_id=request.request_id,
                status=DecisionStatus.FILLED,
                campaign_id=CAMPAIGN,
                ad=AdPayload(ad_id="ad-1", vast_xml="<VAST/>"),
                resolved_at=ts + 20,
                user_id=request.user_id,
                request_timestamp=ts,
            )
            handle_resolution(store, resolution, view, CONFIG, wall_ms=ts + 20)
    if pending_reservations(store, CAMPAIGN) != PENDING:
        raise RuntimeError("the built table does not hold the pending reservations it should")
    return store


def time_ticks(store: GroupedStore, ticks: int) -> dict[str, list[float]]:
    """Milliseconds per tick, the baseline and the index taking turns (no reservation is due)."""
    kept = PendingIndex()
    plan_expiry(store, [CAMPAIGN], kept, T0, CONFIG)  # the first tick lists in both cases
    samples: dict[str, list[float]] = {"listing": [], "index": []}
    for tick in range(ticks):
        now = T0 + 1_000 + tick  # well within the TTL: the tick only looks
        for mode in ("listing", "index") if tick % 2 == 0 else ("index", "listing"):
            index = PendingIndex() if mode == "listing" else kept
            started = time.perf_counter()
            commands = plan_expiry(store, [CAMPAIGN], index, now, CONFIG)
            samples[mode].append((time.perf_counter() - started) * 1000)
            if commands:
                raise RuntimeError(f"{mode}: a tick within the TTL planned {len(commands)}")
    return samples


def time_prune_ticks(store: GroupedStore, ticks: int) -> dict[str, list[float]]:
    """Milliseconds per pruning tick with nothing past the horizon: scan against floor, in turns."""
    floor, generation, partition = RecordFloor(), 1, 0
    first = Tick(timestamp=T0 + 60_000, prune=True)
    prune_unless_floor(store, first, CONFIG, floor, partition, generation)  # the first scans
    samples: dict[str, list[float]] = {"scan": [], "floor": []}
    for n in range(ticks):
        tick = Tick(timestamp=T0 + 120_000 + n * 60_000, prune=True)
        for mode in ("scan", "floor") if n % 2 == 0 else ("floor", "scan"):
            started = time.perf_counter()
            if mode == "scan":
                if prune_records(store, tick, CONFIG).deleted:
                    raise RuntimeError("a tick within the horizon deleted records")
            elif prune_unless_floor(store, tick, CONFIG, floor, partition, generation):
                raise RuntimeError("the floor did not rule the tick out")
            samples[mode].append((time.perf_counter() - started) * 1000)
    return samples


def main(argv: list[str] | None = None) -> int:
    """Build the tables, time the ticks, print the table and write the JSON."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller tables (about 10 s)")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args(argv)
    sizes = [1_000, 10_000, 30_000] if args.quick else [1_000, 10_000, 100_000]
    ticks = 10 if args.quick else 30
    rows: list[dict[str, Any]] = []
    header = (
        "settled requests",
        "listing ms/tick",
        "index ms/tick",
        "ratio",
        "prune scan ms",
        "prune floor ms",
    )
    print("{:>18s} {:>16s} {:>14s} {:>8s} {:>14s} {:>15s}".format(*header))
    for size in sizes:
        started = time.perf_counter()
        store = build(size)
        build_s = time.perf_counter() - started
        samples = time_ticks(store, ticks)
        listing, index = (statistics.median(samples[m]) for m in ("listing", "index"))
        prune_samples = time_prune_ticks(store, ticks)
        scan, floor = (statistics.median(prune_samples[m]) for m in ("scan", "floor"))
        rows.append(
            {
                "settled": size,
                "pending": PENDING,
                "build_s": round(build_s, 2),
                "listing_ms": listing,
                "index_ms": index,
                "samples_ms": samples,
                "prune_scan_ms": scan,
                "prune_floor_ms": floor,
                "prune_samples_ms": prune_samples,
            }
        )
        print(
            f"{size:>18,d} {listing:>16.3f} {index:>14.4f} {listing / index:>7.0f}x"
            f" {scan:>14.3f} {floor:>15.4f}"
        )
    print(
        f"(median of {ticks} ticks each, taking turns; one campaign, {PENDING} reservations"
        " in flight; a worker ticks every partition once a second, and prunes once a minute)"
    )
    out = args.json_out or Path("bench-results") / (
        "bench_expiry-quick.json" if args.quick else "bench_expiry.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"quick": args.quick, "sizes": rows}, indent=2))
    print(f"JSON written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
