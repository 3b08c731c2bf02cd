"""Plain dataclasses for parsed VAST documents (VAST 1.0 through 4.3).

The model keeps what an ad decision and the trackers need; it is not a full
XSD binding. Everything is plain data: no lxml objects survive parsing, so a
document can be pickled, compared in tests and serialised to JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

CreativeKind = Literal["linear", "nonlinear", "companion"]
AdKind = Literal["inline", "wrapper"]


@dataclass(slots=True)
class TrackingEvent:
    """One ``<Tracking event="...">`` URL (``offset`` only for ``progress``)."""

    event: str
    url: str
    offset: str | None = None


@dataclass(slots=True)
class MediaFile:
    """One ``<MediaFile>``; numeric attributes are ``None`` when absent or malformed."""

    url: str
    delivery: str | None = None
    type: str | None = None
    width: int | None = None
    height: int | None = None
    bitrate: int | None = None
    min_bitrate: int | None = None
    max_bitrate: int | None = None
    codec: str | None = None
    api_framework: str | None = None
    id: str | None = None


@dataclass(slots=True)
class Resource:
    """A NonLinear/Companion resource: ``static``, ``iframe`` or ``html``."""

    kind: str
    value: str
    creative_type: str | None = None


@dataclass(slots=True)
class NonLinear:
    """One ``<NonLinear>`` inside ``<NonLinearAds>``."""

    id: str | None = None
    width: int | None = None
    height: int | None = None
    resources: list[Resource] = field(default_factory=list)
    click_through: str | None = None
    click_trackings: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Companion:
    """One ``<Companion>`` inside ``<CompanionAds>``."""

    id: str | None = None
    width: int | None = None
    height: int | None = None
    resources: list[Resource] = field(default_factory=list)
    click_through: str | None = None
    click_trackings: list[str] = field(default_factory=list)
    tracking_events: list[TrackingEvent] = field(default_factory=list)


@dataclass(slots=True)
class Creative:
    """One ``<Creative>``: exactly one of linear / nonlinear / companion content.

    ``tracking_events`` and ``click_trackings`` belong to the Linear element
    (kind ``linear``) or to the NonLinearAds element (kind ``nonlinear``);
    companion tracking lives on each :class:`Companion`.
    """

    kind: CreativeKind
    id: str | None = None
    ad_id: str | None = None
    sequence: int | None = None
    duration: str | None = None
    duration_s: float | None = None
    skip_offset: str | None = None
    media_files: list[MediaFile] = field(default_factory=list)
    tracking_events: list[TrackingEvent] = field(default_factory=list)
    click_through: str | None = None
    click_trackings: list[str] = field(default_factory=list)
    custom_clicks: list[str] = field(default_factory=list)
    nonlinears: list[NonLinear] = field(default_factory=list)
    companions: list[Companion] = field(default_factory=list)
    universal_ad_ids: list[str] = field(default_factory=list)


@dataclass(slots=True, frozen=True)
class Pricing:
    """``<Pricing model="cpm" currency="USD">2.50</Pricing>``; value is exact."""

    model: str
    currency: str
    value: Decimal


@dataclass(slots=True)
class AdVerification:
    """One ``<Verification>`` (VAST 4.x ``AdVerifications`` or 3.x extension)."""

    vendor: str | None = None
    javascript_resources: list[str] = field(default_factory=list)
    executable_resources: list[str] = field(default_factory=list)
    tracking_events: list[TrackingEvent] = field(default_factory=list)
    parameters: str | None = None


@dataclass(slots=True)
class Ad:
    """One ``<Ad>``: an InLine ad or a Wrapper pointing at more VAST.

    Wrapper flags keep their IAB defaults when absent: followAdditionalWrappers
    true, allowMultipleAds false; fallbackOnNoAd has no IAB default and stays
    ``None`` so the resolver can apply its own documented policy.
    """

    kind: AdKind
    id: str | None = None
    sequence: int | None = None
    ad_system: str | None = None
    ad_title: str | None = None
    impressions: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    creatives: list[Creative] = field(default_factory=list)
    pricing: Pricing | None = None
    verifications: list[AdVerification] = field(default_factory=list)
    vast_ad_tag_uri: str | None = None
    follow_additional_wrappers: bool = True
    allow_multiple_ads: bool = False
    fallback_on_no_ad: bool | None = None
    ad_serving_id: str | None = None

    @property
    def is_wrapper(self) -> bool:
        """True for a Wrapper ad."""
        return self.kind == "wrapper"

    @property
    def media_files(self) -> list[MediaFile]:
        """All MediaFiles of all linear creatives, in document order."""
        return [m for c in self.creatives if c.kind == "linear" for m in c.media_files]


@dataclass(slots=True)
class VastDocument:
    """A parsed VAST response; ``ads`` keeps document order.

    ``errors`` are root-level ``<Error>`` URLs (VAST 3+ "no ad" responses).
    ``version`` is the root ``version`` attribute, ``"1.0"`` for the VAST 1
    ``VideoAdServingTemplate`` root.
    """

    version: str | None
    ads: list[Ad] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def pod(self) -> list[Ad]:
        """Ads carrying a ``sequence`` attribute, ordered by it (stable)."""
        return sorted((a for a in self.ads if a.sequence is not None), key=lambda a: a.sequence)

    @property
    def standalone(self) -> list[Ad]:
        """Ads without ``sequence`` (the "ad buffet"), in document order."""
        return [a for a in self.ads if a.sequence is None]
