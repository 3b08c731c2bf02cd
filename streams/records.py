"""Wire contracts: every record that crosses a Kafka topic, and its JSON codec.

Producers and consumers import these classes; nothing else defines a wire
format. Each record carries ``v`` (the schema version). Decoding validates
and raises ``ContractError`` whose message names the field and the bad value,
so the dead-letter topic tells an operator exactly what was wrong.

Encoding is canonical (sorted keys, compact separators, UTF-8) so the same
record always gives the same bytes: golden files in ``tests/golden`` pin it,
and replays can compare table snapshots byte for byte.

Money is integer micros (1 unit of currency = 1_000_000) everywhere.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Self, TypeVar

from streams import json_codec

__all__ = [
    "SCHEMA_VERSION",
    "AdPayload",
    "AdRequest",
    "Admitted",
    "AdmittedBatch",
    "CampaignStatus",
    "ContractError",
    "DeadLetter",
    "Decision",
    "DecisionStatus",
    "ExpireCommand",
    "FrequencySettle",
    "Resolution",
    "Resolutions",
    "ResolveRequest",
    "SpendEvent",
    "Tick",
    "admitted_batch_bytes",
    "decode",
    "encode",
    "kind_of",
    "parse",
    "request_id_in",
    "resolutions_in",
    "unbatched",
]

SCHEMA_VERSION = 1
_MAX_ID_LENGTH = 200


class ContractError(ValueError):
    """Raised when bytes or a dict do not form a valid record; ``str()`` is the reason."""


class DecisionStatus(StrEnum):
    """What happened to one ad request. Exactly one Decision per request."""

    FILLED = "filled"
    NO_FILL = "no_fill"
    CAPPED = "capped"
    BUDGET_EXHAUSTED = "budget_exhausted"
    ERROR = "error"
    TIMEOUT = "timeout"


def encode(record: _Record) -> bytes:
    """Serialise ``record`` to its canonical JSON bytes."""
    return json_codec.dumps(record.to_dict())


def decode(cls: type[R], raw: bytes | str | None) -> R:
    """Parse ``raw`` JSON into ``cls``; raise ``ContractError`` with the reason if invalid."""
    return cls.from_dict(parse(raw))


def parse(raw: bytes | str | None) -> dict[str, Any]:
    """The JSON object ``raw`` holds; ``ContractError`` with the reason if it holds none.

    An agent that must see a message's ``kind`` before it knows the record's
    class parses once with this and builds the record with ``from_dict``.
    """
    if raw is None:
        raise ContractError("empty message (tombstone)")
    try:
        obj = json_codec.loads(raw)
    except json_codec.JSONDecodeError as exc:
        if isinstance(raw, bytes):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as bad:
                raise ContractError(f"not UTF-8: {bad.reason} at byte {bad.start}") from None
        raise ContractError(
            f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(obj, dict):
        raise ContractError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


R = TypeVar("R", bound="_Record")
Item = TypeVar("Item", bound="_Record")
E = TypeVar("E", bound=StrEnum)


class _Record:
    """Shared shape: ``to_dict`` / ``from_dict`` and the version check."""

    KIND: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Self:
        raise NotImplementedError


class _Reader:
    """Reads typed fields out of a dict, collecting the record kind for messages."""

    def __init__(self, kind: str, obj: dict[str, Any]) -> None:
        self.kind = kind
        self.obj = obj
        version = obj.get("v", SCHEMA_VERSION)
        if type(version) is not int:
            raise ContractError(f"{kind}.v must be an integer, got {version!r}")
        if version > SCHEMA_VERSION:
            raise ContractError(
                f"{kind}.v={version} is newer than this worker understands ({SCHEMA_VERSION})"
            )

    def _missing(self, name: str) -> ContractError:
        return ContractError(f"{self.kind}.{name} is required")

    def string(self, name: str, *, required: bool = True, default: str = "") -> str:
        value = self.obj.get(name)
        if value is None:
            if required:
                raise self._missing(name)
            return default
        if not isinstance(value, str):
            raise ContractError(f"{self.kind}.{name} must be a string, got {_show(value)}")
        return value

    def identifier(self, name: str) -> str:
        value = self.string(name)
        if not value.strip():
            raise ContractError(f"{self.kind}.{name} must not be empty")
        if len(value) > _MAX_ID_LENGTH:
            raise ContractError(f"{self.kind}.{name} is longer than {_MAX_ID_LENGTH} characters")
        return value

    def optional_identifier(self, name: str) -> str | None:
        if self.obj.get(name) is None:
            return None
        return self.identifier(name)

    def integer(
        self, name: str, *, required: bool = True, default: int = 0, minimum: int | None = None
    ) -> int:
        value = self.obj.get(name)
        if value is None:
            if required:
                raise self._missing(name)
            return default
        # bool is an int subclass in Python; on the wire true/false is never a count.
        if type(value) is not int:
            raise ContractError(f"{self.kind}.{name} must be an integer, got {_show(value)}")
        if minimum is not None and value < minimum:
            raise ContractError(f"{self.kind}.{name} must be >= {minimum}, got {value}")
        return value

    def optional_integer(self, name: str, *, minimum: int | None = None) -> int | None:
        if self.obj.get(name) is None:
            return None
        return self.integer(name, minimum=minimum)

    def number_map(self, name: str) -> dict[str, float]:
        value = self.mapping(name)
        for key, item in value.items():
            if type(item) not in (int, float) or not math.isfinite(item):
                raise ContractError(
                    f"{self.kind}.{name}.{key} must be a finite number, got {_show(item)}"
                )
        return {key: float(item) for key, item in value.items()}

    def mapping(self, name: str) -> dict[str, Any]:
        value = self.obj.get(name)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ContractError(f"{self.kind}.{name} must be an object, got {_show(value)}")
        return dict(value)

    def string_map(self, name: str) -> dict[str, str]:
        value = self.mapping(name)
        for key, item in value.items():
            if not isinstance(item, str):
                raise ContractError(f"{self.kind}.{name}.{key} must be a string, got {_show(item)}")
        return value

    def string_list(self, name: str) -> list[str]:
        value = self.obj.get(name)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise ContractError(f"{self.kind}.{name} must be a list of strings")
        return list(value)

    def enum(self, name: str, enum: type[E]) -> E:
        value = self.string(name)
        try:
            return enum(value)
        except ValueError:
            allowed = ", ".join(member.value for member in enum)
            raise ContractError(
                f"{self.kind}.{name} must be one of {allowed}, got {value!r}"
            ) from None

    def unknown(self, known: set[str]) -> dict[str, Any]:
        """Fields this version does not know: kept so a newer producer loses nothing."""
        return {k: v for k, v in self.obj.items() if k not in known}


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, bytes) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True, slots=True)
class AdRequest(_Record):
    """One ad opportunity from an edge process (topic ``ad-requests``, key ``user_id``).

    ``params`` carries placement, size, ``campaign_id`` hint, device ip/ua, …;
    ``reply_to`` is the topic the edge reads its Decision from.
    """

    KIND: ClassVar[str] = "AdRequest"
    _KNOWN: ClassVar[set[str]] = {
        "v",
        "request_id",
        "user_id",
        "timestamp",
        "correlator",
        "cachebusting",
        "cookies",
        "params",
        "reply_to",
    }

    request_id: str
    user_id: str
    timestamp: int
    correlator: str = ""
    cachebusting: str = ""
    cookies: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    reply_to: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def campaign_hint(self) -> str | None:
        """The campaign the edge asked for, if any (``params.campaign_id``)."""
        hint = self.params.get("campaign_id")
        return hint if isinstance(hint, str) and hint else None

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "v": SCHEMA_VERSION,
            "request_id": self.request_id,
            "user_id": self.user_id,
            "timestamp": self.timestamp,
            "correlator": self.correlator,
            "cachebusting": self.cachebusting,
            "cookies": self.cookies,
            "params": self.params,
            "reply_to": self.reply_to,
        }

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> AdRequest:
        r = _Reader(cls.KIND, obj)
        params = r.mapping("params")
        hint = params.get("campaign_id")
        if hint is not None and not isinstance(hint, str):
            raise ContractError(f"AdRequest.params.campaign_id must be a string, got {_show(hint)}")
        return cls(
            request_id=r.identifier("request_id"),
            user_id=r.identifier("user_id"),
            timestamp=r.integer("timestamp", minimum=1),
            correlator=r.string("correlator", required=False),
            cachebusting=r.string("cachebusting", required=False),
            cookies=r.string_map("cookies"),
            params=params,
            reply_to=r.optional_identifier("reply_to"),
            extra=r.unknown(cls._KNOWN),
        )


@dataclass(frozen=True, slots=True)
class AdPayload:
    """The ad a filled request serves: the inline ad after the wrapper chain was merged."""

    ad_id: str = ""
    media_files: list[dict[str, Any]] = field(default_factory=list)
    impression_urls: list[str] = field(default_factory=list)
    error_urls: list[str] = field(default_factory=list)
    tracking: dict[str, list[str]] = field(default_factory=dict)
    click_through: str | None = None
    click_tracking: list[str] = field(default_factory=list)
    price_micros: int | None = None
    currency: str | None = None
    price_model: str | None = None
    vast_xml: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ad_id": self.ad_id,
            "media_files": self.media_files,
            "impression_urls": self.impression_urls,
            "error_urls": self.error_urls,
            "tracking": self.tracking,
            "click_through": self.click_through,
            "click_tracking": self.click_tracking,
            "price_micros": self.price_micros,
            "currency": self.currency,
            "price_model": self.price_model,
            "vast_xml": self.vast_xml,
        }

    @classmethod
    def from_dict(cls, obj: dict[str, Any], where: str) -> AdPayload:
        r = _Reader(where, obj)
        tracking = r.mapping("tracking")
        for event, urls in tracking.items():
            if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
                raise ContractError(f"{where}.tracking.{event} must be a list of strings")
        media = obj.get("media_files") or []
        if not isinstance(media, list) or not all(isinstance(m, dict) for m in media):
            raise ContractError(f"{where}.media_files must be a list of objects")
        click_through = obj.get("click_through")
        if click_through is not None and not isinstance(click_through, str):
            raise ContractError(f"{where}.click_through must be a string")
        vast_xml = obj.get("vast_xml")
        if vast_xml is not None and not isinstance(vast_xml, str):
            raise ContractError(f"{where}.vast_xml must be a string")
        currency = obj.get("currency")
        if currency is not None and not isinstance(currency, str):
            raise ContractError(f"{where}.currency must be a string")
        price_model = obj.get("price_model")
        if price_model is not None and not isinstance(price_model, str):
            raise ContractError(f"{where}.price_model must be a string")
        return cls(
            ad_id=r.string("ad_id", required=False),
            media_files=list(media),
            impression_urls=r.string_list("impression_urls"),
            error_urls=r.string_list("error_urls"),
            tracking=tracking,
            click_through=click_through,
            click_tracking=r.string_list("click_tracking"),
            price_micros=r.optional_integer("price_micros", minimum=0),
            currency=currency,
            price_model=price_model,
            vast_xml=vast_xml,
        )


@dataclass(frozen=True, slots=True)
class Resolution(_Record):
    """What the resolve stage found for one request (topic ``budget-requests``, key campaign).

    Recorded in the topic, so replaying it never calls an ad server again.
    Keyed by campaign because the budget agent settles it in the campaign's
    row; ``user_id`` and ``reply_to`` travel along for the cap settle and
    the decision.
    """

    KIND: ClassVar[str] = "Resolution"

    request_id: str
    status: DecisionStatus
    campaign_id: str | None = None
    ad: AdPayload | None = None
    vast_error_code: int | None = None
    hops: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    resolved_at: int = 0
    user_id: str = ""
    reply_to: str | None = None
    request_timestamp: int = 0
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "kind": "resolution",
            "request_id": self.request_id,
            "status": self.status.value,
            "user_id": self.user_id,
            "reply_to": self.reply_to,
            "request_timestamp": self.request_timestamp,
            "reason": self.reason,
            "campaign_id": self.campaign_id,
            "ad": None if self.ad is None else self.ad.to_dict(),
            "vast_error_code": self.vast_error_code,
            "hops": self.hops,
            "timings_ms": self.timings_ms,
            "resolved_at": self.resolved_at,
        }

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Resolution:
        r = _Reader(cls.KIND, obj)
        return cls(
            request_id=r.identifier("request_id"),
            status=r.enum("status", DecisionStatus),
            campaign_id=r.optional_identifier("campaign_id"),
            ad=_optional_ad(r, cls.KIND),
            vast_error_code=r.optional_integer("vast_error_code", minimum=100),
            hops=r.integer("hops", required=False, minimum=0),
            timings_ms=r.number_map("timings_ms"),
            resolved_at=r.integer("resolved_at", required=False, minimum=0),
            user_id=r.string("user_id", required=False),
            reply_to=r.optional_identifier("reply_to"),
            request_timestamp=r.integer("request_timestamp", required=False, minimum=0),
            reason=r.string("reason", required=False),
        )


MAX_RESOLUTIONS_PER_MESSAGE = 200


def _campaign_items(
    kind: str, obj: dict[str, Any], item_cls: type[Item], campaign_id: str, maximum: int
) -> tuple[Item, ...]:
    """The ``items`` of a one-campaign batch message: 1..``maximum`` valid records of it."""
    raw_items = obj.get("items")
    if not isinstance(raw_items, list) or not raw_items:
        raise ContractError(f"{kind}.items must be a non-empty list")
    if len(raw_items) > maximum:
        raise ContractError(f"{kind}.items has {len(raw_items)} entries (at most {maximum})")
    items = []
    for i, raw in enumerate(raw_items):
        if not isinstance(raw, dict):
            raise ContractError(f"{kind}.items[{i}] must be an object")
        try:
            item = item_cls.from_dict(raw)
        except ContractError as exc:
            raise ContractError(f"{kind}.items[{i}]: {exc}") from None
        item_campaign = getattr(item, "campaign_id", None)
        if item_campaign != campaign_id:
            raise ContractError(
                f"{kind}.items[{i}].campaign_id {item_campaign!r} "
                f"is not the message's {campaign_id!r}"
            )
        items.append(item)
    return tuple(items)


@dataclass(frozen=True, slots=True)
class Resolutions(_Record):
    """The Resolutions of one campaign that finished together (topic ``budget-requests``).

    The resolve stage sends one of these per campaign per batching window
    instead of one message per request: the budget agent then handles many
    settles in one Faust event. The items keep their completion order, and
    every item names ``campaign_id`` (the message key).
    """

    KIND: ClassVar[str] = "Resolutions"

    campaign_id: str
    items: tuple[Resolution, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "kind": "resolutions",
            "campaign_id": self.campaign_id,
            "items": [item.to_dict() for item in self.items],
        }

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Resolutions:
        campaign_id = _Reader(cls.KIND, obj).identifier("campaign_id")
        items = _campaign_items(cls.KIND, obj, Resolution, campaign_id, MAX_RESOLUTIONS_PER_MESSAGE)
        return cls(campaign_id=campaign_id, items=items)


@dataclass(frozen=True, slots=True)
class Decision(_Record):
    """The one answer to one ad request (topic ``ad-responses`` or the request's ``reply_to``).

    ``reason`` explains non-filled outcomes in words (the cap window that
    blocked, the budget that ran out, the IAB error); ``spend_micros`` is what
    the campaign was charged (0 unless filled).
    """

    KIND: ClassVar[str] = "Decision"

    request_id: str
    status: DecisionStatus
    user_id: str = ""
    campaign_id: str | None = None
    ad: AdPayload | None = None
    vast_error_code: int | None = None
    reason: str = ""
    spend_micros: int = 0
    hops: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    decided_at: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "request_id": self.request_id,
            "status": self.status.value,
            "user_id": self.user_id,
            "campaign_id": self.campaign_id,
            "ad": None if self.ad is None else self.ad.to_dict(),
            "vast_error_code": self.vast_error_code,
            "reason": self.reason,
            "spend_micros": self.spend_micros,
            "hops": self.hops,
            "timings_ms": self.timings_ms,
            "decided_at": self.decided_at,
        }

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Decision:
        r = _Reader(cls.KIND, obj)
        return cls(
            request_id=r.identifier("request_id"),
            status=r.enum("status", DecisionStatus),
            user_id=r.string("user_id", required=False),
            campaign_id=r.optional_identifier("campaign_id"),
            ad=_optional_ad(r, cls.KIND),
            vast_error_code=r.optional_integer("vast_error_code", minimum=100),
            reason=r.string("reason", required=False),
            spend_micros=r.integer("spend_micros", required=False, minimum=0),
            hops=r.integer("hops", required=False, minimum=0),
            timings_ms=r.number_map("timings_ms"),
            decided_at=r.integer("decided_at", required=False, minimum=0),
        )


def _optional_ad(r: _Reader, kind: str) -> AdPayload | None:
    value = r.obj.get("ad")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ContractError(f"{kind}.ad must be an object, got {_show(value)}")
    return AdPayload.from_dict(value, f"{kind}.ad")


@dataclass(frozen=True, slots=True)
class SpendEvent(_Record):
    """A budget adjustment from an edge (the seed's ``track_budget``), key ``campaign_id``.

    Applied at most once per ``event_id``. A negative amount is a refund.
    """

    KIND: ClassVar[str] = "SpendEvent"

    event_id: str
    campaign_id: str
    amount_micros: int
    timestamp: int
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "kind": "spend",
            "event_id": self.event_id,
            "campaign_id": self.campaign_id,
            "amount_micros": self.amount_micros,
            "timestamp": self.timestamp,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> SpendEvent:
        r = _Reader(cls.KIND, obj)
        return cls(
            event_id=r.identifier("event_id"),
            campaign_id=r.identifier("campaign_id"),
            amount_micros=r.integer("amount_micros"),
            timestamp=r.integer("timestamp", minimum=1),
            reason=r.string("reason", required=False),
        )


@dataclass(frozen=True, slots=True)
class DeadLetter(_Record):
    """An input that could not be processed (topic ``dlq``): the bytes, where they came from, why.

    ``original`` is base64 so any bytes, valid UTF-8 or not, survive intact.
    """

    KIND: ClassVar[str] = "DeadLetter"

    reason: str
    stage: str
    source_topic: str
    source_partition: int
    source_offset: int
    original: bytes
    original_key: bytes | None = None
    dead_at: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "reason": self.reason,
            "stage": self.stage,
            "source_topic": self.source_topic,
            "source_partition": self.source_partition,
            "source_offset": self.source_offset,
            "original_b64": base64.b64encode(self.original).decode("ascii"),
            "original_key_b64": None
            if self.original_key is None
            else base64.b64encode(self.original_key).decode("ascii"),
            "dead_at": self.dead_at,
        }

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> DeadLetter:
        r = _Reader(cls.KIND, obj)
        key_b64 = r.obj.get("original_key_b64")
        return cls(
            reason=r.string("reason"),
            stage=r.string("stage"),
            source_topic=r.string("source_topic"),
            source_partition=r.integer("source_partition", minimum=0),
            source_offset=r.integer("source_offset", minimum=0),
            original=_b64(r.string("original_b64"), "DeadLetter.original_b64"),
            original_key=None if key_b64 is None else _b64(key_b64, "DeadLetter.original_key_b64"),
            dead_at=r.integer("dead_at", required=False, minimum=0),
        )

    @classmethod
    def of(cls, message: Any, *, stage: str, reason: str, dead_at: int) -> DeadLetter:
        """The letter for a consumed ``message``: anything with ``topic``,
        ``partition``, ``offset``, ``key`` and ``value`` (an aiokafka
        ``ConsumerRecord``, a Faust ``Message``)."""
        return cls(
            reason=reason,
            stage=stage,
            source_topic=message.topic,
            source_partition=message.partition,
            source_offset=message.offset,
            original=message.value or b"",
            original_key=message.key,
            dead_at=dead_at,
        )


def _b64(text: Any, where: str) -> bytes:
    if not isinstance(text, str):
        raise ContractError(f"{where} must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise ContractError(f"{where} is not valid base64") from None


@dataclass(frozen=True, slots=True)
class Admitted(_Record):
    """admit → budget (topic ``budget-requests``, key ``campaign_id``).

    The request passed its caps for ``campaign_id``; a cap slot is reserved
    in the user's row until the budget agent commits or releases it.
    """

    KIND: ClassVar[str] = "Admitted"

    request: AdRequest
    campaign_id: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "kind": "admitted",
            "request": self.request.to_dict(),
            "campaign_id": self.campaign_id,
        }

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Admitted:
        r = _Reader(cls.KIND, obj)
        return cls(
            request=AdRequest.from_dict(_sub(r, "request")),
            campaign_id=r.identifier("campaign_id"),
        )


MAX_ADMITTED_PER_MESSAGE = 200


@dataclass(frozen=True, slots=True)
class AdmittedBatch(_Record):
    """The Admitted requests of one campaign that admit handled together (``budget-requests``).

    admit takes its input in batches and sends one of these per campaign (and,
    under exactly-once, source partition) instead of one message per request,
    so the budget agent reserves many requests in one Faust event and one row
    write. The items keep admit's processing order, and every item names
    ``campaign_id`` (the message key).
    """

    KIND: ClassVar[str] = "AdmittedBatch"

    campaign_id: str
    items: tuple[Admitted, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "kind": "admitted_batch",
            "campaign_id": self.campaign_id,
            "items": [item.to_dict() for item in self.items],
        }

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> AdmittedBatch:
        campaign_id = _Reader(cls.KIND, obj).identifier("campaign_id")
        items = _campaign_items(cls.KIND, obj, Admitted, campaign_id, MAX_ADMITTED_PER_MESSAGE)
        return cls(campaign_id=campaign_id, items=items)


def admitted_batch_bytes(campaign_id: str, encoded_items: list[bytes]) -> bytes:
    """``encode(AdmittedBatch(campaign_id, items))`` from the items' own encoded bytes.

    admit's handlers already produced each Admitted's canonical bytes; splicing
    them saves decoding and re-encoding every request on the hot path. The
    result is byte for byte the canonical encoding (sorted keys: ``campaign_id``,
    ``items``, ``kind``, ``v``), which a unit test checks.
    """
    return b"".join(
        (
            b'{"campaign_id":',
            json_codec.dumps(campaign_id),
            b',"items":[',
            b",".join(encoded_items),
            b'],"kind":"admitted_batch","v":',
            str(SCHEMA_VERSION).encode(),
            b"}",
        )
    )


@dataclass(frozen=True, slots=True)
class ResolveRequest(_Record):
    """budget → resolve, in the worker process (``agents/resolve.py``: no topic in between).

    The budget is reserved; ``vast_url`` is the campaign's tag template
    (macros still unfilled) and ``max_hops`` the wrapper limit for the chain.
    """

    KIND: ClassVar[str] = "ResolveRequest"

    request: AdRequest
    campaign_id: str
    vast_url: str
    max_price_micros: int
    currency: str
    max_hops: int = 5

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "kind": "resolve",
            "request": self.request.to_dict(),
            "campaign_id": self.campaign_id,
            "vast_url": self.vast_url,
            "max_price_micros": self.max_price_micros,
            "currency": self.currency,
            "max_hops": self.max_hops,
        }

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> ResolveRequest:
        r = _Reader(cls.KIND, obj)
        return cls(
            request=AdRequest.from_dict(_sub(r, "request")),
            campaign_id=r.identifier("campaign_id"),
            vast_url=r.string("vast_url"),
            max_price_micros=r.integer("max_price_micros", minimum=0),
            currency=r.string("currency"),
            max_hops=r.integer("max_hops", required=False, default=5, minimum=1),
        )


@dataclass(frozen=True, slots=True)
class FrequencySettle(_Record):
    """budget → admit (topic ``ad-requests``, key ``user_id``): commit or release a cap slot.

    The pipeline sends only releases (admission already commits); ``commit``
    stays valid so older logs replay.
    """

    KIND: ClassVar[str] = "FrequencySettle"

    request_id: str
    user_id: str
    action: str
    timestamp: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "kind": "frequency_settle",
            "request_id": self.request_id,
            "user_id": self.user_id,
            "action": self.action,
            "timestamp": self.timestamp,
        }

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> FrequencySettle:
        r = _Reader(cls.KIND, obj)
        action = r.string("action")
        if action not in ("commit", "release"):
            raise ContractError(f"FrequencySettle.action must be commit or release, got {action!r}")
        return cls(
            request_id=r.identifier("request_id"),
            user_id=r.identifier("user_id"),
            action=action,
            timestamp=r.integer("timestamp", minimum=0),
        )


@dataclass(frozen=True, slots=True)
class Tick(_Record):
    """A clock event for one partition: lets a stage expire reservations on idle rows.

    Ticks are written to the stage's input topic, so a replay sees the same
    ticks at the same offsets and rebuilds the same state.
    """

    KIND: ClassVar[str] = "Tick"

    timestamp: int
    prune: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "kind": "tick",
            "timestamp": self.timestamp,
            "prune": self.prune,
        }

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Tick:
        r = _Reader(cls.KIND, obj)
        return cls(timestamp=r.integer("timestamp", minimum=0), prune=obj.get("prune") is True)


@dataclass(frozen=True, slots=True)
class ExpireCommand(_Record):
    """budget → budget (topic ``budget-requests``, key campaign): release a stuck reservation.

    Written by the budget agent itself when a reservation waited longer than
    the TTL in processing time; applied when read back, so the decision is in
    the log and a replay applies it at the same place.
    """

    KIND: ClassVar[str] = "ExpireCommand"

    campaign_id: str
    request_id: str
    timestamp: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "kind": "expire",
            "campaign_id": self.campaign_id,
            "request_id": self.request_id,
            "timestamp": self.timestamp,
        }

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> ExpireCommand:
        r = _Reader(cls.KIND, obj)
        return cls(
            campaign_id=r.identifier("campaign_id"),
            request_id=r.identifier("request_id"),
            timestamp=r.integer("timestamp", minimum=0),
        )


@dataclass(frozen=True, slots=True)
class CampaignStatus(_Record):
    """budget → admit (every ``ad-requests`` partition): a campaign is out of budget, or back."""

    KIND: ClassVar[str] = "CampaignStatus"

    campaign_id: str
    exhausted: bool
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "kind": "campaign_status",
            "campaign_id": self.campaign_id,
            "exhausted": self.exhausted,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> CampaignStatus:
        r = _Reader(cls.KIND, obj)
        exhausted = obj.get("exhausted")
        if not isinstance(exhausted, bool):
            raise ContractError("CampaignStatus.exhausted must be true or false")
        return cls(
            campaign_id=r.identifier("campaign_id"),
            exhausted=exhausted,
            reason=r.string("reason", required=False),
        )


def _sub(r: _Reader, name: str) -> dict[str, Any]:
    value = r.obj.get(name)
    if not isinstance(value, dict):
        raise ContractError(f"{r.kind}.{name} must be an object, got {_show(value)}")
    return value


def request_id_in(obj: object) -> str | None:
    """The request id a decoded topology message carries, top level or in its ``request``."""
    if not isinstance(obj, dict):
        return None
    inner = obj.get("request")
    rid = obj.get("request_id") or (inner.get("request_id") if isinstance(inner, dict) else None)
    return rid if isinstance(rid, str) else None


def unbatched(obj: object) -> list[tuple[str, dict[str, Any]]]:
    """Each request-level record a decoded ``budget-requests`` message carries, with its kind.

    A batch message (``resolutions``, ``admitted_batch``) gives one
    ``("resolution", item)`` or ``("admitted", item)`` per item; any other
    JSON object is one ``(kind, obj)`` (kind ``""`` if it has none).
    Tools that follow requests through the topics read both forms with it.
    """
    if not isinstance(obj, dict):
        return []
    kind = obj.get("kind")
    single = {"resolutions": "resolution", "admitted_batch": "admitted"}.get(str(kind))
    if single is None:
        return [(kind if isinstance(kind, str) else "", obj)]
    items = obj.get("items")
    if not isinstance(items, list):
        return []
    return [(single, item) for item in items if isinstance(item, dict)]


def resolutions_in(obj: object) -> list[dict[str, Any]]:
    """The Resolution dicts a decoded ``budget-requests`` message carries (none if another kind)."""
    return [item for kind, item in unbatched(obj) if kind == "resolution"]


def kind_of(obj: dict[str, Any]) -> str | None:
    """The ``kind`` field of a parsed record (None if absent or not a string)."""
    kind = obj.get("kind")
    return kind if isinstance(kind, str) else None
