"""Asynchronous inspections in the gRPC layer: running a claimed job's request through the
pipeline (protobuf in, protobuf out, errors as google.rpc.Status), and a job as a
google.longrunning.Operation."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid

from google.longrunning import operations_proto_pb2 as lro
from google.protobuf import any_pb2, json_format
from google.rpc import status_pb2
from rpi.inspection.v1 import operations_pb2 as opb
from rpi.persistence.v1 import persistence_pb2 as ppb

from inference_svc.domain import models as m
from inference_svc.domain.errors import ErrorKind, InspectionError, Reason
from inference_svc.domain.validation import RequestLimits, validate_request
from inference_svc.grpc_api.admission import Admission
from inference_svc.grpc_api.convert import inspection_to_proto, raw_request_from_proto
from inference_svc.grpc_api.errors import ERROR_TABLE
from inference_svc.operations.worker import ProgressSink, RunOutcome
from inference_svc.pipeline import InspectionPipeline
from svc_common.grpc_errors import status_for
from svc_common.logging import inspection_id_var

OPERATIONS_PREFIX = "operations/"
METHOD = "SubmitInspection"

_FINISHED = (
    opb.OPERATION_STATE_SUCCEEDED,
    opb.OPERATION_STATE_FAILED,
    opb.OPERATION_STATE_CANCELLED,
)


def error_status(exc: InspectionError, request: object = None) -> tuple[status_pb2.Status, bool]:
    """The google.rpc.Status a failed run ends with, and whether another run may succeed."""
    rule = ERROR_TABLE.rule_for(exc)
    if rule is None:
        exc = InspectionError(ErrorKind.INTERNAL, Reason.INTERNAL, "internal error")
        rule = ERROR_TABLE.rule_for(exc)
        assert rule is not None
    return status_for(ERROR_TABLE, rule, exc, request), rule.retryable


class _Progress:
    """The stream's progress events folded into InspectionProgress."""

    def __init__(self, sink: ProgressSink) -> None:
        self._sink = sink
        self._now = opb.InspectionProgress()

    def emit(self, event: m.ProgressEvent) -> None:
        p = self._now
        match event:
            case m.ImagesFetched():
                p.images_fetched.fetched, p.images_fetched.total = event.fetched, event.total
            case m.PreprocessingDone():
                p.preprocessing_done.tiles = event.tiles
                p.preprocessing_done.prompt_tokens = event.prompt_tokens
            case m.Queued():
                p.queued.position = event.position
            case m.GenerationProgress():
                g = p.generation_progress
                g.attempt, g.tokens_generated = event.attempt, event.tokens_generated
                g.max_new_tokens = event.max_new_tokens
            case m.AnswerReady():
                p.answers_ready += 1
            case _:
                return
        update = opb.InspectionProgress()
        update.CopyFrom(p)
        self._sink(update)


@dataclasses.dataclass
class JobRunner:
    """Runs one claimed job like a synchronous call: validated again (the limits may have
    changed since submit), one admission slot, the caller's deadline replaced by
    REQUEST_TIMEOUT_S."""

    pipeline: InspectionPipeline
    limits: RequestLimits
    admission: Admission
    request_timeout_s: float

    async def __call__(self, job: ppb.Job, progress: ProgressSink) -> RunOutcome:
        inspection_id_var.set(job.inspection_id)
        try:
            request = dataclasses.replace(
                validate_request(raw_request_from_proto(job.request), self.limits),
                caller=job.caller,
                export_uri=job.export_uri,
            )
            with self.admission.slot():
                inspection = await self.pipeline.run(
                    request,
                    METHOD,
                    _Progress(progress).emit,
                    deadline=time.monotonic() + self.request_timeout_s,
                    streaming=True,
                )
        except InspectionError as exc:
            status, retryable = error_status(exc, job.request)
            return RunOutcome(error=status, retryable=retryable)
        return RunOutcome(result=inspection_to_proto(inspection))


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def job_metadata(job: ppb.Job) -> opb.InspectionOperationMetadata:
    meta = opb.InspectionOperationMetadata(
        state=job.state,
        inspection_id=job.inspection_id,
        request_id=job.request_id,
        attempts=job.attempts,
        queue_position=job.queue_position,
        create_time=job.create_time,
        update_time=job.update_time,
        callback=job.callback,
        # Known from submit, but only an object once the run succeeded.
        export_uri=job.export_uri if job.state == opb.OPERATION_STATE_SUCCEEDED else "",
    )
    for name in ("progress", "start_time", "end_time"):
        if job.HasField(name):
            getattr(meta, name).CopyFrom(getattr(job, name))
    return meta


def job_to_operation(job: ppb.Job) -> lro.Operation:
    operation = lro.Operation(
        name=OPERATIONS_PREFIX + job.job_id,
        metadata=_pack(job_metadata(job)),
        done=job.state in _FINISHED,
    )
    if job.state == opb.OPERATION_STATE_SUCCEEDED:
        operation.response.Pack(job.result)
    elif job.state in _FINISHED:
        operation.error.CopyFrom(job.error)
    return operation


WEBHOOK_TYPE = "rpi.inspection.operation.done"


def webhook_body(job: ppb.Job) -> str:
    """The webhook's JSON body (Standard Webhooks' type/timestamp/data shape): ``data`` is the
    finished google.longrunning.Operation as GetOperation returns it, in proto JSON."""
    data = json_format.MessageToDict(job_to_operation(job), preserving_proto_field_name=True)
    stamp = job.end_time.ToJsonString() if job.HasField("end_time") else ""
    return json.dumps({"type": WEBHOOK_TYPE, "timestamp": stamp, "data": data})


def job_id_of(name: str) -> str:
    """The job id of an operation name; NOT_FOUND for a name this service never gave."""
    job_id = name.removeprefix(OPERATIONS_PREFIX)
    try:
        if job_id == name:
            raise ValueError(name)
        return str(uuid.UUID(job_id))
    except ValueError:
        raise InspectionError(
            ErrorKind.NOT_FOUND, Reason.OPERATION_NOT_FOUND, f"no operation named {name!r}"
        ) from None
