"""Unit tests for streams.money: exact micros, rounding, currency codes."""

from __future__ import annotations

import random
from decimal import ROUND_HALF_EVEN, Decimal

import pytest

from streams.money import (
    MAX_MICROS,
    MoneyError,
    check_micros,
    cpm_to_cpi_micros,
    format_micros,
    format_money,
    parse_amount,
    parse_currency,
)


@pytest.mark.parametrize(
    ("value", "micros"),
    [
        ("2.5", 2_500_000),
        ("100", 100_000_000),
        ("0", 0),
        ("0.000001", 1),
        ("2.5000000000", 2_500_000),  # trailing zeros beyond micros are exact
        ("+7.25", 7_250_000),
        (3, 3_000_000),
        (Decimal("1E+3"), 1_000_000_000),
        (Decimal("0.1"), 100_000),
        (2.5, 2_500_000),
        (0.1, 100_000),  # shortest repr "0.1" is what the author wrote
        (-0.0, 0),
    ],
)
def test_parse_amount_exact(value: object, micros: int) -> None:
    assert parse_amount(value) == micros


def test_parse_amount_matches_decimal_oracle() -> None:
    rng = random.Random(7)
    for _ in range(500):
        units = rng.randrange(0, 10**9)
        frac = rng.randrange(0, 10**6)
        text = f"{units}.{frac:06d}"
        assert parse_amount(text) == int(Decimal(text) * 1_000_000)


@pytest.mark.parametrize(
    "value",
    [
        "2.5000001",
        "abc",
        "1e3",
        "NaN",
        "inf",
        " 1",
        "1_000",
        "",
        ".5",
        "5.",
        "0x10",
        "9223372036855",  # above the int64 micros range
        Decimal("NaN"),
        Decimal("Infinity"),
        Decimal("1E-7"),
        Decimal("1E+100000"),
        float("nan"),
        float("inf"),
        0.1234567,
        1e-7,
        123456789.123456789,  # repr has more than 15 significant digits
        True,
        None,
        [1],
    ],
)
def test_parse_amount_rejects(value: object) -> None:
    with pytest.raises(MoneyError) as exc:
        parse_amount(value, field="price.amount")
    assert str(exc.value).startswith("price.amount: ")


def test_negative_only_when_allowed() -> None:
    with pytest.raises(MoneyError, match="must not be negative"):
        parse_amount("-1")
    assert parse_amount("-1.5", allow_negative=True) == -1_500_000


def test_error_names_the_bad_value() -> None:
    with pytest.raises(MoneyError, match=r"budget\.total: '2\.5000001' has more than 6 decimal"):
        parse_amount("2.5000001", field="budget.total")


def test_range_edges() -> None:
    top = format_micros(MAX_MICROS)
    assert parse_amount(top) == MAX_MICROS
    with pytest.raises(MoneyError, match="too large"):
        parse_amount(format_micros(MAX_MICROS + 1))
    assert check_micros(MAX_MICROS, field="x") == MAX_MICROS
    for bad in (MAX_MICROS + 1, -5, 1.0, True, "5"):
        with pytest.raises(MoneyError):
            check_micros(bad, field="x")
    assert check_micros(-5, field="x", allow_negative=True) == -5


@pytest.mark.parametrize(
    ("micros", "text"),
    [(2_500_000, "2.5"), (100_000_000, "100"), (-1, "-0.000001"), (0, "0"), (1_230_000, "1.23")],
)
def test_format_micros(micros: int, text: str) -> None:
    assert format_micros(micros) == text


def test_format_parse_round_trip() -> None:
    rng = random.Random(11)
    samples = [rng.randrange(-(10**15), 10**15) for _ in range(1000)] + [0, 1, -1, MAX_MICROS]
    for m in samples:
        assert parse_amount(format_micros(m), allow_negative=True) == m
    assert format_money(2_500_000, "EUR") == "2.5 EUR"
    with pytest.raises(TypeError):
        format_micros(2.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cpm", "cpi"),
    [
        (2_500, 2),
        (3_500, 4),
        (2_501, 3),
        (2_499, 2),
        (0, 0),
        (500, 0),
        (1_500, 2),
        (2_500_000, 2_500),
    ],
)
def test_cpm_rounding_half_even(cpm: int, cpi: int) -> None:
    assert cpm_to_cpi_micros(cpm) == cpi


def test_cpm_rounding_matches_decimal_oracle() -> None:
    rng = random.Random(3)
    for _ in range(2000):
        cpm = rng.randrange(0, 10**12)
        expected = int((Decimal(cpm) / 1000).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
        assert cpm_to_cpi_micros(cpm) == expected


def test_cpm_rejects_negative_and_non_int() -> None:
    with pytest.raises(ValueError):
        cpm_to_cpi_micros(-1)
    with pytest.raises(TypeError):
        cpm_to_cpi_micros(1.0)  # type: ignore[arg-type]


def test_currency_codes() -> None:
    assert parse_currency("USD") == "USD"
    for bad in ("usd", "US", "USDX", "U1D", 840, None, " USD"):
        with pytest.raises(MoneyError, match="ISO 4217"):
            parse_currency(bad, field="price.currency")
