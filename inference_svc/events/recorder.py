"""The Recorder port implemented over the durable event spool.

Each record becomes a persistence ``Event`` with a fresh UUID (the idempotency key) and the
W3C trace context of the inspection's current span, serialized and spooled before the call
returns; delivery happens in the background, in batches of many inspections, so the persistence
service links its span for a batch to each of them instead of continuing one trace.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct
from rpi.persistence.v1 import persistence_pb2 as ppb

from inference_svc.domain.errors import ErrorKind, InspectionError, Reason, Stage
from inference_svc.domain.models import (
    AttemptRecord,
    ImageRole,
    Inspection,
    InspectionRequest,
    ModelInfo,
)
from inference_svc.domain.recording import ImageInfo
from inference_svc.events.delivery import EventDelivery
from inference_svc.proto_convert import (
    duration,
    inspection_to_proto,
    question_to_proto,
    timestamp,
)
from svc_common.tracing import current_trace_context

_ROLE = {ImageRole.REFERENCE: ppb.IMAGE_ROLE_REFERENCE, ImageRole.PICKUP: ppb.IMAGE_ROLE_PICKUP}
# The enum fields beside the old strings: "fetch" -> FAILURE_STAGE_FETCH, and so on.
_STAGES = {
    name.removeprefix("FAILURE_STAGE_").lower(): ppb.FailureStage.Value(name)
    for name in ppb.FailureStage.keys()  # noqa: SIM118 - an enum wrapper, not a dict
    if name != "FAILURE_STAGE_UNSPECIFIED"
}
_METHODS = {
    "Inspect": ppb.INSPECT_METHOD_INSPECT,
    "InspectStream": ppb.INSPECT_METHOD_INSPECT_STREAM,
}


class SpoolingRecorder:
    def __init__(self, delivery: EventDelivery) -> None:
        self._delivery = delivery

    def ensure_capacity(self) -> None:
        if self._delivery.is_full():
            raise InspectionError(
                ErrorKind.RESOURCE_EXHAUSTED,
                Reason.EVENT_SPOOL_FULL,
                "inspection records cannot be kept right now (event spool full); retry later",
                retry_after_seconds=30.0,
            )

    async def _record(self, inspection_id: str, **payload: object) -> None:
        event = ppb.Event(
            event_id=str(uuid.uuid4()),
            inspection_id=inspection_id,
            occur_time=timestamp(datetime.now(UTC)),
            trace_context=current_trace_context(),
            **payload,  # type: ignore[arg-type]
        )
        await self._delivery.append([(event.event_id, event.SerializeToString())])

    async def request_received(
        self, request: InspectionRequest, method: str, images: list[ImageInfo]
    ) -> None:
        await self._record(
            request.inspection_id,
            request_received=ppb.RequestReceived(
                shipping_id=request.shipping_id,
                product_id=request.product_id,
                product_name=request.product_name,
                previous_inspection_id=request.previous_inspection_id,
                questions=[question_to_proto(q) for q in request.questions],
                legacy_questions=request.legacy_questions,
                images=[
                    ppb.ImageRecord(
                        role=_ROLE[i.role],
                        index=i.index,
                        uri=i.uri,
                        fetched_uri=i.fetched_uri,
                        inline=i.inline,
                        sha256=i.sha256,
                        size_bytes=i.size_bytes,
                        width=i.width,
                        height=i.height,
                        format=i.format,
                        tiles=i.tiles,
                        archived_uri=i.archived_uri,
                        # A oneof member: left out, not None, when there is no hash.
                        **(
                            {"perceptual_hash": i.perceptual_hash}
                            if i.perceptual_hash is not None
                            else {}
                        ),
                    )
                    for i in images
                ],
                method=method,
                vendor_id=request.vendor_id,
                inspect_method=_METHODS.get(method, ppb.INSPECT_METHOD_UNSPECIFIED),
                caller=request.caller,
            ),
        )

    async def attempt(self, inspection_id: str, attempt: AttemptRecord, model: ModelInfo) -> None:
        parsed = None
        if attempt.parsed_output is not None:
            parsed = Struct()
            try:
                json_format.ParseDict(attempt.parsed_output, parsed)
            except (json_format.ParseError, TypeError, ValueError):
                parsed = None
        await self._record(
            inspection_id,
            attempt_recorded=ppb.AttemptRecorded(
                attempt_number=attempt.attempt_number,
                prompt=attempt.prompt,
                prompt_sha256=attempt.prompt_sha256,
                template_version=attempt.template_version,
                template_sha256=attempt.template_sha256,
                raw_output=attempt.raw_output,
                parsed_output=parsed,
                valid=attempt.valid,
                validation_errors=attempt.validation_errors,
                prompt_tokens=attempt.prompt_tokens,
                completion_tokens=attempt.completion_tokens,
                duration=duration(attempt.duration_s),
                constrained=attempt.constrained,
                model_name=model.name,
                model_revision=model.revision,
            ),
        )

    async def result(self, inspection: Inspection, export_uri: str = "") -> None:
        await self._record(
            inspection.inspection_id,
            result_recorded=ppb.ResultRecorded(
                inspection=inspection_to_proto(inspection), export_uri=export_uri
            ),
        )

    async def failure(
        self, inspection_id: str, stage: Stage, reason: str, message: str, status_code: str
    ) -> None:
        await self._record(
            inspection_id,
            failure_recorded=ppb.FailureRecorded(
                stage=stage.value,
                reason=reason,
                message=message[:2000],
                status_code=status_code,
                failure_stage=_STAGES.get(stage.value, ppb.FAILURE_STAGE_UNSPECIFIED),
            ),
        )


class NullRecorder:
    """Used when no persistence target is configured (recording explicitly disabled)."""

    def ensure_capacity(self) -> None:
        pass

    async def request_received(
        self, request: InspectionRequest, method: str, images: list[ImageInfo]
    ) -> None:
        pass

    async def attempt(self, inspection_id: str, attempt: AttemptRecord, model: ModelInfo) -> None:
        pass

    async def result(self, inspection: Inspection, export_uri: str = "") -> None:
        pass

    async def failure(
        self, inspection_id: str, stage: Stage, reason: str, message: str, status_code: str
    ) -> None:
        pass
