"""IAB VAST error codes and the exception that carries one.

The table follows the IAB VAST 4.x error-code table (codes 100-902); codes
introduced after VAST 3.0 are marked with the version that introduced them.
"""

from __future__ import annotations

from enum import IntEnum


class VastErrorCode(IntEnum):
    """IAB VAST error codes (VAST 3.0 table plus the VAST 4.x additions)."""

    XML_PARSE_ERROR = 100
    """XML parsing error (also: a DOCTYPE/DTD, which we refuse outright)."""
    SCHEMA_VALIDATION_ERROR = 101
    """VAST schema validation error (e.g. a Wrapper without VASTAdTagURI)."""
    VERSION_NOT_SUPPORTED = 102
    """VAST version of response not supported."""
    TRAFFICKING_ERROR = 200
    """Trafficking error: an ad type the player did not expect / cannot display."""
    LINEARITY_MISMATCH = 201
    """Player expecting different linearity."""
    DURATION_MISMATCH = 202
    """Player expecting different duration."""
    SIZE_MISMATCH = 203
    """Player expecting different size."""
    CATEGORY_REQUIRED = 204
    """Ad category was required but not provided (VAST 4.1)."""
    CATEGORY_BLOCKED = 205
    """InLine Category violates Wrapper BlockedAdCategories (VAST 4.1)."""
    AD_BREAK_SHORTENED = 206
    """Ad break shortened; ad was not served (VAST 4.1)."""
    GENERAL_WRAPPER_ERROR = 300
    """General Wrapper error."""
    WRAPPER_TIMEOUT = 301
    """Timeout of VAST URI in a Wrapper (or subsequent Wrapper): unavailable or timed out."""
    WRAPPER_LIMIT_REACHED = 302
    """Wrapper limit reached: too many Wrappers received with no InLine response."""
    NO_VAST_RESPONSE_AFTER_WRAPPER = 303
    """No VAST response (no ads) after one or more Wrappers."""
    INLINE_AD_DISPLAY_TIMEOUT = 304
    """InLine response returned an ad unit that failed to result in ad display in time (4.1)."""
    GENERAL_LINEAR_ERROR = 400
    """General Linear error: the player is unable to display the Linear ad."""
    MEDIAFILE_NOT_FOUND = 401
    """File not found: unable to find Linear/MediaFile from URI."""
    MEDIAFILE_TIMEOUT = 402
    """Timeout of MediaFile URI."""
    MEDIAFILE_UNSUPPORTED = 403
    """No MediaFile supported by this player, based on the MediaFile attributes."""
    MEDIAFILE_DISPLAY_PROBLEM = 405
    """Problem displaying a MediaFile of supported type (codec, MIME mismatch, ...)."""
    MEZZANINE_REQUIRED = 406
    """Mezzanine was required but not provided; ad not served (VAST 4.1)."""
    MEZZANINE_DOWNLOADING = 407
    """Mezzanine is being downloaded for the first time; ad not served (VAST 4.1)."""
    CONDITIONAL_AD_REJECTED = 408
    """Conditional ad rejected (VAST 4.1; deprecated along with conditionalAd)."""
    INTERACTIVE_UNIT_NOT_EXECUTED = 409
    """Interactive unit in the InteractiveCreativeFile node was not executed (VAST 4.1)."""
    VERIFICATION_UNIT_NOT_EXECUTED = 410
    """Verification unit in the Verification node was not executed (VAST 4.1)."""
    MEZZANINE_NOT_MEETING_SPEC = 411
    """Mezzanine provided but did not meet the required specification (VAST 4.1)."""
    GENERAL_NONLINEAR_ERROR = 500
    """General NonLinearAds error."""
    NONLINEAR_DIMENSIONS = 501
    """NonLinear creative dimensions do not align with the display area."""
    NONLINEAR_FETCH_FAILED = 502
    """Unable to fetch NonLinearAds/NonLinear resource."""
    NONLINEAR_UNSUPPORTED = 503
    """No NonLinear resource with a supported type."""
    GENERAL_COMPANION_ERROR = 600
    """General CompanionAds error."""
    COMPANION_DIMENSIONS = 601
    """Companion dimensions do not fit within the companion display area."""
    COMPANION_REQUIRED_NOT_DISPLAYED = 602
    """Unable to display a required Companion."""
    COMPANION_FETCH_FAILED = 603
    """Unable to fetch CompanionAds/Companion resource."""
    COMPANION_UNSUPPORTED = 604
    """No Companion resource with a supported type."""
    UNDEFINED_ERROR = 900
    """Undefined error."""
    GENERAL_VPAID_ERROR = 901
    """General VPAID error."""
    GENERAL_INTERACTIVE_CREATIVE_ERROR = 902
    """General InteractiveCreativeFile error code (VAST 4.1)."""


class VastError(Exception):
    """A failure that maps onto one IAB VAST error code.

    ``code`` is always a :class:`VastErrorCode`; ``reason`` is a short
    machine-friendly tag (e.g. ``"doctype"``, ``"wrapper_loop"``) that refines
    the code for logs and metrics without inventing non-IAB codes.
    """

    def __init__(self, code: VastErrorCode | int, message: str, *, reason: str = "") -> None:
        self.code = VastErrorCode(code)
        self.reason = reason
        super().__init__(f"VAST {int(self.code)} ({self.code.name}): {message}")
