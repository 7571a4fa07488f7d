"""Converters to and from the replaced JSON API, table-driven."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from rpi.inspection.v1 import inspection_pb2

from clients.python.rpi_client import (
    LegacyConversionError,
    inspection_to_legacy_response,
    legacy_request_to_proto,
)

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF-bytes\x00\x01\xfe"
B64 = base64.b64encode(JPEG).decode()
QUESTION = json.dumps(
    {
        "Question": [
            {"Type": "Brand", "Label": "Brand?", "ValueToCheck": "Acme", "IsMandatory": "Yes"}
        ]
    }
)


def old_request(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "pickupproductimage": ["https://xbeestest.s3.amazonaws.com/ref1.jpg"],
        "skupickdone": [B64],
        "productname": "Acme kettle",
        "question": QUESTION,
        "shippingid": "SHIP-1",
        "productid": "PROD-1",
        "uuid": "uuid-1",
        "previousuuid": "uuid-0",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not ...}


@pytest.mark.parametrize(
    ("overrides", "pickups"),
    [
        ({}, [inspection_pb2.Image(content=JPEG)]),
        (
            {"skupickdone": ["https://agent.example.com/p.jpg", B64]},
            [
                inspection_pb2.Image(uri="https://agent.example.com/p.jpg"),
                inspection_pb2.Image(content=JPEG),
            ],
        ),
        ({"skupickdone": [f"data:image/jpeg;base64,{B64}"]}, [inspection_pb2.Image(content=JPEG)]),
        (
            {"skupickdone": [B64.rstrip("=")[:20] + "\n" + B64.rstrip("=")[20:]]},
            [inspection_pb2.Image(content=JPEG)],
        ),
        (
            {"skupickdone": [base64.urlsafe_b64encode(JPEG).decode()]},
            [inspection_pb2.Image(content=JPEG)],
        ),
    ],
)
def test_legacy_request_pickup_images(
    overrides: dict[str, Any], pickups: list[inspection_pb2.Image]
) -> None:
    request = legacy_request_to_proto(old_request(**overrides))
    assert list(request.pickup_images) == pickups


def test_legacy_request_fields() -> None:
    request = legacy_request_to_proto(old_request())
    assert request == inspection_pb2.InspectRequest(
        inspection_id="uuid-1",
        previous_inspection_id="uuid-0",
        shipping_id="SHIP-1",
        product_id="PROD-1",
        product_name="Acme kettle",
        reference_images=[inspection_pb2.Image(uri="https://xbeestest.s3.amazonaws.com/ref1.jpg")],
        pickup_images=[inspection_pb2.Image(content=JPEG)],
        legacy_questions_json=QUESTION,
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"uuid": None, "previousuuid": ..., "productid": ...}, ("", "", "")),
        ({"shippingid": 12345}, ("uuid-1", "uuid-0", "PROD-1")),
    ],
)
def test_legacy_request_optional_fields(
    overrides: dict[str, Any], expected: tuple[str, str, str]
) -> None:
    request = legacy_request_to_proto(old_request(**overrides))
    assert (request.inspection_id, request.previous_inspection_id, request.product_id) == expected
    assert request.shipping_id in {"SHIP-1", "12345"}


def test_legacy_question_object_is_reencoded() -> None:
    question = {"Question": [{"Type": "Seal", "Label": "Sealed?"}]}
    request = legacy_request_to_proto(old_request(question=question))
    assert json.loads(request.legacy_questions_json) == question


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"shippingid": ...}, "missing required fields: shippingid"),
        ({"skupickdone": []}, "skupickdone"),
        ({"skupickdone": ["not base64 at all!"]}, r"skupickdone\[0\]: neither"),
        ({"skupickdone": [""]}, r"skupickdone\[0\]"),
        ({"pickupproductimage": ["ref.jpg"]}, r"pickupproductimage\[0\] must be an http"),
        ({"pickupproductimage": [1]}, "list of strings"),
    ],
)
def test_legacy_request_errors(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(LegacyConversionError, match=message):
        legacy_request_to_proto(old_request(**overrides))


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromTimedelta(timedelta(seconds=seconds))
    return value


def inspection(decision: int, created: datetime, score: float = 87.0) -> inspection_pb2.Inspection:
    return inspection_pb2.Inspection(
        inspection_id="uuid-1",
        shipping_id="SHIP-1",
        product_id="PROD-1",
        decision=decision,  # type: ignore[arg-type]
        match_score=score,
        answers=[
            inspection_pb2.Answer(
                type="Brand",
                label="Brand?",
                answer="Acme",
                value_to_check="Acme",
                mandatory=True,
                evidence="logo visible",
                confidence=93,
                retake_image=False,
            ),
            inspection_pb2.Answer(
                type="Damage",
                label="Damaged?",
                answer="No",
                value_to_check="No",
                mandatory=False,
                evidence="",
                confidence=40,
                retake_image=True,
            ),
        ],
        analysis=inspection_pb2.Analysis(
            pickup_description="kettle", reference_description="kettle", comparison="same"
        ),
        timings=inspection_pb2.StageTimings(total=_duration(2.3456)),
        create_time=_timestamp(created),
    )


@pytest.mark.parametrize(
    ("decision", "created", "ai_decision", "status_code", "timestamp"),
    [
        (
            inspection_pb2.DECISION_PICK,
            datetime(2025, 1, 1, 20, 0, 0, tzinfo=UTC),
            "Pick",
            200,
            "2025-01-02 01:30:00",
        ),
        (
            inspection_pb2.DECISION_NOT_PICK,
            datetime(2025, 6, 30, 18, 29, 59, tzinfo=UTC),
            "Not Pick",
            202,
            "2025-06-30 23:59:59",
        ),
        (
            inspection_pb2.DECISION_PICK,
            datetime(2024, 2, 29, 0, 0, 0, tzinfo=UTC),
            "Pick",
            200,
            "2024-02-29 05:30:00",
        ),
    ],
)
def test_legacy_response(
    decision: int, created: datetime, ai_decision: str, status_code: int, timestamp: str
) -> None:
    response = inspection_to_legacy_response(inspection(decision, created))
    assert response == {
        "shippingid": "SHIP-1",
        "uuid": "uuid-1",
        "product_id": "PROD-1",
        "processing_time_ai": 2.346,
        "Question": [
            {
                "Type": "Brand",
                "Label": "Brand?",
                "answer": "Acme",
                "ValueToCheck": "Acme",
                "IsMandatory": "Yes",
                "Evidence": "logo visible",
                "Confidence": 93,
                "isRetakeImage": "false",
            },
            {
                "Type": "Damage",
                "Label": "Damaged?",
                "answer": "No",
                "ValueToCheck": "No",
                "IsMandatory": "No",
                "Evidence": "",
                "Confidence": 40,
                "isRetakeImage": "true",
            },
        ],
        "ai_decision": ai_decision,
        "finalAction": ai_decision,
        "ai_match_score": 87,
        "analysis": {
            "test_product_description": "kettle",
            "reference_product_description": "kettle",
            "comparison": "same",
        },
        "status": "success",
        "StatusCode": status_code,
        "total_time": 2.346,
        "timestamp": timestamp,
    }
    json.dumps(response)  # the old API returned it as a JSON body


def test_legacy_response_options() -> None:
    created = datetime(2025, 1, 1, tzinfo=UTC)
    source = inspection(inspection_pb2.DECISION_PICK, created, score=72.456)
    response = inspection_to_legacy_response(
        source, total_time_s=3.21049, status="ok", final_action="Manual"
    )
    assert (response["total_time"], response["processing_time_ai"]) == (3.21, 2.346)
    assert (response["status"], response["finalAction"], response["ai_decision"]) == (
        "ok",
        "Manual",
        "Pick",
    )
    assert response["ai_match_score"] == 72.46


@pytest.mark.parametrize(
    ("decision", "final_action"),
    [
        (inspection_pb2.DECISION_RETAKE_IMAGES, "Retake Images"),
        (inspection_pb2.DECISION_NEEDS_REVIEW, "Needs Review"),
    ],
)
def test_policy_outcomes_are_not_pick_for_the_old_contract(
    decision: int, final_action: str
) -> None:
    response = inspection_to_legacy_response(inspection(decision, datetime(2025, 1, 1, tzinfo=UTC)))
    assert (response["ai_decision"], response["StatusCode"], response["finalAction"]) == (
        "Not Pick",
        202,
        final_action,
    )


def test_legacy_response_needs_a_decision() -> None:
    created = datetime(2025, 1, 1, tzinfo=UTC)
    with pytest.raises(LegacyConversionError, match="no decision"):
        inspection_to_legacy_response(inspection(inspection_pb2.DECISION_UNSPECIFIED, created))


def test_round_trip_request_through_proto_json() -> None:
    """The converted request survives proto JSON, as legacy-convert prints it."""
    from google.protobuf import json_format

    request = legacy_request_to_proto(old_request())
    reparsed = json_format.Parse(
        json_format.MessageToJson(request), inspection_pb2.InspectRequest()
    )
    assert reparsed == request
