"""VAST parsing, macros, HTTP fetching and chain resolution (no Faust, no Kafka)."""

from .errors import VastError, VastErrorCode
from .http import FetchConfig, FetchContext, FetchError, VastHttpClient, get_shared_client
from .macros import substitute
from .model import (
    Ad,
    AdVerification,
    Companion,
    Creative,
    MediaFile,
    NonLinear,
    Pricing,
    Resource,
    TrackingEvent,
    VastDocument,
)
from .parser import parse_vast
from .resolver import ChainResult, ResolveContext, ResolvedAd, merge_chain, resolve_chain

__all__ = [
    "Ad",
    "AdVerification",
    "ChainResult",
    "Companion",
    "Creative",
    "FetchConfig",
    "FetchContext",
    "FetchError",
    "MediaFile",
    "NonLinear",
    "Pricing",
    "ResolveContext",
    "ResolvedAd",
    "Resource",
    "TrackingEvent",
    "VastDocument",
    "VastError",
    "VastErrorCode",
    "VastHttpClient",
    "get_shared_client",
    "merge_chain",
    "parse_vast",
    "resolve_chain",
    "substitute",
]
