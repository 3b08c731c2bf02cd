"""Wire contracts: golden files pin the bytes; bad input gets a precise reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streams.records import (
    Admitted,
    AdmittedBatch,
    AdPayload,
    AdRequest,
    ContractError,
    DeadLetter,
    Decision,
    DecisionStatus,
    Resolution,
    Resolutions,
    SpendEvent,
    admitted_batch_bytes,
    decode,
    encode,
    request_id_in,
    resolutions_in,
    unbatched,
)

GOLDEN = Path(__file__).resolve().parent.parent / "golden"

AD = AdPayload(
    ad_id="ad-7",
    media_files=[{"url": "https://cdn.example/a.mp4", "type": "video/mp4", "width": 640}],
    impression_urls=["https://w.example/imp", "https://i.example/imp"],
    error_urls=["https://w.example/err?c=[ERRORCODE]"],
    tracking={"start": ["https://i.example/start"], "complete": ["https://i.example/c"]},
    click_through="https://advertiser.example/",
    click_tracking=["https://w.example/click"],
    price_micros=2_500_000,
    currency="USD",
    vast_xml='<VAST version="4.2"/>',
)

FILLED_RESOLUTION = Resolution(
    request_id="req-1",
    status=DecisionStatus.FILLED,
    campaign_id="camp-1",
    ad=AD,
    hops=2,
    timings_ms={"hop1": 12.5, "hop2": 8.0},
    resolved_at=1_764_000_000_050,
)

CANONICAL = {
    "ad_request": AdRequest(
        request_id="req-1",
        user_id="user-42",
        timestamp=1_764_000_000_000,
        correlator="c-1",
        cachebusting="cb-1",
        cookies={"uid": "user-42"},
        params={"placement": "pre-roll", "campaign_id": "camp-1", "device_ip": "203.0.113.9"},
        reply_to="edge-1.replies",
        extra={"edge_version": "2.3"},
    ),
    "resolution": FILLED_RESOLUTION,
    "resolutions": Resolutions(
        campaign_id="camp-1",
        items=(
            FILLED_RESOLUTION,
            Resolution(
                request_id="req-3",
                status=DecisionStatus.NO_FILL,
                campaign_id="camp-1",
                vast_error_code=303,
                resolved_at=1_764_000_000_052,
            ),
        ),
    ),
    "admitted_batch": AdmittedBatch(
        campaign_id="camp-1",
        items=(
            Admitted(
                request=AdRequest(
                    request_id="req-1", user_id="user-42", timestamp=1_764_000_000_000
                ),
                campaign_id="camp-1",
            ),
            Admitted(
                request=AdRequest(
                    request_id="req-2",
                    user_id="user-7",
                    timestamp=1_764_000_000_004,
                    reply_to="edge-1.replies",
                ),
                campaign_id="camp-1",
            ),
        ),
    ),
    "decision": Decision(
        request_id="req-1",
        status=DecisionStatus.CAPPED,
        user_id="user-42",
        campaign_id="camp-1",
        reason="campaign camp-1 cap 5 per 1h reached",
        decided_at=1_764_000_000_001,
    ),
    "decision_filled": Decision(
        request_id="req-2",
        status=DecisionStatus.FILLED,
        user_id="user-42",
        campaign_id="camp-1",
        ad=AD,
        spend_micros=2_500_000,
        hops=2,
        timings_ms={"total": 21.0},
        decided_at=1_764_000_000_060,
    ),
    "spend_event": SpendEvent(
        event_id="ev-1", campaign_id="camp-1", amount_micros=2_500_000, timestamp=1_764_000_000_000
    ),
    "dead_letter": DeadLetter(
        reason="not JSON: Expecting value at line 1 column 1",
        stage="admit",
        source_topic="xsp.ad-requests",
        source_partition=3,
        source_offset=17,
        original=b"\xffnot json",
        original_key=b"user-1",
        dead_at=1_764_000_000_000,
    ),
}


@pytest.mark.parametrize("name", sorted(CANONICAL))
def test_encoding_matches_golden_file(name: str) -> None:
    record = CANONICAL[name]
    golden = (GOLDEN / f"{name}.v1.json").read_bytes().rstrip(b"\n")
    assert encode(record) == golden


@pytest.mark.parametrize("name", sorted(CANONICAL))
def test_golden_file_decodes_to_the_record(name: str) -> None:
    record = CANONICAL[name]
    golden = (GOLDEN / f"{name}.v1.json").read_bytes()
    assert decode(type(record), golden) == record


def test_unknown_fields_survive_a_round_trip() -> None:
    raw = b'{"request_id":"r","user_id":"u","timestamp":5,"future_field":{"x":1}}'
    request = decode(AdRequest, raw)
    assert request.extra == {"future_field": {"x": 1}}
    assert json.loads(encode(request))["future_field"] == {"x": 1}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[1]", "expected a JSON object, got list"),
        (b'{"user_id":"u","timestamp":1}', "AdRequest.request_id is required"),
        (
            b'{"request_id":"","user_id":"u","timestamp":1}',
            "AdRequest.request_id must not be empty",
        ),
        (b'{"request_id":"r","timestamp":1}', "AdRequest.user_id is required"),
        (b'{"request_id":"r","user_id":"u"}', "AdRequest.timestamp is required"),
        (
            b'{"request_id":"r","user_id":"u","timestamp":"1"}',
            'timestamp must be an integer, got "1"',
        ),
        (
            b'{"request_id":"r","user_id":"u","timestamp":true}',
            "timestamp must be an integer, got true",
        ),
        (
            b'{"request_id":"r","user_id":"u","timestamp":1.5}',
            "timestamp must be an integer, got 1.5",
        ),
        (b'{"request_id":"r","user_id":"u","timestamp":0}', "timestamp must be >= 1, got 0"),
        (b'{"request_id":7,"user_id":"u","timestamp":1}', "request_id must be a string, got 7"),
        (b'{"request_id":"r","user_id":"u","timestamp":1,"cookies":{"a":1}}', "cookies.a must be"),
        (b'{"request_id":"r","user_id":"u","timestamp":1,"params":[]}', "params must be an object"),
        (
            b'{"request_id":"r","user_id":"u","timestamp":1,"params":{"campaign_id":3}}',
            "params.campaign_id must be a string",
        ),
        (b'{"v":2,"request_id":"r","user_id":"u","timestamp":1}', "newer than this worker"),
    ],
)
def test_invalid_ad_requests_name_the_problem(raw: bytes, reason: str) -> None:
    with pytest.raises(ContractError) as error:
        decode(AdRequest, raw)
    assert reason in str(error.value)


def test_decision_rejects_unknown_status() -> None:
    with pytest.raises(ContractError, match="status must be one of filled, no_fill"):
        decode(Decision, b'{"request_id":"r","status":"maybe"}')


def test_dead_letter_keeps_arbitrary_bytes() -> None:
    original = bytes(range(256))
    letter = DeadLetter("why", "admit", "t", 0, 1, original)
    assert decode(DeadLetter, encode(letter)).original == original


def test_spend_event_allows_refunds_but_needs_integers() -> None:
    refund = decode(
        SpendEvent, b'{"event_id":"e","campaign_id":"c","amount_micros":-5,"timestamp":1}'
    )
    assert refund.amount_micros == -5
    with pytest.raises(ContractError, match="amount_micros must be an integer"):
        decode(SpendEvent, b'{"event_id":"e","campaign_id":"c","amount_micros":2.5,"timestamp":1}')


def _resolutions(items: object, campaign_id: str = "camp-1") -> bytes:
    return json.dumps({"kind": "resolutions", "campaign_id": campaign_id, "items": items}).encode()


def _item(rid: str, campaign_id: str = "camp-1") -> dict[str, object]:
    return {"request_id": rid, "status": "no_fill", "campaign_id": campaign_id}


@pytest.mark.parametrize(
    ("items", "reason"),
    [
        ([], "items must be a non-empty list"),
        ({"a": 1}, "items must be a non-empty list"),
        (["x"], r"items\[0\] must be an object"),
        ([_item("r1"), {"status": "filled"}], r"items\[1\]: Resolution.request_id is required"),
        ([_item("r1"), _item("r2", "camp-2")], r"items\[1\].campaign_id 'camp-2' is not"),
        ([_item(f"r{i}") for i in range(201)], "201 entries"),
    ],
)
def test_a_bad_resolutions_message_names_the_item(items: object, reason: str) -> None:
    with pytest.raises(ContractError, match=reason):
        decode(Resolutions, _resolutions(items))


def test_admitted_batch_bytes_are_the_canonical_encoding() -> None:
    batch = CANONICAL["admitted_batch"]
    assert isinstance(batch, AdmittedBatch)
    spliced = admitted_batch_bytes(batch.campaign_id, [encode(item) for item in batch.items])
    assert spliced == encode(batch)
    assert decode(AdmittedBatch, spliced) == batch


def _admitted(rid: str, campaign_id: str = "camp-1") -> dict[str, object]:
    request = {"request_id": rid, "user_id": "u", "timestamp": 1}
    return {"kind": "admitted", "request": request, "campaign_id": campaign_id}


@pytest.mark.parametrize(
    ("items", "reason"),
    [
        ([], "AdmittedBatch.items must be a non-empty list"),
        ([_admitted("r1"), {"campaign_id": "camp-1"}], r"items\[1\]: Admitted.request must be"),
        ([_admitted("r1"), _admitted("r2", "camp-2")], r"items\[1\].campaign_id 'camp-2' is not"),
        ([_admitted(f"r{i}") for i in range(201)], "201 entries"),
    ],
)
def test_a_bad_admitted_batch_names_the_item(items: object, reason: str) -> None:
    raw = {"kind": "admitted_batch", "campaign_id": "camp-1", "items": items}
    with pytest.raises(ContractError, match=reason):
        decode(AdmittedBatch, json.dumps(raw).encode())


def test_unbatched_gives_every_request_level_record_with_its_kind() -> None:
    admitted = json.loads(encode(CANONICAL["admitted_batch"]))
    resolutions = json.loads(encode(CANONICAL["resolutions"]))
    request = json.loads(encode(CANONICAL["ad_request"]))
    assert [(k, request_id_in(x)) for k, x in unbatched(admitted)] == [
        ("admitted", "req-1"),
        ("admitted", "req-2"),
    ]
    assert [(k, x["request_id"]) for k, x in unbatched(resolutions)] == [
        ("resolution", "req-1"),
        ("resolution", "req-3"),
    ]
    assert unbatched(request) == [("", request)]
    assert unbatched({"kind": "admitted_batch", "items": "nope"}) == []
    assert unbatched(["not", "a", "dict"]) == []


def test_resolutions_in_reads_both_message_forms() -> None:
    single = json.loads(encode(CANONICAL["resolution"]))
    batch = json.loads(encode(CANONICAL["resolutions"]))
    assert [r["request_id"] for r in resolutions_in(single)] == ["req-1"]
    assert [r["request_id"] for r in resolutions_in(batch)] == ["req-1", "req-3"]
    assert resolutions_in(json.loads(encode(CANONICAL["decision"]))) == []
    assert resolutions_in(["not", "a", "dict"]) == []
