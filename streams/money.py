"""Money as integer micros (1 currency unit = 1_000_000 micros).

Every amount that moves through caps, budgets and settlements is a Python
``int`` of micros, so sums are exact and a replay folds to the same bytes.

Decisions (documented here because callers depend on them):

* **Accepted inputs** for an amount in currency units: ``int`` (not ``bool``),
  ``decimal.Decimal`` and ``str`` in plain decimal notation
  (``"2.5"``, ``"-0.000001"``, ``"100"``; no exponent, no ``_``, no spaces).
  A value with more than 6 decimal places that are not zeros is *rejected*,
  never rounded: silently rounding money in config would hide a typo.
* **Floats** are accepted only when their shortest round-trip ``repr`` (the
  text a JSON producer most likely wrote) has at most 15 significant digits
  and at most 6 decimal places. ``2.5`` and ``0.1`` are accepted
  (2_500_000 and 100_000 micros); ``0.1234567`` and ``1e-7`` are rejected.
  Fifteen digits is the precision an IEEE double is guaranteed to preserve
  for decimal text, so an accepted float always means what its author typed.
  NaN and infinities are always rejected.
* **Range**: micros must fit a signed 64-bit integer so every other consumer
  of the topics (JVM, Go) can hold them.
* **CPM → per impression**: ``cpm_micros / 1000`` rounded half-to-even
  (banker's rounding). The error is below half a micro per impression and
  unbiased over many impressions.
* **Currency codes**: three upper-case ASCII letters (the ISO 4217 shape).
  The list of active codes is not enforced: it changes over time, and a
  config must not become invalid when a code is withdrawn.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

__all__ = [
    "MAX_MICROS",
    "MICROS_PER_UNIT",
    "MoneyError",
    "check_micros",
    "cpm_to_cpi_micros",
    "format_micros",
    "format_money",
    "parse_amount",
    "parse_currency",
]

MICROS_PER_UNIT = 1_000_000
MAX_MICROS = 2**63 - 1
_MICRO_EXP = 6
_PLAIN_DECIMAL = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?")
_CURRENCY = re.compile(r"[A-Z]{3}")
_MAX_TEXT = 64
_FLOAT_DIGITS = 15


class MoneyError(ValueError):
    """An amount or currency that cannot be represented exactly; names the field."""


def _decimal_to_micros(d: Decimal, field: str, shown: str) -> int:
    """Convert a finite Decimal to micros exactly, or raise MoneyError."""
    if not d.is_finite():
        raise MoneyError(f"{field}: {shown} is not a finite number")
    sign, digits, exp = d.as_tuple()
    assert isinstance(exp, int)  # finite Decimals always have an int exponent
    # Trim trailing zeros by hand: Decimal.normalize() rounds to the context
    # precision, which could turn a sub-micro amount into a whole one.
    digit_list = list(digits)
    while exp < -_MICRO_EXP and len(digit_list) > 1 and digit_list[-1] == 0:
        digit_list.pop()
        exp += 1
    if exp < -_MICRO_EXP and any(digit_list):
        raise MoneyError(
            f"{field}: {shown} has more than {_MICRO_EXP} decimal places "
            "(amounts are whole micros; round it yourself)"
        )
    # Reject absurd magnitudes before building a huge power of ten.
    if any(digit_list) and len(digit_list) + exp + _MICRO_EXP > 19:
        raise MoneyError(f"{field}: {shown} is too large (max {format_micros(MAX_MICROS)})")
    n = int("".join(map(str, digit_list)) or "0")
    shift = exp + _MICRO_EXP
    micros = n * 10**shift if shift >= 0 else n // 10**-shift
    if sign:
        micros = -micros
    if abs(micros) > MAX_MICROS:
        raise MoneyError(f"{field}: {shown} is too large (max {format_micros(MAX_MICROS)})")
    return micros


def parse_amount(value: object, *, field: str = "amount", allow_negative: bool = False) -> int:
    """Parse an amount in currency units into exact integer micros.

    Guarantees: the result is an ``int`` equal to ``value * 1_000_000``
    exactly, within the signed 64-bit range, and non-negative unless
    ``allow_negative``. Anything else raises :class:`MoneyError` whose
    message starts with ``field`` and shows the bad value.
    """
    if isinstance(value, bool):
        raise MoneyError(f"{field}: {value!r} is a boolean, not an amount")
    if isinstance(value, int):
        micros = _decimal_to_micros(Decimal(value), field, repr(value))
    elif isinstance(value, Decimal):
        micros = _decimal_to_micros(value, field, repr(str(value)))
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise MoneyError(f"{field}: {value!r} is not a finite number")
        text = repr(value)
        d = Decimal(text)
        significant = len(d.as_tuple().digits) if d != 0 else 1
        if significant > _FLOAT_DIGITS:
            raise MoneyError(
                f"{field}: float {text} has more than {_FLOAT_DIGITS} significant digits "
                "and may not be the number that was written; pass it as a string"
            )
        micros = _decimal_to_micros(d, field, f"float {text}")
    elif isinstance(value, str):
        if len(value) > _MAX_TEXT or not _PLAIN_DECIMAL.fullmatch(value):
            raise MoneyError(
                f"{field}: {value[:_MAX_TEXT]!r} is not a plain decimal number "
                "(digits with an optional '.' and sign, e.g. '2.5')"
            )
        try:
            d = Decimal(value)
        except InvalidOperation as exc:  # pragma: no cover - the regex admits only valid text
            raise MoneyError(f"{field}: {value!r} is not a number") from exc
        micros = _decimal_to_micros(d, field, repr(value))
    else:
        raise MoneyError(
            f"{field}: expected a decimal string, int or Decimal, got {type(value).__name__}"
        )
    if micros < 0 and not allow_negative:
        raise MoneyError(f"{field}: {value!r} must not be negative")
    return micros


def check_micros(value: object, *, field: str, allow_negative: bool = False) -> int:
    """Validate an amount that is already in micros (an ``int``, never ``bool``/float).

    Guarantees the same range and sign rules as :func:`parse_amount`.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise MoneyError(f"{field}: expected integer micros, got {value!r}")
    if abs(value) > MAX_MICROS:
        raise MoneyError(f"{field}: {value} micros is outside the signed 64-bit range")
    if value < 0 and not allow_negative:
        raise MoneyError(f"{field}: {value} must not be negative")
    return value


def format_micros(micros: int) -> str:
    """Format micros as a canonical decimal string in currency units.

    Guarantees: the shortest exact representation (no trailing zeros, no
    '.' for whole amounts, '-' for negatives), and
    ``parse_amount(format_micros(m), allow_negative=True) == m``.
    """
    if isinstance(micros, bool) or not isinstance(micros, int):
        raise TypeError(f"micros must be an int, got {type(micros).__name__}")
    sign = "-" if micros < 0 else ""
    units, frac = divmod(abs(micros), MICROS_PER_UNIT)
    if frac == 0:
        return f"{sign}{units}"
    return f"{sign}{units}.{frac:06d}".rstrip("0")


def format_money(micros: int, currency: str) -> str:
    """Human-readable amount with its currency, e.g. ``'2.5 USD'``."""
    return f"{format_micros(micros)} {currency}"


def cpm_to_cpi_micros(cpm_micros: int) -> int:
    """Price per impression for a price per thousand impressions.

    Guarantees: ``round_half_even(cpm_micros / 1000)`` computed in integers;
    never negative; raises ValueError for negative or non-int input.
    """
    if isinstance(cpm_micros, bool) or not isinstance(cpm_micros, int):
        raise TypeError(f"cpm_micros must be an int, got {type(cpm_micros).__name__}")
    if cpm_micros < 0:
        raise ValueError(f"cpm_micros must not be negative, got {cpm_micros}")
    q, r = divmod(cpm_micros, 1000)
    if r > 500 or (r == 500 and q % 2 == 1):
        q += 1
    return q


def parse_currency(value: object, *, field: str = "currency") -> str:
    """Validate an ISO 4217-shaped currency code (three upper-case letters).

    Guarantees the returned code is exactly the input; lower-case codes are
    rejected rather than fixed so that config and VAST Pricing compare equal
    byte for byte.
    """
    if not isinstance(value, str) or not _CURRENCY.fullmatch(value):
        raise MoneyError(
            f"{field}: {value!r} is not an ISO 4217 currency code (three upper-case letters)"
        )
    return value
