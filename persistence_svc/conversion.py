"""Maps RecordEvents protobuf messages to repository rows, validating what comes in (the read
responses are built in responses.py).

No grpc here: the servicer turns the InvalidArgumentError raised below into a status.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from google.protobuf import json_format
from google.protobuf.message import Message
from rpi.inspection.v1 import inspection_pb2
from rpi.persistence.v1 import persistence_pb2

from persistence_svc.errors import FieldViolation, InvalidArgumentError
from persistence_svc.records import (
    AttemptData,
    EventPayload,
    EventRecord,
    FailureData,
    RequestData,
    ResultData,
)

# Enough to fix a batch; more would only bloat the error.
_MAX_VIOLATIONS = 50

# The enum fields beside the old strings, which stay what is stored: "fetch" <->
# FAILURE_STAGE_FETCH, "InspectStream" <-> INSPECT_METHOD_INSPECT_STREAM. A producer may send
# either form; readers get both.
STAGES = {
    name.removeprefix("FAILURE_STAGE_").lower(): persistence_pb2.FailureStage.Value(name)
    for name in persistence_pb2.FailureStage.keys()  # noqa: SIM118 - an enum wrapper, not a dict
    if name != "FAILURE_STAGE_UNSPECIFIED"
}
_STAGE_NAMES = {value: name for name, value in STAGES.items()}
METHODS = {
    "Inspect": persistence_pb2.INSPECT_METHOD_INSPECT,
    "InspectStream": persistence_pb2.INSPECT_METHOD_INSPECT_STREAM,
}
_METHOD_NAMES = {value: name for name, value in METHODS.items()}


# --- helpers ---------------------------------------------------------------------------------


def clean_text(value: str) -> str:
    """Postgres text and jsonb cannot hold NUL; a model can emit one. Replacing it keeps such an
    event storable instead of failing its batch forever."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _clean_json(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): _clean_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        # JSON has no NaN/Infinity and jsonb rejects them.
        return None
    return value


def message_to_json(message: Message) -> str:
    as_dict = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return json.dumps(_clean_json(as_dict), ensure_ascii=False, separators=(",", ":"))


def _messages_to_json(messages: Sequence[Message]) -> str:
    items = [
        _clean_json(json_format.MessageToDict(m, preserving_proto_field_name=True))
        for m in messages
    ]
    return json.dumps(items, ensure_ascii=False, separators=(",", ":"))


def _enum_name(enum_type: Any, value: int) -> str:
    try:
        return str(enum_type.Name(value))
    except ValueError:
        return str(value)


def parse_uuid(value: str, field: str, violations: list[FieldViolation]) -> UUID | None:
    try:
        return UUID(value)
    except ValueError:
        violations.append(FieldViolation(field, "must be a UUID"))
        return None


def parse_optional_uuid(value: str, field: str, violations: list[FieldViolation]) -> UUID | None:
    return parse_uuid(value, field, violations) if value else None


# --- RecordEvents ----------------------------------------------------------------------------


def events_from_proto(
    request: persistence_pb2.RecordEventsRequest, max_events: int
) -> list[EventRecord]:
    """Validated rows for every event of ``request``; InvalidArgumentError naming each bad
    field otherwise (the whole batch is rejected, nothing is recorded)."""
    if len(request.events) > max_events:
        raise InvalidArgumentError(
            f"too many events: {len(request.events)} > {max_events}",
            [FieldViolation("events", f"at most {max_events} events per call")],
        )
    violations: list[FieldViolation] = []
    records: list[EventRecord] = []
    for index, event in enumerate(request.events):
        record = _event_from_proto(event, f"events[{index}]", violations)
        if record is not None:
            records.append(record)
        if len(violations) >= _MAX_VIOLATIONS:
            break
    if violations:
        raise InvalidArgumentError(
            f"{len(violations)} invalid field(s) in events", violations[:_MAX_VIOLATIONS]
        )
    return records


def _event_from_proto(
    event: persistence_pb2.Event, path: str, violations: list[FieldViolation]
) -> EventRecord | None:
    before = len(violations)
    event_id = parse_uuid(event.event_id, f"{path}.event_id", violations)
    inspection_id = parse_uuid(event.inspection_id, f"{path}.inspection_id", violations)
    occur_time: datetime | None = None
    if event.HasField("occur_time"):
        try:
            occur_time = event.occur_time.ToDatetime(tzinfo=UTC)
        except (ValueError, OverflowError):
            violations.append(FieldViolation(f"{path}.occur_time", "not a valid timestamp"))
    kind = event.WhichOneof("payload")
    payload: EventPayload | None = None
    if kind is None:
        violations.append(
            FieldViolation(
                f"{path}.payload",
                "one of request_received, attempt_recorded, result_recorded, "
                "failure_recorded is required",
            )
        )
    elif kind == "request_received":
        payload = _request_from_proto(
            event.request_received, f"{path}.request_received", inspection_id, violations
        )
    elif kind == "attempt_recorded":
        payload = _attempt_from_proto(
            event.attempt_recorded, f"{path}.attempt_recorded", violations
        )
    elif kind == "result_recorded":
        payload = _result_from_proto(
            event.result_recorded, f"{path}.result_recorded", inspection_id, violations
        )
    else:
        failure = event.failure_recorded
        payload = FailureData(
            stage=clean_text(failure.stage) or _STAGE_NAMES.get(failure.failure_stage, ""),
            reason=clean_text(failure.reason),
            message=clean_text(failure.message),
            status_code=clean_text(failure.status_code),
        )
    if len(violations) > before or event_id is None or inspection_id is None or payload is None:
        return None
    return EventRecord(
        event_id=event_id, inspection_id=inspection_id, occur_time=occur_time, payload=payload
    )


def _previous_id(
    value: str, field: str, inspection_id: UUID | None, violations: list[FieldViolation]
) -> UUID | None:
    previous = parse_optional_uuid(value, field, violations)
    if previous is not None and previous == inspection_id:
        violations.append(FieldViolation(field, "an inspection cannot be its own previous one"))
    return previous


def _request_from_proto(
    req: persistence_pb2.RequestReceived,
    path: str,
    inspection_id: UUID | None,
    violations: list[FieldViolation],
) -> RequestData | None:
    if not req.shipping_id:
        violations.append(FieldViolation(f"{path}.shipping_id", "is required"))
    previous = _previous_id(
        req.previous_inspection_id, f"{path}.previous_inspection_id", inspection_id, violations
    )
    return RequestData(
        shipping_id=clean_text(req.shipping_id),
        product_id=clean_text(req.product_id),
        product_name=clean_text(req.product_name),
        previous_inspection_id=previous,
        method=clean_text(req.method) or _METHOD_NAMES.get(req.inspect_method, ""),
        legacy_questions=req.legacy_questions,
        questions_json=_messages_to_json(req.questions),
        images_json=_messages_to_json([_without_inline_data(image) for image in req.images]),
        caller=clean_text(req.caller),
        pickup_hashes=tuple(
            (image.index, image.perceptual_hash)
            for image in req.images
            if image.role == persistence_pb2.IMAGE_ROLE_PICKUP and image.HasField("perceptual_hash")
        ),
        vendor_id=clean_text(req.vendor_id),
    )


def _without_inline_data(image: persistence_pb2.ImageRecord) -> persistence_pb2.ImageRecord:
    """Image bytes are never stored, including bytes smuggled in as a data: URI."""
    if not any(u[:5].lower() == "data:" for u in (image.uri, image.fetched_uri)):
        return image
    copy = persistence_pb2.ImageRecord()
    copy.CopyFrom(image)
    for name in ("uri", "fetched_uri"):
        if getattr(copy, name)[:5].lower() == "data:":
            setattr(copy, name, "data:<redacted>")
    return copy


def _attempt_from_proto(
    attempt: persistence_pb2.AttemptRecorded, path: str, violations: list[FieldViolation]
) -> AttemptData | None:
    if attempt.attempt_number < 1:
        violations.append(FieldViolation(f"{path}.attempt_number", "must be at least 1"))
        return None
    parsed = message_to_json(attempt.parsed_output) if attempt.HasField("parsed_output") else None
    return AttemptData(
        attempt_number=attempt.attempt_number,
        prompt=clean_text(attempt.prompt),
        prompt_sha256=clean_text(attempt.prompt_sha256),
        template_version=clean_text(attempt.template_version),
        template_sha256=clean_text(attempt.template_sha256),
        raw_output=clean_text(attempt.raw_output),
        parsed_output_json=parsed,
        valid=attempt.valid,
        validation_errors_json=json.dumps(
            [clean_text(e) for e in attempt.validation_errors], ensure_ascii=False
        ),
        prompt_tokens=attempt.prompt_tokens,
        completion_tokens=attempt.completion_tokens,
        duration_ms=attempt.duration.ToNanoseconds() / 1e6,
        constrained=attempt.constrained,
        model_name=clean_text(attempt.model_name),
        model_revision=clean_text(attempt.model_revision),
    )


def _result_from_proto(
    result: persistence_pb2.ResultRecorded,
    path: str,
    inspection_id: UUID | None,
    violations: list[FieldViolation],
) -> ResultData | None:
    if not result.HasField("inspection"):
        violations.append(FieldViolation(f"{path}.inspection", "is required"))
        return None
    insp = result.inspection
    if insp.inspection_id:
        own = parse_uuid(insp.inspection_id, f"{path}.inspection.inspection_id", violations)
        if own is not None and inspection_id is not None and own != inspection_id:
            violations.append(
                FieldViolation(
                    f"{path}.inspection.inspection_id", "differs from the event's inspection_id"
                )
            )
    previous = _previous_id(
        insp.previous_inspection_id,
        f"{path}.inspection.previous_inspection_id",
        inspection_id,
        violations,
    )
    score = insp.match_score if math.isfinite(insp.match_score) else 0.0
    return ResultData(
        shipping_id=clean_text(insp.shipping_id),
        product_id=clean_text(insp.product_id),
        previous_inspection_id=previous,
        decision=_enum_name(inspection_pb2.Decision, insp.decision),
        recommendation=_enum_name(inspection_pb2.Recommendation, insp.model_recommendation),
        match_score=score,
        payload_json=message_to_json(insp),
        export_uri=clean_text(result.export_uri),
    )
