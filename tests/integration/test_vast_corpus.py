"""Every IAB VAST sample parses, agrees with MANIFEST.tsv, and resolves over HTTP.

The corpus is read in place (never copied): $XSP_VAST_FIXTURES or
/work/shared/fixtures/vast/iab. Wrappers are served with their VASTAdTagURI
rewritten to a local inline target so nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import csv
import os
from pathlib import Path

import pytest

from streams.mock_adserver import start_mock_adserver
from streams.vast.http import FetchConfig, VastHttpClient
from streams.vast.parser import parse_vast
from streams.vast.resolver import resolve_chain

CORPUS = Path(os.environ.get("XSP_VAST_FIXTURES", "/work/shared/fixtures/vast/iab"))


def _corpus() -> tuple[list[Path], dict[str, dict[str, str]]]:
    if not CORPUS.is_dir():
        pytest.skip(f"VAST fixture corpus not found at {CORPUS}; set XSP_VAST_FIXTURES")
    files = sorted(CORPUS.rglob("*.xml"))
    manifest: dict[str, dict[str, str]] = {}
    mpath = CORPUS.parent / "MANIFEST.tsv"
    if mpath.is_file():
        with mpath.open(newline="") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                manifest[str((CORPUS.parent / row["path"]).resolve())] = row
    return files, manifest


def test_every_sample_parses_and_matches_manifest() -> None:
    files, manifest = _corpus()
    assert files, f"no XML files under {CORPUS}"
    checked = 0
    for path in files:
        doc = parse_vast(path.read_bytes())
        row = manifest.get(str(path.resolve()))
        if row is None or row["parse_ok"] != "1":
            continue
        n_inline = sum(1 for a in doc.ads if a.kind == "inline")
        n_wrapper = sum(1 for a in doc.ads if a.kind == "wrapper")
        assert (n_inline, n_wrapper) == (int(row["n_inline"]), int(row["n_wrapper"])), path
        assert len(doc.ads) == int(row["n_ads"]), path
        assert doc.version == (row["vast_version"] or "1.0"), path
        assert (any(a.pricing for a in doc.ads)) == (row["has_pricing"] == "1"), path
        n_media = sum(len(a.media_files) for a in doc.ads)
        assert n_media <= int(row["n_mediafiles"]), path
        n_imp = sum(len(a.impressions) for a in doc.ads)
        assert (n_imp > 0) == (int(row["n_impressions"]) > 0), path
        checked += 1
    if manifest:
        assert checked == len(files), "some samples were not in MANIFEST.tsv"


def test_every_sample_resolves_through_the_mock_server() -> None:
    files, _ = _corpus()

    async def main() -> list[tuple[str, str, int | None]]:
        runner, base = await start_mock_adserver(vast_dir=CORPUS)
        bad: list[tuple[str, str, int | None]] = []
        try:
            cfg = FetchConfig(allowed_networks=("127.0.0.1/32",), total_timeout_s=5.0)
            async with VastHttpClient(cfg) as client:

                async def one(p: Path) -> None:
                    rel = p.relative_to(CORPUS).as_posix()
                    doc = parse_vast(p.read_bytes())
                    url = f"{base}/vast/{rel}?wrapper_to={base}/inline"
                    r = await resolve_chain(url, client=client)
                    if r.status != "filled" or r.ad is None:
                        bad.append((rel, r.status, r.vast_error_code))
                        return
                    first = doc.ads[0]
                    if first.is_wrapper:
                        # wrapper impressions are prepended onto the local inline's one
                        assert r.hops == 2 and r.ad.impressions[-1].endswith("/pixel/imp/inline-0")
                        assert r.ad.impressions[: len(first.impressions)] == first.impressions
                    else:
                        assert r.hops == 1 and r.ad.impressions == first.impressions

                await asyncio.gather(*(one(p) for p in files))
        finally:
            await runner.cleanup()
        return bad

    bad = asyncio.run(main())
    assert bad == []
