"""gRPC face of the persistence service: translates protobuf to repository calls and domain
errors to status codes with google.rpc details. No SQL and no business rules here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import NoReturn, Protocol, TypeVar, cast

import grpc
from google.protobuf import any_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from rpi.persistence.v1 import persistence_pb2, persistence_pb2_grpc

from persistence_svc import conversion, paging
from persistence_svc.errors import (
    DatabaseUnavailableError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    PersistenceError,
)
from persistence_svc.records import RecordOutcome
from persistence_svc.repository import Repository

logger = logging.getLogger(__name__)

ERROR_DOMAIN = "persistence.rpi.v1"
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


class _AbortWithStatus(Protocol):
    # grpc.aio.ServicerContext has it at run time; grpc-stubs does not declare it.
    async def abort_with_status(self, status: grpc.Status) -> NoReturn: ...


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def error_status(exc: PersistenceError) -> status_pb2.Status:
    """The google.rpc.Status a domain error is reported with."""
    if isinstance(exc, InvalidArgumentError):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in exc.violations
            ]
        )
        return status_pb2.Status(
            code=code_pb2.INVALID_ARGUMENT,
            message=exc.message,
            details=[
                _pack(bad_request),
                _pack(error_details_pb2.ErrorInfo(reason="INVALID_ARGUMENT", domain=ERROR_DOMAIN)),
            ],
        )
    if isinstance(exc, NotFoundError):
        return status_pb2.Status(
            code=code_pb2.NOT_FOUND,
            message=exc.message,
            details=[
                _pack(
                    error_details_pb2.ErrorInfo(reason="INSPECTION_NOT_FOUND", domain=ERROR_DOMAIN)
                )
            ],
        )
    message = exc.message if isinstance(exc, DatabaseUnavailableError) else str(exc)
    return status_pb2.Status(
        code=code_pb2.UNAVAILABLE,
        message=message,
        details=[
            _pack(error_details_pb2.ErrorInfo(reason="DATABASE_UNAVAILABLE", domain=ERROR_DOMAIN)),
            _pack(error_details_pb2.RetryInfo(retry_delay=Duration(seconds=1))),
        ],
    )


async def _abort(context: grpc.aio.ServicerContext[_Req, _Resp], exc: PersistenceError) -> NoReturn:
    await cast(_AbortWithStatus, context).abort_with_status(rpc_status.to_status(error_status(exc)))


class PersistenceServicer(persistence_pb2_grpc.PersistenceServiceServicer):
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
        self._on_recorded = on_recorded
        self._on_database_state = on_database_state
        self._max_events = max_events_per_call
        self._default_page_size = default_page_size
        self._max_page_size = max_page_size

    def attach(self, repository: Repository | None) -> None:
        self._repository = repository

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
        try:
            repository = self._repo()
            # Serialising hundreds of payloads to JSON is CPU work: keep it off the event loop.
            events = await asyncio.to_thread(
                conversion.events_from_proto, request, self._max_events
            )
            outcome = await repository.record_events(events)
            if self._on_recorded is not None:
                self._on_recorded(outcome)
            if self._on_database_state is not None:
                self._on_database_state(True)
        except PersistenceError as exc:
            if isinstance(exc, DatabaseUnavailableError) and self._on_database_state is not None:
                self._on_database_state(False)
            await _abort(context, exc)
        except Exception:
            logger.exception("unexpected error")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
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
        try:
            violations: list[FieldViolation] = []
            inspection_id = conversion.parse_uuid(
                request.inspection_id, "inspection_id", violations
            )
            if inspection_id is None:
                raise InvalidArgumentError("inspection_id must be a UUID", violations)
            detail = await self._repo().get_inspection(inspection_id)
            if detail is None:
                raise NotFoundError(f"inspection {inspection_id} not found")
            return await asyncio.to_thread(conversion.detail_to_proto, detail)
        except PersistenceError as exc:
            await _abort(context, exc)
        except Exception:
            logger.exception("unexpected error")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    async def ListInspections(  # noqa: N802 - gRPC method name
        self,
        request: persistence_pb2.ListInspectionsRequest,
        context: grpc.aio.ServicerContext[
            persistence_pb2.ListInspectionsRequest, persistence_pb2.ListInspectionsResponse
        ],
    ) -> persistence_pb2.ListInspectionsResponse:
        try:
            if not request.shipping_id:
                raise InvalidArgumentError(
                    "shipping_id is required", [FieldViolation("shipping_id", "is required")]
                )
            page_size = paging.resolve_page_size(
                request.page_size, self._default_page_size, self._max_page_size
            )
            page = await self._repo().list_inspections(
                request.shipping_id, page_size, request.page_token
            )
            return await asyncio.to_thread(
                conversion.page_to_proto, page.rows, page.next_page_token
            )
        except PersistenceError as exc:
            await _abort(context, exc)
        except Exception:
            logger.exception("unexpected error")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
