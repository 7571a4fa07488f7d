"""Builders of persistence ``Event`` messages, one per event kind, filled with plausible values
that a test overrides where it matters."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from uuid import uuid4

from google.protobuf.struct_pb2 import Struct
from rpi.inspection.v1 import inspection_pb2
from rpi.persistence.v1 import persistence_pb2


def new_id() -> str:
    return str(uuid4())


def _event(
    inspection_id: str, occur_time: datetime | None, event_id: str | None
) -> persistence_pb2.Event:
    event = persistence_pb2.Event(event_id=event_id or new_id(), inspection_id=inspection_id)
    event.occur_time.FromDatetime(occur_time or datetime.now(UTC))
    return event


def request_event(
    inspection_id: str,
    *,
    shipping_id: str,
    previous_inspection_id: str = "",
    product_name: str = "Blue cotton T-shirt",
    occur_time: datetime | None = None,
    event_id: str | None = None,
) -> persistence_pb2.Event:
    event = _event(inspection_id, occur_time, event_id)
    event.request_received.CopyFrom(
        persistence_pb2.RequestReceived(
            shipping_id=shipping_id,
            product_id="SKU-1",
            product_name=product_name,
            previous_inspection_id=previous_inspection_id,
            questions=[
                inspection_pb2.Question(
                    type="Colour", label="Is the colour blue?", value_to_check="Yes", mandatory=True
                )
            ],
            legacy_questions=False,
            images=[
                persistence_pb2.ImageRecord(
                    role=persistence_pb2.IMAGE_ROLE_REFERENCE,
                    index=0,
                    uri="https://cdn.example.com/ref.jpg",
                    fetched_uri="https://cdn.example.com/ref.jpg",
                    sha256="ab" * 32,
                    size_bytes=123_456,
                    width=800,
                    height=600,
                    format="JPEG",
                    tiles=1,
                ),
                persistence_pb2.ImageRecord(
                    role=persistence_pb2.IMAGE_ROLE_PICKUP,
                    index=0,
                    inline=True,
                    sha256="cd" * 32,
                    size_bytes=654_321,
                    width=1200,
                    height=1600,
                    format="PNG",
                    tiles=3,
                ),
            ],
            method="Inspect",
            # Both forms, as the inference service sends them.
            inspect_method=persistence_pb2.INSPECT_METHOD_INSPECT,
        )
    )
    return event


def attempt_event(
    inspection_id: str,
    attempt_number: int = 1,
    *,
    valid: bool = True,
    raw_output: str = '{"verification_results": []}',
    validation_errors: Sequence[str] = (),
    occur_time: datetime | None = None,
    event_id: str | None = None,
) -> persistence_pb2.Event:
    event = _event(inspection_id, occur_time, event_id)
    parsed = Struct()
    parsed.update({"verification_results": [{"Label": "Is the colour blue?", "Result": "Yes"}]})
    attempt = persistence_pb2.AttemptRecorded(
        attempt_number=attempt_number,
        prompt="<image> Compare the images.",
        prompt_sha256="ef" * 32,
        template_version="v1",
        template_sha256="01" * 32,
        raw_output=raw_output,
        parsed_output=parsed,
        valid=valid,
        validation_errors=list(validation_errors),
        prompt_tokens=812,
        completion_tokens=145,
        constrained=True,
        model_name="InternVL2.5-1B",
        model_revision="test",
    )
    attempt.duration.FromMilliseconds(1234)
    event.attempt_recorded.CopyFrom(attempt)
    return event


def result_event(
    inspection_id: str,
    *,
    shipping_id: str,
    previous_inspection_id: str = "",
    decision: inspection_pb2.Decision.ValueType = inspection_pb2.DECISION_PICK,
    occur_time: datetime | None = None,
    event_id: str | None = None,
) -> persistence_pb2.Event:
    event = _event(inspection_id, occur_time, event_id)
    inspection = inspection_pb2.Inspection(
        inspection_id=inspection_id,
        previous_inspection_id=previous_inspection_id,
        shipping_id=shipping_id,
        product_id="SKU-1",
        decision=decision,
        model_recommendation=inspection_pb2.RECOMMENDATION_ACCEPT,
        match_score=87.5,
        answers=[
            inspection_pb2.Answer(
                label="Is the colour blue?",
                type="Colour",
                answer="Yes",
                value_to_check="Yes",
                mandatory=True,
                evidence="The shirt is blue in every photo.",
                confidence=91,
                source=inspection_pb2.ANSWER_SOURCE_MODEL,
            )
        ],
        analysis=inspection_pb2.Analysis(
            pickup_description="A blue T-shirt.",
            reference_description="A blue T-shirt.",
            comparison="Same item.",
        ),
        attempts=1,
        model=inspection_pb2.ModelInfo(name="InternVL2.5-1B", revision="test"),
    )
    inspection.create_time.FromDatetime(occur_time or datetime.now(UTC))
    event.result_recorded.CopyFrom(persistence_pb2.ResultRecorded(inspection=inspection))
    return event


def failure_event(
    inspection_id: str,
    *,
    reason: str = "IMAGE_FETCH_FAILED",
    stage: str = "fetch",
    occur_time: datetime | None = None,
    event_id: str | None = None,
) -> persistence_pb2.Event:
    event = _event(inspection_id, occur_time, event_id)
    event.failure_recorded.CopyFrom(
        persistence_pb2.FailureRecorded(
            stage=stage,
            reason=reason,
            message="could not fetch an image",
            status_code="UNAVAILABLE",
            # Both forms, as the inference service sends them (UNSPECIFIED for an unknown one).
            failure_stage=getattr(
                persistence_pb2,
                f"FAILURE_STAGE_{stage.upper()}",
                persistence_pb2.FAILURE_STAGE_UNSPECIFIED,
            ),
        )
    )
    return event
