"""A real grpc.aio server on a loopback port with canned InspectionService, PersistenceService
and Health behaviour. The client is under test, not the server.

The server runs its own event loop in a thread, so that blocking (sync) clients and the CLI can
call it from the test thread while asyncio clients call it from the test loop.

Behaviour is chosen by the request's ``shipping_id``:
  ok / not-pick / untrained   a complete inspection (decision or model flag accordingly)
  too-large                   INVALID_ARGUMENT + ErrorInfo IMAGE_TOO_LARGE + BadRequest
  overloaded                  RESOURCE_EXHAUSTED + ErrorInfo OVERLOADED + RetryInfo
  fail-midway                 (stream) some events, then INTERNAL MODEL_OUTPUT_INVALID
  no-final                    (stream) events but no final Inspection
  hang                        never answers; records when the call is cancelled
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import any_pb2, duration_pb2, timestamp_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from rpi.inspection.v1 import inspection_pb2, inspection_pb2_grpc
from rpi.persistence.v1 import persistence_pb2, persistence_pb2_grpc

CREATE_TIME = datetime(2025, 1, 1, 20, 0, 0, tzinfo=UTC)
LIST_SHIPPING_ID = "S-LIST"
LIST_RECORDS = 5


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromTimedelta(timedelta(seconds=seconds))
    return value


def _questions(request: inspection_pb2.InspectRequest) -> list[inspection_pb2.Question]:
    if request.questions:
        return list(request.questions)
    legacy = json.loads(request.legacy_questions_json)
    return [
        inspection_pb2.Question(
            type=q["Type"],
            label=q["Label"],
            value_to_check=q["ValueToCheck"],
            mandatory=q["IsMandatory"] == "Yes",
        )
        for q in legacy["Question"]
    ]


def canned_inspection(request: inspection_pb2.InspectRequest) -> inspection_pb2.Inspection:
    pick = request.shipping_id != "not-pick"
    created = timestamp_pb2.Timestamp()
    created.FromDatetime(CREATE_TIME)
    return inspection_pb2.Inspection(
        inspection_id=request.inspection_id or "generated-id",
        previous_inspection_id=request.previous_inspection_id,
        shipping_id=request.shipping_id,
        product_id=request.product_id,
        decision=inspection_pb2.DECISION_PICK if pick else inspection_pb2.DECISION_NOT_PICK,
        model_recommendation=(
            inspection_pb2.RECOMMENDATION_ACCEPT if pick else inspection_pb2.RECOMMENDATION_REJECT
        ),
        match_score=87.0,
        answers=[
            inspection_pb2.Answer(
                label=q.label,
                type=q.type,
                answer=q.value_to_check if pick else "",
                value_to_check=q.value_to_check,
                mandatory=q.mandatory,
                evidence=f"evidence for {q.label}",
                confidence=90,
                retake_image=not pick,
                source=inspection_pb2.ANSWER_SOURCE_MODEL,
            )
            for q in _questions(request)
        ],
        analysis=inspection_pb2.Analysis(
            pickup_description="a blue mug",
            reference_description="a blue mug with logo",
            comparison="same product",
        ),
        timings=inspection_pb2.StageTimings(
            fetch=_duration(0.1), generate=_duration(1.5), total=_duration(2.0)
        ),
        attempts=1,
        model=inspection_pb2.ModelInfo(
            name="internvl-test",
            revision="r1",
            untrained=request.shipping_id == "untrained",
        ),
        create_time=created,
    )


def rich_status(
    code: int,
    message: str,
    reason: str,
    *,
    violations: tuple[tuple[str, str], ...] = (),
    metadata: dict[str, str] | None = None,
    retry_s: float | None = None,
) -> grpc.Status:
    status = status_pb2.Status(code=code, message=message)
    details: list[object] = [
        error_details_pb2.ErrorInfo(
            reason=reason, domain="inspection.rpi.v1", metadata=metadata or {}
        )
    ]
    if violations:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in violations
                ]
            )
        )
    if retry_s is not None:
        details.append(error_details_pb2.RetryInfo(retry_delay=_duration(retry_s)))
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)  # type: ignore[arg-type]
        status.details.append(packed)
    return rpc_status.to_status(status)


TOO_LARGE = rich_status(
    code_pb2.INVALID_ARGUMENT,
    "pickup_images[1]: image is 12.0 MB, limit 10 MB",
    "IMAGE_TOO_LARGE",
    violations=(("pickup_images[1]", "image is 12.0 MB, limit 10 MB"),),
    metadata={"image": "pickup_images[1]"},
)
OVERLOADED = rich_status(code_pb2.RESOURCE_EXHAUSTED, "queue full", "OVERLOADED", retry_s=1.5)
MODEL_OUTPUT_INVALID = rich_status(
    code_pb2.INTERNAL, "model output failed validation twice", "MODEL_OUTPUT_INVALID"
)


async def _abort(context: Any, status: grpc.Status) -> None:
    await context.abort(status.code, status.details, status.trailing_metadata)


@dataclass
class CannedInspectionService(inspection_pb2_grpc.InspectionServiceServicer):
    requests: list[inspection_pb2.InspectRequest] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)
    hanging: threading.Event = field(default_factory=threading.Event)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def reset(self) -> None:
        self.requests.clear()
        self.metadata.clear()
        self.hanging.clear()
        self.cancelled.clear()

    async def _receive(self, request: inspection_pb2.InspectRequest, context: Any) -> None:
        self.requests.append(request)
        md = context.invocation_metadata() or ()
        self.metadata.append({k: v for k, v in md if isinstance(v, str)})
        if request.shipping_id == "too-large":
            await _abort(context, TOO_LARGE)
        if request.shipping_id == "overloaded":
            await _abort(context, OVERLOADED)

    async def _hang(self) -> None:
        self.hanging.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def Inspect(
        self, request: inspection_pb2.InspectRequest, context: Any
    ) -> inspection_pb2.InspectResponse:
        await self._receive(request, context)
        if request.shipping_id == "hang":
            await self._hang()
        return inspection_pb2.InspectResponse(inspection=canned_inspection(request))

    async def InspectStream(
        self, request: inspection_pb2.InspectRequest, context: Any
    ) -> AsyncIterator[inspection_pb2.InspectStreamResponse]:
        await self._receive(request, context)
        event = inspection_pb2.InspectStreamResponse
        total = len(request.reference_images) + len(request.pickup_images)
        yield event(accepted=inspection_pb2.Accepted(inspection_id="stream-id"))
        for fetched in range(1, total + 1):
            yield event(images_fetched=inspection_pb2.ImagesFetched(fetched=fetched, total=total))
        if request.shipping_id == "hang":
            await self._hang()
        yield event(
            preprocessing_done=inspection_pb2.PreprocessingDone(tiles=5, prompt_tokens=1400)
        )
        yield event(queued=inspection_pb2.Queued(position=1))
        yield event(queued=inspection_pb2.Queued(position=0))
        yield event(
            generation_progress=inspection_pb2.GenerationProgress(
                attempt=1, tokens_generated=64, max_new_tokens=512
            )
        )
        inspection = canned_inspection(request)
        for answer in inspection.answers:
            yield event(
                answer_ready=inspection_pb2.AnswerReady(
                    attempt=1,
                    label=answer.label,
                    result=answer.value_to_check,
                    evidence=answer.evidence,
                    confidence=answer.confidence,
                )
            )
            if request.shipping_id == "fail-midway":
                await _abort(context, MODEL_OUTPUT_INVALID)
        if request.shipping_id == "no-final":
            return
        yield event(inspection=inspection)


def canned_record(index: int, shipping_id: str) -> persistence_pb2.InspectionRecord:
    created = timestamp_pb2.Timestamp()
    created.FromDatetime(CREATE_TIME - timedelta(minutes=index))
    request = inspection_pb2.InspectRequest(
        inspection_id=f"rec-{index}",
        shipping_id=shipping_id,
        product_name="Blue mug",
        questions=QUESTIONS,
    )
    return persistence_pb2.InspectionRecord(
        inspection_id=f"rec-{index}",
        shipping_id=shipping_id,
        product_name="Blue mug",
        is_latest=index == 0,
        status=persistence_pb2.INSPECTION_STATUS_COMPLETED,
        result=canned_inspection(request),
        create_time=created,
    )


@dataclass
class CannedPersistenceService(persistence_pb2_grpc.PersistenceServiceServicer):
    page_requests: list[persistence_pb2.ListInspectionsRequest] = field(default_factory=list)

    async def RecordEvents(
        self, request: persistence_pb2.RecordEventsRequest, context: Any
    ) -> persistence_pb2.RecordEventsResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the client never records events")
        raise AssertionError("unreachable")

    async def GetInspection(
        self, request: persistence_pb2.GetInspectionRequest, context: Any
    ) -> persistence_pb2.GetInspectionResponse:
        if request.inspection_id != "rec-0":
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"inspection {request.inspection_id} not found"
            )
        return persistence_pb2.GetInspectionResponse(inspection=canned_record(0, LIST_SHIPPING_ID))

    async def ListInspections(
        self, request: persistence_pb2.ListInspectionsRequest, context: Any
    ) -> persistence_pb2.ListInspectionsResponse:
        self.page_requests.append(request)
        if request.shipping_id != LIST_SHIPPING_ID:
            return persistence_pb2.ListInspectionsResponse()
        start = int(request.page_token or "0")
        end = min(start + (request.page_size or 50), LIST_RECORDS)
        return persistence_pb2.ListInspectionsResponse(
            inspections=[canned_record(i, request.shipping_id) for i in range(start, end)],
            next_page_token=str(end) if end < LIST_RECORDS else "",
        )


@dataclass
class CannedServer:
    target: str
    inspection: CannedInspectionService
    persistence: CannedPersistenceService


class _ServerThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: grpc.aio.Server | None = None

    def start(
        self, inspection: CannedInspectionService, persistence: CannedPersistenceService
    ) -> int:
        self.thread.start()
        return asyncio.run_coroutine_threadsafe(
            self._start(inspection, persistence), self.loop
        ).result(10)

    async def _start(
        self, inspection: CannedInspectionService, persistence: CannedPersistenceService
    ) -> int:
        self.server = grpc.aio.server()
        inspection_pb2_grpc.add_InspectionServiceServicer_to_server(inspection, self.server)
        persistence_pb2_grpc.add_PersistenceServiceServicer_to_server(persistence, self.server)
        health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self.server)
        await health_servicer.set(
            "rpi.inspection.v1.InspectionService", health_pb2.HealthCheckResponse.SERVING
        )
        await health_servicer.set("draining", health_pb2.HealthCheckResponse.NOT_SERVING)
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return port

    def stop(self) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.stop(None), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="session")
def _server_session() -> Iterator[CannedServer]:
    inspection = CannedInspectionService()
    persistence = CannedPersistenceService()
    runner = _ServerThread()
    port = runner.start(inspection, persistence)
    try:
        yield CannedServer(f"127.0.0.1:{port}", inspection, persistence)
    finally:
        runner.stop()


@pytest.fixture
def server(_server_session: CannedServer) -> CannedServer:
    _server_session.inspection.reset()
    _server_session.persistence.page_requests.clear()
    return _server_session


QUESTIONS = [
    inspection_pb2.Question(
        type="Colour", label="Is the mug blue?", value_to_check="Yes", mandatory=True
    ),
    inspection_pb2.Question(
        type="Quantity", label="How many mugs?", value_to_check="2", mandatory=False
    ),
]


def make_request(shipping_id: str = "ok") -> inspection_pb2.InspectRequest:
    return inspection_pb2.InspectRequest(
        shipping_id=shipping_id,
        product_name="Blue mug",
        product_id="P-1",
        inspection_id="insp-1",
        reference_images=[inspection_pb2.Image(uri="https://cdn.example.com/ref.jpg")],
        pickup_images=[inspection_pb2.Image(content=b"\xff\xd8jpeg-bytes")],
        questions=QUESTIONS,
    )


RequestFactory = Callable[[str], inspection_pb2.InspectRequest]


@pytest.fixture
def request_factory() -> RequestFactory:
    """Builds a valid request whose shipping id selects the canned behaviour."""
    return make_request
