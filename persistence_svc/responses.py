"""Maps repository rows to the protobuf responses of GetInspection and ListInspections.

The stored JSON columns are decoded here; rows written by a newer release stay readable.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rpi.persistence.v1 import persistence_pb2

from persistence_svc.conversion import METHODS, STAGES
from persistence_svc.records import AttemptData, InspectionDetail, InspectionRow, InspectionStatus

_M = TypeVar("_M", bound=Message)

_STATUS_TO_PROTO = {
    InspectionStatus.PENDING: persistence_pb2.INSPECTION_STATUS_PENDING,
    InspectionStatus.COMPLETED: persistence_pb2.INSPECTION_STATUS_COMPLETED,
    InspectionStatus.FAILED: persistence_pb2.INSPECTION_STATUS_FAILED,
}


def _json_to_message(text: str, message: _M) -> _M:
    # Unknown fields are ignored: rows written by a newer release must stay readable.
    json_format.ParseDict(json.loads(text), message, ignore_unknown_fields=True)
    return message


def _timestamp(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def _attempt_to_proto(attempt: AttemptData) -> persistence_pb2.AttemptRecorded:
    message = persistence_pb2.AttemptRecorded(
        attempt_number=attempt.attempt_number,
        prompt=attempt.prompt,
        prompt_sha256=attempt.prompt_sha256,
        template_version=attempt.template_version,
        template_sha256=attempt.template_sha256,
        raw_output=attempt.raw_output,
        valid=attempt.valid,
        validation_errors=[str(e) for e in json.loads(attempt.validation_errors_json)],
        prompt_tokens=attempt.prompt_tokens,
        completion_tokens=attempt.completion_tokens,
        constrained=attempt.constrained,
        model_name=attempt.model_name,
        model_revision=attempt.model_revision,
    )
    if attempt.parsed_output_json is not None:
        _json_to_message(attempt.parsed_output_json, message.parsed_output)
    message.duration.FromNanoseconds(round(attempt.duration_ms * 1e6))
    return message


def _request_to_proto(row: InspectionRow) -> persistence_pb2.RequestReceived:
    request = persistence_pb2.RequestReceived(
        shipping_id=row.shipping_id,
        product_id=row.product_id,
        product_name=row.product_name,
        previous_inspection_id=str(row.previous_inspection_id or ""),
        legacy_questions=row.legacy_questions,
        method=row.method,
        inspect_method=METHODS.get(row.method, persistence_pb2.INSPECT_METHOD_UNSPECIFIED),
        caller=row.caller,
        vendor_id=row.vendor_id,
    )
    for question in json.loads(row.questions_json):
        json_format.ParseDict(question, request.questions.add(), ignore_unknown_fields=True)
    for image in json.loads(row.images_json):
        json_format.ParseDict(image, request.images.add(), ignore_unknown_fields=True)
    return request


def record_to_proto(
    row: InspectionRow, attempts: Sequence[AttemptData] = ()
) -> persistence_pb2.InspectionRecord:
    record = persistence_pb2.InspectionRecord(
        inspection_id=str(row.inspection_id),
        shipping_id=row.shipping_id,
        product_id=row.product_id,
        product_name=row.product_name,
        previous_inspection_id=str(row.previous_inspection_id or ""),
        is_latest=row.is_latest,
        status=_STATUS_TO_PROTO[row.status],
        attempts=[_attempt_to_proto(a) for a in attempts],
        create_time=_timestamp(row.created_at),
        update_time=_timestamp(row.updated_at),
        caller=row.caller,
        export_uri=row.export_uri,
    )
    if row.request_recorded:
        record.request.CopyFrom(_request_to_proto(row))
    if row.result_payload_json is not None:
        _json_to_message(row.result_payload_json, record.result)
    if row.failure is not None:
        record.failure.CopyFrom(
            persistence_pb2.FailureRecorded(
                stage=row.failure.stage,
                reason=row.failure.reason,
                message=row.failure.message,
                status_code=row.failure.status_code,
                failure_stage=STAGES.get(
                    row.failure.stage, persistence_pb2.FAILURE_STAGE_UNSPECIFIED
                ),
            )
        )
    return record


def detail_to_proto(detail: InspectionDetail) -> persistence_pb2.GetInspectionResponse:
    return persistence_pb2.GetInspectionResponse(
        inspection=record_to_proto(detail.row, detail.attempts)
    )


def page_to_proto(
    rows: Sequence[InspectionRow], next_page_token: str
) -> persistence_pb2.ListInspectionsResponse:
    return persistence_pb2.ListInspectionsResponse(
        inspections=[record_to_proto(row) for row in rows], next_page_token=next_page_token
    )
