"""gRPC face of the persistence service: translates protobuf to repository calls. It raises
domain errors; the error interceptor (``persistence_svc.errors.ERROR_TABLE``) reports them. No
SQL and no business rules here."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC

import grpc
from rpi.persistence.v1 import persistence_pb2, persistence_pb2_grpc

from persistence_svc import conversion, image_hashes, paging, responses
from persistence_svc.errors import (
    DatabaseUnavailableError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
)
from persistence_svc.job_rpcs import JobRpcs
from persistence_svc.jobs import JobQueue
from persistence_svc.records import RecordOutcome
from persistence_svc.repository import Repository
from svc_common.tracing import link_producers, tag_inspection

# A request has at most a few pickup images; a lookup is bounded so that it stays a few index
# probes per hash.
MAX_LOOKUP_HASHES = 50
DEFAULT_LOOKUP_LIMIT = 5
MAX_LOOKUP_LIMIT = 50


class PersistenceServicer(JobRpcs, persistence_pb2_grpc.PersistenceServiceServicer):
    """Serves rpi.persistence.v1.PersistenceService. Answers UNAVAILABLE until a repository is
    attached (the database is connected and migrated)."""

    def __init__(
        self,
        repository: Repository | None = None,
        *,
        max_events_per_call: int = 500,
        default_page_size: int = 50,
        max_page_size: int = 500,
        on_recorded: Callable[[RecordOutcome], None] | None = None,
        on_database_state: Callable[[bool], None] | None = None,
    ) -> None:
        self._repository = repository
        self._jobs: JobQueue | None = None
        self._on_recorded = on_recorded
        self._on_database_state = on_database_state
        self._max_events = max_events_per_call
        self._default_page_size = default_page_size
        self._max_page_size = max_page_size

    def attach(self, repository: Repository | None, jobs: JobQueue | None = None) -> None:
        self._repository = repository
        self._jobs = jobs

    def _job_queue(self) -> JobQueue:
        if self._jobs is None:
            raise DatabaseUnavailableError("the persistence service is not ready")
        return self._jobs

    def _repo(self) -> Repository:
        if self._repository is None:
            raise DatabaseUnavailableError("the persistence service is not ready")
        return self._repository

    async def RecordEvents(  # noqa: N802 - gRPC method name
        self,
        request: persistence_pb2.RecordEventsRequest,
        context: grpc.aio.ServicerContext[
            persistence_pb2.RecordEventsRequest, persistence_pb2.RecordEventsResponse
        ],
    ) -> persistence_pb2.RecordEventsResponse:
        # One batch holds the events of many inspections: its span links to each one's trace.
        link_producers((e.inspection_id, e.trace_context) for e in request.events)
        # Serialising hundreds of payloads to JSON is CPU work: keep it off the event loop.
        events = await asyncio.to_thread(conversion.events_from_proto, request, self._max_events)
        try:
            outcome = await self._repo().record_events(events)
        except DatabaseUnavailableError:
            # Only the state hook here; the error interceptor reports the error itself.
            if self._on_database_state is not None:
                self._on_database_state(False)
            raise
        if self._on_recorded is not None:
            self._on_recorded(outcome)
        if self._on_database_state is not None:
            self._on_database_state(True)
        return persistence_pb2.RecordEventsResponse(
            applied=outcome.applied, duplicates=outcome.duplicates
        )

    async def GetInspection(  # noqa: N802 - gRPC method name
        self,
        request: persistence_pb2.GetInspectionRequest,
        context: grpc.aio.ServicerContext[
            persistence_pb2.GetInspectionRequest, persistence_pb2.GetInspectionResponse
        ],
    ) -> persistence_pb2.GetInspectionResponse:
        violations: list[FieldViolation] = []
        inspection_id = conversion.parse_uuid(request.inspection_id, "inspection_id", violations)
        if inspection_id is None:
            raise InvalidArgumentError("inspection_id must be a UUID", violations)
        tag_inspection(str(inspection_id))
        detail = await self._repo().get_inspection(inspection_id)
        if detail is None:
            raise NotFoundError(f"inspection {inspection_id} not found")
        return await asyncio.to_thread(responses.detail_to_proto, detail)

    async def ListInspections(  # noqa: N802 - gRPC method name
        self,
        request: persistence_pb2.ListInspectionsRequest,
        context: grpc.aio.ServicerContext[
            persistence_pb2.ListInspectionsRequest, persistence_pb2.ListInspectionsResponse
        ],
    ) -> persistence_pb2.ListInspectionsResponse:
        if not request.shipping_id:
            raise InvalidArgumentError(
                "shipping_id is required", [FieldViolation("shipping_id", "is required")]
            )
        if "\x00" in request.shipping_id:  # PostgreSQL text cannot hold one
            raise InvalidArgumentError(
                "shipping_id must not contain NUL characters",
                [FieldViolation("shipping_id", "must not contain NUL characters")],
            )
        page_size = paging.resolve_page_size(
            request.page_size, self._default_page_size, self._max_page_size
        )
        page = await self._repo().list_inspections(
            request.shipping_id, page_size, request.page_token
        )
        return await asyncio.to_thread(responses.page_to_proto, page.rows, page.next_page_token)

    async def ListInspectionsByTime(  # noqa: N802 - gRPC method name
        self,
        request: persistence_pb2.ListInspectionsByTimeRequest,
        context: grpc.aio.ServicerContext[
            persistence_pb2.ListInspectionsByTimeRequest,
            persistence_pb2.ListInspectionsByTimeResponse,
        ],
    ) -> persistence_pb2.ListInspectionsByTimeResponse:
        violations: list[FieldViolation] = []
        for name in ("start_time", "end_time"):
            if not request.HasField(name):
                violations.append(FieldViolation(name, "is required"))
        if violations:
            raise InvalidArgumentError("a period is required", violations)
        start = request.start_time.ToDatetime(tzinfo=UTC)
        end = request.end_time.ToDatetime(tzinfo=UTC)
        if end <= start:
            raise InvalidArgumentError(
                "end_time must be after start_time",
                [FieldViolation("end_time", "must be after start_time")],
            )
        page_size = paging.resolve_page_size(
            request.page_size, self._default_page_size, self._max_page_size
        )
        page = await self._repo().list_inspections_between(
            start, end, page_size, request.page_token
        )
        listed = await asyncio.to_thread(responses.page_to_proto, page.rows, page.next_page_token)
        return persistence_pb2.ListInspectionsByTimeResponse(
            inspections=listed.inspections, next_page_token=listed.next_page_token
        )

    async def FindSimilarPickupImages(  # noqa: N802 - gRPC method name
        self,
        request: persistence_pb2.FindSimilarPickupImagesRequest,
        context: grpc.aio.ServicerContext[
            persistence_pb2.FindSimilarPickupImagesRequest,
            persistence_pb2.FindSimilarPickupImagesResponse,
        ],
    ) -> persistence_pb2.FindSimilarPickupImagesResponse:
        violations: list[FieldViolation] = []
        if not request.hashes:
            violations.append(FieldViolation("hashes", "is required"))
        elif len(request.hashes) > MAX_LOOKUP_HASHES:
            violations.append(FieldViolation("hashes", f"at most {MAX_LOOKUP_HASHES}"))
        if not 0 <= request.max_distance <= image_hashes.MAX_DISTANCE:
            violations.append(
                FieldViolation("max_distance", f"must be 0 to {image_hashes.MAX_DISTANCE}")
            )
        if not request.shipping_id:
            violations.append(FieldViolation("shipping_id", "is required"))
        if not 0 <= request.limit <= MAX_LOOKUP_LIMIT:
            violations.append(FieldViolation("limit", f"must be 0 to {MAX_LOOKUP_LIMIT}"))
        if violations:
            raise InvalidArgumentError("invalid reused-photo lookup", violations)
        matches = await self._repo().find_similar_pickup_images(
            [(h.index, h.perceptual_hash) for h in request.hashes],
            request.max_distance,
            request.shipping_id,
            request.limit or DEFAULT_LOOKUP_LIMIT,
        )
        return persistence_pb2.FindSimilarPickupImagesResponse(
            matches=[
                persistence_pb2.SimilarPickupImage(
                    query_index=m.query_index,
                    inspection_id=str(m.inspection_id),
                    shipping_id=m.shipping_id,
                    image_index=m.image_index,
                    distance=m.distance,
                )
                for m in matches
            ]
        )
