"""The one JSON codec for bytes that xsp writes to Kafka and to its tables.

Canonical: sorted keys, no whitespace, UTF-8. Equal values give equal bytes,
which is what golden files, idempotent rewrites and byte-for-byte replay
comparisons rely on. Built on orjson: the stdlib ``json`` module was ~11 % of
a worker's main-thread CPU in a profile of a 3,000-request burst, and swapping
it cut worker CPU per decision by ~8 % (README, "Why it looks like this").

Differences from the stdlib that callers may rely on:

- ``loads`` is strict: ``NaN``/``Infinity`` literals, a byte order mark,
  invalid UTF-8 and lone surrogates are errors, not values.
- An integer beyond 64 bits decodes as a float, so validators that demand an
  ``int`` reject it.
- ``dumps`` refuses an integer beyond 64 bits and non-``str`` dict keys with
  ``TypeError``, and writes a non-finite float as ``null``: nothing xsp writes
  holds one (decoded numbers are checked finite; money and counters are ints).

Human output (CLI tables, ``--json`` reports, logs) uses the stdlib instead:
there readability matters, not speed or canonical bytes.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["JSONDecodeError", "dumps", "loads"]

JSONDecodeError = orjson.JSONDecodeError
"""Raised by ``loads``; a ``ValueError`` with ``msg``, ``lineno`` and ``colno``."""


def dumps(obj: Any) -> bytes:
    """``obj`` as canonical JSON bytes (sorted keys, compact, UTF-8)."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def loads(data: bytes | str) -> Any:
    """The value of the JSON document ``data``; ``JSONDecodeError`` if it is not one."""
    return orjson.loads(data)
