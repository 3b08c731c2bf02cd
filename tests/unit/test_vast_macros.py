"""Unit tests for IAB macro substitution."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from streams.vast.macros import (
    EXTENSION_MACROS,
    IAB_MACROS,
    cachebusting,
    iab_timestamp,
    macros_in,
    standard_values,
    substitute,
)

_FIXTURES = Path(os.environ.get("XSP_VAST_FIXTURES", "/work/shared/fixtures/vast/iab"))
MACRO_LIST = _FIXTURES.parent / "xsd" / "vast4-macros-data.json"


def test_known_names_cover_the_iab_macro_list() -> None:
    if not MACRO_LIST.is_file():
        pytest.skip(f"IAB macro list not found at {MACRO_LIST}; set XSP_VAST_FIXTURES")
    names = {m["name"] for m in json.loads(MACRO_LIST.read_text())["macros"]}
    assert names, "macro list is empty"
    assert names - IAB_MACROS == set()
    assert IAB_MACROS - names == set()
    assert not EXTENSION_MACROS & names  # our extensions are not IAB names


def test_values_are_uri_encoded() -> None:
    url = "https://t.example/e?c=[ERRORCODE]&ua=[DEVICEUA]&ts=[TIMESTAMP]"
    out = substitute(
        url,
        {
            "ERRORCODE": 303,
            "DEVICEUA": "Mozilla/5.0 (X11; a&b=c#d)",
            "TIMESTAMP": "2016-01-17T08:15:07.127-05:00",
        },
    )
    assert out == (
        "https://t.example/e?c=303&ua=Mozilla%2F5.0%20%28X11%3B%20a%26b%3Dc%23d%29"
        "&ts=2016-01-17T08%3A15%3A07.127-05%3A00"
    )


def test_unknown_and_valueless_macros_become_minus_one() -> None:
    out = substitute(
        "https://x/?a=[NOTAMACRO]&b=[CONTENTPLAYHEAD]&c=[CACHEBUSTING]",
        {"CACHEBUSTING": "12345678", "CONTENTPLAYHEAD": None},
    )
    assert out == "https://x/?a=-1&b=-1&c=12345678"


def test_non_iab_forms_and_non_macros_untouched() -> None:
    url = "https://[::1]:8080/p?dfp=%%CACHEBUSTER%%&s=$TIMESTAMP&lower=[timestamp]&j=[1]"
    assert substitute(url, {"TIMESTAMP": "t", "CACHEBUSTER": "c"}) == url
    assert macros_in(url) == []


def test_text_outside_macros_is_unchanged() -> None:
    url = "https://x.example/a%20b?q=[CORRELATOR]&z=%5B"
    assert substitute(url, {"CORRELATOR": "abc"}) == "https://x.example/a%20b?q=abc&z=%5B"


def test_timestamp_is_iso8601_with_millis_and_offset() -> None:
    ts = iab_timestamp()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", ts), ts
    fixed = datetime(2016, 1, 17, 8, 15, 7, 127000, tzinfo=timezone(timedelta(hours=-5)))
    assert iab_timestamp(fixed) == "2016-01-17T08:15:07.127-05:00"
    naive = datetime(2020, 1, 1, 0, 0, 0)
    assert iab_timestamp(naive).endswith("+00:00")


def test_cachebusting_is_eight_digits_and_varies() -> None:
    seen = {cachebusting() for _ in range(50)}
    assert all(re.fullmatch(r"[1-9]\d{7}", s) for s in seen)
    assert len(seen) > 40


def test_standard_values() -> None:
    now = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    v = standard_values(
        errorcode=302,
        correlator="c1",
        cachebuster=11112222,
        device_ip="203.0.113.9",
        device_ua="UA",
        now=now,
        extra={"gdprconsent": "xyz", "IFA": None},
    )
    assert v == {
        "TIMESTAMP": "2024-05-06T07:08:09.000+00:00",
        "CACHEBUSTING": "11112222",
        "ERRORCODE": "302",
        "CORRELATOR": "c1",
        "DEVICEIP": "203.0.113.9",
        "DEVICEUA": "UA",
        "GDPRCONSENT": "xyz",
    }
    url = "https://a/?e=[ERRORCODE]&ip=[DEVICEIP]&g=[GDPRCONSENT]&i=[IFA]"
    assert substitute(url, v) == "https://a/?e=302&ip=203.0.113.9&g=xyz&i=-1"
