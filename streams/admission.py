"""Validation of an ad request from the wire: the pure half of the ``admit`` stage."""

from __future__ import annotations

from typing import Any

from streams.records import AdRequest, ContractError

__all__ = ["validate_ad_request"]


def validate_ad_request(obj: dict[str, Any], *, now_ms: int, max_future_skew_ms: int) -> AdRequest:
    """Build and check one ad request from its JSON object (``records.parse`` of the bytes).

    Returns the request, or raises ``ContractError`` with a one-line reason.
    Beyond the contract, a timestamp more than ``max_future_skew_ms`` ahead of
    ``now_ms`` is refused: event time drives windows and budgets, so a clock
    far in the future would open windows no honest request could reach.
    """
    request = AdRequest.from_dict(obj)
    if request.timestamp > now_ms + max_future_skew_ms:
        ahead_s = (request.timestamp - now_ms) / 1000
        raise ContractError(
            f"AdRequest.timestamp is {ahead_s:.0f} s in the future "
            f"(limit {max_future_skew_ms / 1000:.0f} s)"
        )
    return request
