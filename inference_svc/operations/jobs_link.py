"""The inference service's client of the persistence service's job RPCs: the only way this
service reaches the job queue (it never touches Postgres). The persistence service's refusals
become the inspection service's domain errors here, so the servicers and the worker see one
vocabulary."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from rpi.inspection.v1 import inspection_pb2 as pb
from rpi.inspection.v1 import operations_pb2 as opb
from rpi.persistence.v1 import persistence_pb2 as ppb
from rpi.persistence.v1 import persistence_pb2_grpc as ppb_grpc

from inference_svc.domain.errors import ErrorKind, InspectionError, Reason, Stage
from svc_common.tls import ClientTLS

_RPC_TIMEOUT_S = 10.0
# A stored request with inline images travels in CreateJob and ClaimJobs: one request (at most
# MAX_JOB_REQUEST_BYTES) per message, within the persistence service's default message limit.
MAX_JOB_REQUEST_BYTES = 32 * 1024 * 1024
_OPTIONS = [
    ("grpc.max_receive_message_length", 2 * MAX_JOB_REQUEST_BYTES),
    ("grpc.max_send_message_length", 2 * MAX_JOB_REQUEST_BYTES),
]


def _reason(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


def translate(error: grpc.aio.AioRpcError) -> InspectionError:
    """The persistence service's answer as this service's error."""
    code, reason, message = error.code(), _reason(error), error.details() or ""
    if code == grpc.StatusCode.NOT_FOUND:
        return InspectionError(ErrorKind.NOT_FOUND, Reason.OPERATION_NOT_FOUND, message)
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return InspectionError(
            ErrorKind.ALREADY_EXISTS, Reason.REQUEST_ID_REUSED, message, stage=Stage.VALIDATE
        )
    if code == grpc.StatusCode.FAILED_PRECONDITION and reason == "JOB_NOT_FINISHED":
        return InspectionError(
            ErrorKind.FAILED_PRECONDITION, Reason.OPERATION_NOT_FINISHED, message
        )
    return InspectionError(
        ErrorKind.UNAVAILABLE,
        Reason.JOBS_UNAVAILABLE,
        "the job queue cannot be reached; retry",
        stage=Stage.ADMIT,
        retry_after_seconds=1.0,
    )


class LeaseLost(Exception):  # noqa: N818 - reads as "the lease is lost"
    """FinishJob found the lease taken over: another run owns the job now."""


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromMilliseconds(int(seconds * 1000))
    return d


class JobsLink:
    """Over its own channel, with the event link's TLS; a renewed certificate is picked up on
    the next call (as PersistenceReuseLookup does)."""

    def __init__(
        self,
        target: str,
        interceptors: Sequence[Any] | None = None,
        tls: ClientTLS | None = None,
    ) -> None:
        self._target = target
        self._interceptors = list(interceptors or [])
        self._tls = tls
        self._tls_seen = tls.signature() if tls else None
        self._channel = self._open()
        self._stub = ppb_grpc.PersistenceServiceStub(self._channel)

    def _open(self) -> grpc.aio.Channel:
        if self._tls is None:
            return grpc.aio.insecure_channel(
                self._target, options=_OPTIONS, interceptors=self._interceptors
            )
        return grpc.aio.secure_channel(
            self._target,
            self._tls.channel_credentials(),
            options=_OPTIONS,
            interceptors=self._interceptors,
        )

    async def _stub_now(self) -> ppb_grpc.PersistenceServiceStub:
        if self._tls is not None and self._tls.signature() != self._tls_seen:
            old, self._channel = self._channel, self._open()
            self._tls_seen = self._tls.signature()
            self._stub = ppb_grpc.PersistenceServiceStub(self._channel)
            await old.close(grace=1.0)
        return self._stub

    async def _call(self, method: str, request: Any, rpc_timeout_s: float = _RPC_TIMEOUT_S) -> Any:
        stub = await self._stub_now()
        try:
            # wait_for_ready: a persistence service that is restarting is waited for (within
            # the timeout) rather than reported unavailable on the first reconnect attempt.
            return await getattr(stub, method)(request, timeout=rpc_timeout_s, wait_for_ready=True)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION and (
                _reason(error) == "LEASE_LOST"
            ):
                raise LeaseLost(method) from error
            raise translate(error) from error

    async def create(
        self,
        caller: str,
        request_id: str,
        request_sha256: bytes,
        request: pb.InspectRequest,
        callback_url: str,
        export_uri: str = "",
    ) -> tuple[ppb.Job, bool]:
        reply = await self._call(
            "CreateJob",
            ppb.CreateJobRequest(
                caller=caller,
                request_id=request_id,
                request_sha256=request_sha256,
                request=request,
                callback_url=callback_url,
                export_uri=export_uri,
            ),
        )
        return reply.job, reply.created

    async def get(self, caller: str, job_id: str, rpc_timeout_s: float = _RPC_TIMEOUT_S) -> ppb.Job:
        reply = await self._call(
            "GetJob", ppb.GetJobRequest(caller=caller, job_id=job_id), rpc_timeout_s=rpc_timeout_s
        )
        return reply.job  # type: ignore[no-any-return]

    async def list_jobs(
        self, caller: str, page_size: int, page_token: str, state: int = 0
    ) -> tuple[list[ppb.Job], str]:
        reply = await self._call(
            "ListJobs",
            ppb.ListJobsRequest(
                caller=caller,
                page_size=page_size,
                page_token=page_token,
                state=state,  # type: ignore[arg-type]
            ),
        )
        return list(reply.jobs), reply.next_page_token

    async def cancel(self, caller: str, job_id: str) -> ppb.Job:
        reply = await self._call("CancelJob", ppb.CancelJobRequest(caller=caller, job_id=job_id))
        return reply.job  # type: ignore[no-any-return]

    async def delete(self, caller: str, job_id: str) -> None:
        await self._call("DeleteJob", ppb.DeleteJobRequest(caller=caller, job_id=job_id))

    async def claim(self, worker: str, max_jobs: int, lease_s: float) -> list[ppb.Job]:
        reply = await self._call(
            "ClaimJobs",
            ppb.ClaimJobsRequest(
                worker=worker, max_jobs=max_jobs, lease_duration=_duration(lease_s)
            ),
        )
        return list(reply.jobs)

    async def renew(
        self, leases: list[tuple[str, str, opb.InspectionProgress | None]], lease_s: float
    ) -> list[int]:
        reply = await self._call(
            "RenewJobLeases",
            ppb.RenewJobLeasesRequest(
                leases=[
                    ppb.JobLease(job_id=job, lease_token=token, progress=progress)
                    for job, token, progress in leases
                ],
                lease_duration=_duration(lease_s),
            ),
        )
        return list(reply.statuses)

    async def finish(
        self,
        job_id: str,
        lease_token: str,
        outcome: int,
        result: pb.Inspection | None = None,
        error: status_pb2.Status | None = None,
    ) -> ppb.Job:
        reply = await self._call(
            "FinishJob",
            ppb.FinishJobRequest(
                job_id=job_id,
                lease_token=lease_token,
                outcome=outcome,  # type: ignore[arg-type]
                result=result,
                error=error,
            ),
        )
        return reply.job  # type: ignore[no-any-return]

    async def claim_webhooks(
        self, worker: str, max_deliveries: int, lease_s: float
    ) -> list[ppb.WebhookDelivery]:
        reply = await self._call(
            "ClaimWebhooks",
            ppb.ClaimWebhooksRequest(
                worker=worker, max_deliveries=max_deliveries, lease_duration=_duration(lease_s)
            ),
        )
        return list(reply.deliveries)

    async def report_webhook(
        self, webhook_id: str, lease_token: str, outcome: int, error: str
    ) -> opb.CallbackDelivery:
        reply = await self._call(
            "ReportWebhook",
            ppb.ReportWebhookRequest(
                webhook_id=webhook_id,
                lease_token=lease_token,
                outcome=outcome,  # type: ignore[arg-type]
                error=error,
            ),
        )
        return reply.callback  # type: ignore[no-any-return]

    async def close(self) -> None:
        await self._channel.close(None)
