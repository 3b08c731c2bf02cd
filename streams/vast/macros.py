"""IAB VAST macro substitution (``[NAME]`` form).

Only the square-bracket form is IAB-documented (VAST 3.0/4.x "Macros");
``%%NAME%%`` and ``$NAME`` are ad-server conventions (e.g. Google Ad Manager)
that IAB does not define, so they are deliberately left untouched.

Rules implemented:
- every ``[NAME]`` token (upper-case letters, digits, underscore) is replaced;
- a name with a value gets that value URI-encoded (RFC 3986, nothing kept
  "safe"), so a value can never inject ``&``, ``/`` or ``#`` into the URL;
- a name without a value, known or unknown, becomes ``-1`` (IAB: "-1" means
  the value is unknown / not supported).
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from urllib.parse import quote

__all__ = [
    "EXTENSION_MACROS",
    "IAB_MACROS",
    "UNKNOWN_VALUE",
    "cachebusting",
    "iab_timestamp",
    "standard_values",
    "substitute",
]

UNKNOWN_VALUE = "-1"

# Names from the IAB VAST 4.x macro list (github.com/InteractiveAdvertisingBureau/vast,
# vast4-macros-data.json). A unit test checks this set against that list.
IAB_MACROS: frozenset[str] = frozenset(
    {
        "TIMESTAMP",
        "CACHEBUSTING",
        "CONTENTPLAYHEAD",
        "MEDIAPLAYHEAD",
        "BREAKPOSITION",
        "BLOCKEDADCATEGORIES",
        "ADCATEGORIES",
        "ADCOUNT",
        "TRANSACTIONID",
        "PLACEMENTTYPE",
        "ADTYPE",
        "UNIVERSALADID",
        "BREAKMAXDURATION",
        "BREAKMAXADS",
        "BREAKMINADLENGTH",
        "BREAKMAXADLENGTH",
        "IFA",
        "IFATYPE",
        "CLIENTUA",
        "SERVERUA",
        "DEVICEUA",
        "SERVERSIDE",
        "DEVICEIP",
        "LATLONG",
        "DOMAIN",
        "PAGEURL",
        "APPBUNDLE",
        "VASTVERSIONS",
        "APIFRAMEWORKS",
        "EXTENSIONS",
        "VERIFICATIONVENDORS",
        "OMIDPARTNER",
        "MEDIAMIME",
        "PLAYERCAPABILITIES",
        "CLICKTYPE",
        "PLAYERSTATE",
        "INVENTORYSTATE",
        "PLAYERSIZE",
        "ADPLAYHEAD",
        "ASSETURI",
        "CONTENTID",
        "CONTENTURI",
        "PODSEQUENCE",
        "ADSERVINGID",
        "CLICKPOS",
        "ERRORCODE",
        "REASON",
        "LIMITADTRACKING",
        "REGULATIONS",
        "GDPRCONSENT",
        "STOREID",
        "STOREURL",
        "PLAYBACKMETHODS",
        "CONTENTCAT",
        "GPPSTRING",
        "GPPSECTIONID",
        "DSAREQUIRED",
        "DSAPARAMS",
        "DSAPUBRENDER",
    }
)

# Not in the IAB list, but used by real ad tags (Google IMA/Ad Manager) and
# carried on our AdRequest, so we fill it when the request supplies one.
EXTENSION_MACROS: frozenset[str] = frozenset({"CORRELATOR"})

_MACRO = re.compile(r"\[([A-Z][A-Z0-9_]*)\]")


def iab_timestamp(now: datetime | None = None) -> str:
    """ISO 8601 with milliseconds and numeric offset, e.g. ``2016-01-17T13:15:07.127+00:00``."""
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return now.isoformat(timespec="milliseconds")


def cachebusting(rng: random.Random | None = None) -> str:
    """A random 8-digit integer as IAB defines CACHEBUSTING (no leading zero)."""
    return str((rng or random).randint(10_000_000, 99_999_999))


def standard_values(
    *,
    errorcode: int | None = None,
    correlator: str | int | None = None,
    cachebuster: str | int | None = None,
    device_ip: str | None = None,
    device_ua: str | None = None,
    now: datetime | None = None,
    extra: Mapping[str, object] | None = None,
) -> dict[str, str]:
    """Raw (unencoded) values for the macros a server-side resolver can know.

    TIMESTAMP and CACHEBUSTING are always present; the others only when given.
    ``extra`` entries win over computed ones (names are upper-cased).
    """
    values: dict[str, str] = {
        "TIMESTAMP": iab_timestamp(now),
        "CACHEBUSTING": str(cachebuster) if cachebuster is not None else cachebusting(),
    }
    if errorcode is not None:
        values["ERRORCODE"] = str(int(errorcode))
    if correlator is not None:
        values["CORRELATOR"] = str(correlator)
    if device_ip:
        values["DEVICEIP"] = device_ip
    if device_ua:
        values["DEVICEUA"] = device_ua
    if extra:
        for k, v in extra.items():
            if v is not None:
                values[k.upper()] = str(v)
    return values


def substitute(url: str, values: Mapping[str, object]) -> str:
    """Replace every ``[NAME]`` in ``url``.

    Guarantees: names present in ``values`` (value not ``None``) are replaced
    by the URI-encoded value; every other ``[NAME]`` becomes ``-1``; text
    outside macros is returned byte-for-byte unchanged.
    """
    if "[" not in url:  # fast path: most tracking URLs carry no macro
        return url

    def repl(m: re.Match[str]) -> str:
        v = values.get(m.group(1))
        if v is None:
            return UNKNOWN_VALUE
        return quote(str(v), safe="")

    return _MACRO.sub(repl, url)


def macros_in(url: str) -> list[str]:
    """Names of all ``[NAME]`` macros in ``url``, in order of appearance."""
    return _MACRO.findall(url)
