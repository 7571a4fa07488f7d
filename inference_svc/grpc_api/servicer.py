"""InspectionService servicer: protobuf in, domain call, protobuf out. No business rules here."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import grpc
from rpi.inspection.v1 import inspection_pb2 as pb
from rpi.inspection.v1 import inspection_pb2_grpc as pb_grpc

from inference_svc.domain.errors import ErrorKind
from inference_svc.domain.models import Accepted, AnswerReady, Completed, Inspection, ProgressEvent
from inference_svc.domain.validation import RequestLimits, validate_request
from inference_svc.grpc_api.admission import Admission, refuse_unless_serving
from inference_svc.grpc_api.convert import (
    inspection_to_proto,
    progress_to_proto,
    raw_request_from_proto,
)
from inference_svc.pipeline import InspectionPipeline
from svc_common.auth import current_caller
from svc_common.logging import inspection_id_var
from svc_common.tracing import tag_inspection

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]

# How many progress messages may wait for a slow stream reader before further progress is
# skipped (acceptance, answers and the final inspection are never skipped).
_STREAM_BUFFER = 256
_ALWAYS_SENT = (Accepted, AnswerReady, Completed)


# The server's deadline is the client's grpc-timeout counted from when the call arrived, so it
# falls a little after the client's own: a client whose deadline fires cancels the stream
# just before the server's timer would. A cancel that close to the deadline is the deadline.
_DEADLINE_SLACK_S = 0.25


def _cancel_cause(context: Context) -> ErrorKind:
    """Why gRPC cancelled the handler: its deadline passed, or the client went away."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= _DEADLINE_SLACK_S:
        return ErrorKind.DEADLINE_EXCEEDED
    return ErrorKind.CANCELLED


class InspectionServicer(pb_grpc.InspectionServiceServicer):
    def __init__(
        self,
        pipeline: InspectionPipeline,
        limits: RequestLimits,
        admission: Admission,
        request_timeout_s: float,
        is_serving: Callable[[], bool],
        is_draining: Callable[[], bool] = lambda: False,
    ) -> None:
        self._pipeline = pipeline
        self._limits = limits
        self._admission = admission
        self._request_timeout_s = request_timeout_s
        self._is_serving = is_serving
        self._is_draining = is_draining

    def _deadline(self, context: Context) -> float:
        """The call's deadline on the monotonic clock: the caller's, capped by the server's
        request timeout. The pipeline enforces it."""
        remaining = context.time_remaining()
        budget = self._request_timeout_s
        if remaining is not None:
            budget = min(budget, max(0.0, remaining))
        return time.monotonic() + budget

    async def _run(
        self,
        request: pb.InspectRequest,
        context: Context,
        method: str,
        emit: Callable[[ProgressEvent], None],
        streaming: bool,
    ) -> Inspection:
        refuse_unless_serving(self._is_serving(), self._is_draining())
        domain_request = dataclasses.replace(
            validate_request(raw_request_from_proto(request), self._limits),
            caller=current_caller().name,
        )
        inspection_id_var.set(domain_request.inspection_id)
        tag_inspection(domain_request.inspection_id)
        with self._admission.slot():
            inspection = await self._pipeline.run(
                domain_request,
                method,
                emit,
                deadline=self._deadline(context),
                streaming=streaming,
                cancel_cause=lambda: _cancel_cause(context),
            )
        log.info(
            "inspection completed",
            extra={
                "method": method,
                "decision": inspection.decision.value,
                "attempts": inspection.attempts,
                "total_s": round(inspection.timings.total, 3),
            },
        )
        return inspection

    async def Inspect(  # noqa: N802 - gRPC method name
        self, request: pb.InspectRequest, context: Context
    ) -> pb.InspectResponse:
        inspection = await self._run(request, context, "Inspect", lambda _e: None, streaming=False)
        return pb.InspectResponse(inspection=inspection_to_proto(inspection))

    async def InspectStream(  # noqa: N802 - gRPC method name
        self, request: pb.InspectRequest, context: Context
    ) -> AsyncIterator[pb.InspectStreamResponse]:
        queue: asyncio.Queue[ProgressEvent | None] = asyncio.Queue()
        dropped = 0

        def emit(event: ProgressEvent) -> None:
            nonlocal dropped
            # Progress is advisory: when the reader lags, skip it rather than buffer without
            # bound. Answers and the final result are always kept.
            if queue.qsize() >= _STREAM_BUFFER and not isinstance(event, _ALWAYS_SENT):
                dropped += 1
                return
            queue.put_nowait(event)

        task = asyncio.create_task(
            self._run(request, context, "InspectStream", emit, streaming=True)
        )
        task.add_done_callback(lambda _t: queue.put_nowait(None))
        try:
            while True:
                event = await queue.get()
                if event is None:
                    break
                yield progress_to_proto(event)
            if dropped:
                log.info("stream reader lagged; progress skipped", extra={"skipped": dropped})
            if task.cancelled():
                return
            # Domain errors become statuses in the error interceptor (grpc_api.errors).
            error = task.exception()
            if error is not None:
                raise error
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
