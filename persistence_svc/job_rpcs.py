"""The job queue's RPCs of the persistence service: protobuf in, JobQueue call, protobuf out.
Mixed into PersistenceServicer, which holds the queue (``_jobs_queue``)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any
from uuid import UUID

from google.protobuf import timestamp_pb2
from google.rpc import code_pb2, status_pb2
from rpi.inspection.v1 import operations_pb2 as opb
from rpi.persistence.v1 import persistence_pb2 as ppb

from persistence_svc import conversion, paging
from persistence_svc.errors import FieldViolation, InvalidArgumentError
from persistence_svc.jobs import JobQueue, JobRow, JobState, LeaseState, Outcome
from persistence_svc.records import EventRecord, PageCursor
from persistence_svc.repository.webhooks import DeliveryState, WebhookOutcome

MAX_REQUEST_ID_CHARS = 128
MAX_CLAIM = 100
MAX_LEASE_S = 3600.0
# The event id of a job's result (uuid5 of the job id): the same for every FinishJob of the job.
_RESULT_EVENTS = uuid.UUID("5b0c8a1e-3f57-4f43-9a43-2a3c4c1f0f6e")

_STATES = {
    JobState.QUEUED: opb.OPERATION_STATE_QUEUED,
    JobState.RUNNING: opb.OPERATION_STATE_RUNNING,
    JobState.SUCCEEDED: opb.OPERATION_STATE_SUCCEEDED,
    JobState.FAILED: opb.OPERATION_STATE_FAILED,
    JobState.CANCELLED: opb.OPERATION_STATE_CANCELLED,
}
_STATES_BACK = {v: k for k, v in _STATES.items()}
_CALLBACK_STATES = {
    "": opb.CALLBACK_STATE_NONE,
    "waiting": opb.CALLBACK_STATE_PENDING,
    "pending": opb.CALLBACK_STATE_PENDING,
    "delivered": opb.CALLBACK_STATE_DELIVERED,
    "dead_letter": opb.CALLBACK_STATE_DEAD_LETTER,
}
_OUTCOMES = {
    ppb.JOB_OUTCOME_SUCCEEDED: Outcome.SUCCEEDED,
    ppb.JOB_OUTCOME_FAILED: Outcome.FAILED,
    ppb.JOB_OUTCOME_RETRY: Outcome.RETRY,
    ppb.JOB_OUTCOME_CANCELLED: Outcome.CANCELLED,
}
_WEBHOOK_OUTCOMES = {
    ppb.WEBHOOK_OUTCOME_DELIVERED: WebhookOutcome.DELIVERED,
    ppb.WEBHOOK_OUTCOME_FAILED: WebhookOutcome.FAILED,
    ppb.WEBHOOK_OUTCOME_GONE: WebhookOutcome.GONE,
}
MAX_WEBHOOK_ERROR_CHARS = 500
_LEASES = {
    LeaseState.HELD: ppb.LEASE_STATUS_HELD,
    LeaseState.CANCEL_REQUESTED: ppb.LEASE_STATUS_CANCEL_REQUESTED,
    LeaseState.LOST: ppb.LEASE_STATUS_LOST,
}

CANCELLED_STATUS: bytes = bytes(
    status_pb2.Status(
        code=code_pb2.CANCELLED, message="the operation was cancelled"
    ).SerializeToString()
)


def lost_status(max_attempts: int) -> bytes:
    status = status_pb2.Status(
        code=code_pb2.ABORTED,
        message=f"the replica running the inspection was lost {max_attempts} times",
    )
    return bytes(status.SerializeToString())


def _ts(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def job_to_proto(row: JobRow, *, with_request: bool = True) -> ppb.Job:
    job = ppb.Job(
        job_id=str(row.job_id),
        caller=row.caller,
        request_id=row.request_id,
        inspection_id=str(row.inspection_id),
        state=_STATES[row.state],
        attempts=row.attempts,
        cancel_requested=row.cancel_requested,
        queue_position=row.queue_position,
        create_time=_ts(row.created_at),
        start_time=_ts(row.started_at),
        update_time=_ts(row.updated_at),
        end_time=_ts(row.ended_at),
        export_uri=row.export_uri,
        callback=opb.CallbackDelivery(
            state=_CALLBACK_STATES[row.webhook_state],
            url=row.webhook_url,
            webhook_id=row.webhook_id,
            attempts=row.webhook_attempts,
            last_error=row.webhook_last_error,
            next_attempt_time=_ts(row.webhook_next_attempt_at)
            if row.webhook_state == "pending"
            else None,
        ),
    )
    if with_request and row.request is not None:
        job.request.ParseFromString(row.request)
    if row.progress is not None:
        job.progress.ParseFromString(row.progress)
    if row.result is not None:
        job.result.ParseFromString(row.result)
    if row.error is not None:
        job.error.ParseFromString(row.error)
    if row.lease_token is not None and with_request:
        job.lease_token = str(row.lease_token)
    return job


def _uuid(value: str, name: str, violations: list[FieldViolation]) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        violations.append(FieldViolation(name, "must be a UUID"))
        return UUID(int=0)


def _check(violations: list[FieldViolation], what: str) -> None:
    if violations:
        raise InvalidArgumentError(f"invalid {what}", violations)


def _caller_and_job(request: Any, what: str) -> tuple[str, UUID]:
    violations: list[FieldViolation] = []
    if not request.caller:
        violations.append(FieldViolation("caller", "is required"))
    job_id = _uuid(request.job_id, "job_id", violations)
    _check(violations, what)
    return str(request.caller), job_id


def _lease_seconds(duration: Any, name: str, violations: list[FieldViolation]) -> float:
    seconds = float(duration.ToTimedelta().total_seconds())
    if not 1.0 <= seconds <= MAX_LEASE_S:
        violations.append(FieldViolation(name, f"must be 1 s to {MAX_LEASE_S:.0f} s"))
    return seconds


class JobRpcs:
    """The job RPCs; the servicer provides ``_job_queue()`` and the page sizes."""

    _default_page_size: int
    _max_page_size: int

    def _job_queue(self) -> JobQueue:
        raise NotImplementedError

    async def CreateJob(  # noqa: N802 - gRPC method name
        self, request: ppb.CreateJobRequest, context: Any
    ) -> ppb.CreateJobResponse:
        violations: list[FieldViolation] = []
        if not request.caller:
            violations.append(FieldViolation("caller", "is required"))
        if len(request.request_id) > MAX_REQUEST_ID_CHARS:
            violations.append(FieldViolation("request_id", f"at most {MAX_REQUEST_ID_CHARS}"))
        if (
            "\x00"
            in request.request_id + request.caller + request.callback_url + request.export_uri
        ):
            violations.append(FieldViolation("request_id", "must not contain NUL characters"))
        if len(request.request_sha256) != 32:
            violations.append(FieldViolation("request_sha256", "must be 32 bytes"))
        if not request.HasField("request"):
            violations.append(FieldViolation("request", "is required"))
        inspection_id = _uuid(request.request.inspection_id, "request.inspection_id", violations)
        _check(violations, "job")
        row, created = await self._job_queue().create(
            caller=request.caller,
            request_id=request.request_id,
            request_sha256=request.request_sha256,
            inspection_id=inspection_id,
            request=request.request.SerializeToString(deterministic=True),
            callback_url=request.callback_url,
            export_uri=request.export_uri,
        )
        return ppb.CreateJobResponse(job=job_to_proto(row, with_request=False), created=created)

    async def GetJob(  # noqa: N802 - gRPC method name
        self, request: ppb.GetJobRequest, context: Any
    ) -> ppb.GetJobResponse:
        caller, job_id = _caller_and_job(request, "job")
        row = await self._job_queue().get(job_id, caller)
        return ppb.GetJobResponse(job=job_to_proto(row, with_request=False))

    async def ListJobs(  # noqa: N802 - gRPC method name
        self, request: ppb.ListJobsRequest, context: Any
    ) -> ppb.ListJobsResponse:
        if not request.caller:
            raise InvalidArgumentError(
                "caller is required", [FieldViolation("caller", "is required")]
            )
        size = paging.resolve_page_size(
            request.page_size, self._default_page_size, self._max_page_size
        )
        state = _STATES_BACK.get(request.state)
        fingerprint = paging.filter_fingerprint(f"jobs\x00{request.caller}\x00{request.state}")
        cursor = (
            paging.decode_page_token(request.page_token, fingerprint)
            if request.page_token
            else None
        )
        rows = await self._job_queue().list_page(request.caller, state, size + 1, cursor)
        response = ppb.ListJobsResponse(
            jobs=[job_to_proto(r, with_request=False) for r in rows[:size]]
        )
        if len(rows) > size:
            last = rows[size - 1]
            response.next_page_token = paging.encode_page_token(
                PageCursor(created_at=last.created_at, inspection_id=last.job_id), fingerprint
            )
        return response

    async def CancelJob(  # noqa: N802 - gRPC method name
        self, request: ppb.CancelJobRequest, context: Any
    ) -> ppb.CancelJobResponse:
        caller, job_id = _caller_and_job(request, "cancel")
        row = await self._job_queue().cancel(job_id, caller)
        return ppb.CancelJobResponse(job=job_to_proto(row, with_request=False))

    async def DeleteJob(  # noqa: N802 - gRPC method name
        self, request: ppb.DeleteJobRequest, context: Any
    ) -> ppb.DeleteJobResponse:
        caller, job_id = _caller_and_job(request, "delete")
        await self._job_queue().delete(job_id, caller)
        return ppb.DeleteJobResponse()

    async def ClaimJobs(  # noqa: N802 - gRPC method name
        self, request: ppb.ClaimJobsRequest, context: Any
    ) -> ppb.ClaimJobsResponse:
        violations: list[FieldViolation] = []
        if not request.worker:
            violations.append(FieldViolation("worker", "is required"))
        if not 1 <= request.max_jobs <= MAX_CLAIM:
            violations.append(FieldViolation("max_jobs", f"must be 1 to {MAX_CLAIM}"))
        lease_s = _lease_seconds(request.lease_duration, "lease_duration", violations)
        _check(violations, "claim")
        rows, reclaimed = await self._job_queue().claim(request.worker, request.max_jobs, lease_s)
        return ppb.ClaimJobsResponse(jobs=[job_to_proto(r) for r in rows], reclaimed=reclaimed)

    async def RenewJobLeases(  # noqa: N802 - gRPC method name
        self, request: ppb.RenewJobLeasesRequest, context: Any
    ) -> ppb.RenewJobLeasesResponse:
        violations: list[FieldViolation] = []
        if not 1 <= len(request.leases) <= MAX_CLAIM:
            violations.append(FieldViolation("leases", f"1 to {MAX_CLAIM} leases"))
        lease_s = _lease_seconds(request.lease_duration, "lease_duration", violations)
        leases = [
            (
                _uuid(lease.job_id, f"leases[{i}].job_id", violations),
                _uuid(lease.lease_token, f"leases[{i}].lease_token", violations),
                lease.progress.SerializeToString() if lease.HasField("progress") else None,
            )
            for i, lease in enumerate(request.leases)
        ]
        _check(violations, "renewal")
        statuses = await self._job_queue().renew(leases, lease_s)
        return ppb.RenewJobLeasesResponse(statuses=[_LEASES[s] for s in statuses])

    async def FinishJob(  # noqa: N802 - gRPC method name
        self, request: ppb.FinishJobRequest, context: Any
    ) -> ppb.FinishJobResponse:
        violations: list[FieldViolation] = []
        job_id = _uuid(request.job_id, "job_id", violations)
        token = _uuid(request.lease_token, "lease_token", violations)
        outcome = _OUTCOMES.get(request.outcome)
        if outcome is None:
            violations.append(FieldViolation("outcome", "is required"))
        if outcome == Outcome.SUCCEEDED and not request.HasField("result"):
            violations.append(FieldViolation("result", "is required with SUCCEEDED"))
        if outcome in (Outcome.FAILED, Outcome.RETRY) and not request.HasField("error"):
            violations.append(FieldViolation("error", "is required with FAILED and RETRY"))
        _check(violations, "finish")
        assert outcome is not None
        queue = self._job_queue()
        result = request.result.SerializeToString() if outcome == Outcome.SUCCEEDED else None
        error = None
        if outcome == Outcome.CANCELLED:
            error = CANCELLED_STATUS
        elif request.HasField("error"):
            error = request.error.SerializeToString()
        events: list[EventRecord] = []
        if outcome == Outcome.SUCCEEDED:
            # The repository names the job's stored export target in the recorded result.
            event = ppb.Event(
                event_id=str(uuid.uuid5(_RESULT_EVENTS, str(job_id))),
                inspection_id=request.result.inspection_id,
                result_recorded=ppb.ResultRecorded(inspection=request.result),
            )
            events = await asyncio.to_thread(
                conversion.events_from_proto, ppb.RecordEventsRequest(events=[event]), 1
            )
        row = await queue.finish(job_id, token, outcome, result, error, events)
        return ppb.FinishJobResponse(job=job_to_proto(row, with_request=False))

    async def ClaimWebhooks(  # noqa: N802 - gRPC method name
        self, request: ppb.ClaimWebhooksRequest, context: Any
    ) -> ppb.ClaimWebhooksResponse:
        violations: list[FieldViolation] = []
        if not request.worker:
            violations.append(FieldViolation("worker", "is required"))
        if not 1 <= request.max_deliveries <= MAX_CLAIM:
            violations.append(FieldViolation("max_deliveries", f"must be 1 to {MAX_CLAIM}"))
        lease_s = _lease_seconds(request.lease_duration, "lease_duration", violations)
        _check(violations, "claim")
        found = await self._job_queue().claim_webhooks(request.max_deliveries, lease_s)
        return ppb.ClaimWebhooksResponse(
            deliveries=[
                ppb.WebhookDelivery(
                    webhook_id=d.webhook_id,
                    url=d.url,
                    attempt=d.attempt,
                    lease_token=str(d.lease_token),
                    job=job_to_proto(d.job, with_request=False),
                )
                for d in found
            ]
        )

    async def ReportWebhook(  # noqa: N802 - gRPC method name
        self, request: ppb.ReportWebhookRequest, context: Any
    ) -> ppb.ReportWebhookResponse:
        violations: list[FieldViolation] = []
        if not request.webhook_id:
            violations.append(FieldViolation("webhook_id", "is required"))
        token = _uuid(request.lease_token, "lease_token", violations)
        outcome = _WEBHOOK_OUTCOMES.get(request.outcome)
        if outcome is None:
            violations.append(FieldViolation("outcome", "is required"))
        _check(violations, "report")
        assert outcome is not None
        state = await self._job_queue().report_webhook(
            request.webhook_id,
            token,
            outcome,
            request.error[:MAX_WEBHOOK_ERROR_CHARS].replace("\x00", ""),
        )
        return ppb.ReportWebhookResponse(callback=_delivery_to_proto(state))


def _delivery_to_proto(state: DeliveryState) -> opb.CallbackDelivery:
    return opb.CallbackDelivery(
        state=_CALLBACK_STATES[state.state],
        url=state.url,
        webhook_id=state.webhook_id,
        attempts=state.attempts,
        last_error=state.last_error,
        next_attempt_time=_ts(state.next_attempt_at),
    )
