"""The job queue of the persistence service against a real PostgreSQL: idempotent submits,
claims under leases (concurrent claimers never share a job), lease loss and reclaim, attempts,
cancel, delete, retention and paging, all through its gRPC API."""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import asyncpg
import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import code_pb2, status_pb2
from rpi.inspection.v1 import inspection_pb2 as pb
from rpi.inspection.v1 import operations_pb2 as opb
from rpi.persistence.v1 import persistence_pb2 as ppb
from rpi.persistence.v1 import persistence_pb2_grpc as ppb_grpc

from persistence_svc.app import PersistenceApp
from tests.operations.conftest import MAX_ATTEMPTS
from tests.support.errors import error_reason

Stub = ppb_grpc.PersistenceServiceStub
LEASE = duration_pb2.Duration(seconds=30)


def _request(**overrides: object) -> pb.InspectRequest:
    values: dict[str, object] = {
        "inspection_id": str(uuid.uuid4()),
        "shipping_id": "SHIP-Q",
        "product_name": "mug",
    }
    values.update(overrides)
    return pb.InspectRequest(**values)  # type: ignore[arg-type]


async def _create(
    stub: Stub, caller: str = "alice", request_id: str = "", body: str = "a", **kw: object
) -> ppb.CreateJobResponse:
    return await stub.CreateJob(
        ppb.CreateJobRequest(
            caller=caller,
            request_id=request_id,
            request_sha256=hashlib.sha256(body.encode()).digest(),
            request=_request(**kw),
        )
    )


async def _claim(stub: Stub, worker: str = "w", max_jobs: int = 1) -> ppb.ClaimJobsResponse:
    return await stub.ClaimJobs(
        ppb.ClaimJobsRequest(worker=worker, max_jobs=max_jobs, lease_duration=LEASE)
    )


async def _drain_queue(stub: Stub) -> None:
    """Claims and finishes whatever earlier tests left queued, so each test sees its own jobs."""
    while True:
        claimed = await stub.ClaimJobs(
            ppb.ClaimJobsRequest(worker="cleaner", max_jobs=100, lease_duration=LEASE)
        )
        if not claimed.jobs:
            return
        for job in claimed.jobs:
            await stub.FinishJob(
                ppb.FinishJobRequest(
                    job_id=job.job_id,
                    lease_token=job.lease_token,
                    outcome=ppb.JOB_OUTCOME_CANCELLED,
                )
            )


async def _expire_lease(db: asyncpg.Connection, job_id: str) -> None:
    """The lease's end moved into the past: what a worker that stopped renewing leaves."""
    await db.execute(
        "UPDATE inspection_jobs SET lease_expires_at = now() - interval '1 second'"
        " WHERE job_id = $1",
        uuid.UUID(job_id),
    )


async def test_same_request_id_same_job_other_request_already_exists(queue_stub: Stub) -> None:
    first = await _create(queue_stub, request_id="order-1", body="one")
    again = await _create(queue_stub, request_id="order-1", body="one")
    assert first.created and not again.created
    assert again.job.job_id == first.job.job_id
    assert again.job.inspection_id == first.job.inspection_id

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _create(queue_stub, request_id="order-1", body="another request")
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_reason(caught.value) == "REQUEST_ID_REUSED"

    # The key is the caller's: another caller's same key is another job, and the first job is
    # invisible to it.
    other = await _create(queue_stub, caller="bob", request_id="order-1", body="one")
    assert other.created and other.job.job_id != first.job.job_id
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await queue_stub.GetJob(ppb.GetJobRequest(caller="bob", job_id=first.job.job_id))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_reason(caught.value) == "JOB_NOT_FOUND"


async def test_concurrent_claimers_never_share_a_job(queue_app: PersistenceApp) -> None:
    async with grpc.aio.insecure_channel(queue_app.target) as channel:
        stub = Stub(channel)
        await _drain_queue(stub)
        created = {(await _create(stub)).job.job_id for _ in range(24)}

        async def claimer(name: str) -> list[str]:
            # Each claimer on its own channel: separate connections, truly concurrent claims.
            async with grpc.aio.insecure_channel(queue_app.target) as own:
                got: list[str] = []
                for _ in range(3):
                    reply = await Stub(own).ClaimJobs(
                        ppb.ClaimJobsRequest(worker=name, max_jobs=3, lease_duration=LEASE)
                    )
                    got += [j.job_id for j in reply.jobs]
                return got

        claims = await asyncio.gather(*(claimer(f"w{i}") for i in range(4)))
        everything = [job for c in claims for job in c]
        assert len(everything) == len(set(everything)), "a job was claimed twice"
        assert set(everything) == created
        await _drain_queue(stub)


async def test_queued_in_submit_order_with_positions(queue_stub: Stub) -> None:
    await _drain_queue(queue_stub)
    jobs = [(await _create(queue_stub, caller="carol")).job for _ in range(3)]
    positions = [
        (await queue_stub.GetJob(ppb.GetJobRequest(caller="carol", job_id=j.job_id))).job
        for j in jobs
    ]
    assert [p.queue_position for p in positions] == [0, 1, 2]
    assert all(p.state == opb.OPERATION_STATE_QUEUED for p in positions)
    claimed = await queue_stub.ClaimJobs(
        ppb.ClaimJobsRequest(worker="w", max_jobs=1, lease_duration=LEASE)
    )
    assert [j.job_id for j in claimed.jobs] == [jobs[0].job_id]
    assert claimed.jobs[0].request.inspection_id == jobs[0].inspection_id
    await _drain_queue(queue_stub)


async def test_lost_lease_is_claimed_again_and_the_old_worker_is_locked_out(
    queue_stub: Stub, jobs_db: asyncpg.Connection
) -> None:
    await _drain_queue(queue_stub)
    job = (await _create(queue_stub)).job
    first = (await _claim(queue_stub, "a")).jobs[0]
    assert first.attempts == 1
    await _expire_lease(jobs_db, job.job_id)

    again = await queue_stub.ClaimJobs(
        ppb.ClaimJobsRequest(worker="b", max_jobs=5, lease_duration=LEASE)
    )
    assert [j.job_id for j in again.jobs] == [job.job_id]
    assert again.reclaimed == 1
    second = again.jobs[0]
    assert second.attempts == 2 and second.lease_token != first.lease_token

    renewed = await queue_stub.RenewJobLeases(
        ppb.RenewJobLeasesRequest(
            leases=[
                ppb.JobLease(job_id=job.job_id, lease_token=first.lease_token),
                ppb.JobLease(
                    job_id=job.job_id,
                    lease_token=second.lease_token,
                    progress=opb.InspectionProgress(answers_ready=2),
                ),
            ],
            lease_duration=LEASE,
        )
    )
    assert list(renewed.statuses) == [ppb.LEASE_STATUS_LOST, ppb.LEASE_STATUS_HELD]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await queue_stub.FinishJob(
            ppb.FinishJobRequest(
                job_id=job.job_id,
                lease_token=first.lease_token,
                outcome=ppb.JOB_OUTCOME_SUCCEEDED,
                result=pb.Inspection(inspection_id=job.inspection_id),
            )
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(caught.value) == "LEASE_LOST"

    done = await queue_stub.FinishJob(
        ppb.FinishJobRequest(
            job_id=job.job_id,
            lease_token=second.lease_token,
            outcome=ppb.JOB_OUTCOME_SUCCEEDED,
            result=pb.Inspection(inspection_id=job.inspection_id, shipping_id="SHIP-OK"),
        )
    )
    assert done.job.state == opb.OPERATION_STATE_SUCCEEDED
    assert done.job.result.shipping_id == "SHIP-OK"
    assert done.job.progress.answers_ready == 2
    assert done.job.HasField("end_time")


async def test_a_job_lost_max_attempts_times_ends_failed(
    queue_app: PersistenceApp, queue_stub: Stub, jobs_db: asyncpg.Connection
) -> None:
    await _drain_queue(queue_stub)
    job = (await _create(queue_stub)).job
    for attempt in range(1, MAX_ATTEMPTS + 1):
        claimed = await queue_stub.ClaimJobs(
            ppb.ClaimJobsRequest(worker=f"w{attempt}", max_jobs=1, lease_duration=LEASE)
        )
        assert [(j.job_id, j.attempts) for j in claimed.jobs] == [(job.job_id, attempt)]
        await _expire_lease(jobs_db, job.job_id)
    # Not claimable any more; the sweep ends it.
    claimed = await queue_stub.ClaimJobs(
        ppb.ClaimJobsRequest(worker="late", max_jobs=1, lease_duration=LEASE)
    )
    assert not claimed.jobs
    assert queue_app.jobs is not None
    ended, _ = await queue_app.jobs.sweep_once()
    assert [str(e.job_id) for e in ended] == [job.job_id]
    got = (await queue_stub.GetJob(ppb.GetJobRequest(caller="alice", job_id=job.job_id))).job
    assert got.state == opb.OPERATION_STATE_FAILED
    assert got.error.code == code_pb2.ABORTED
    assert got.attempts == MAX_ATTEMPTS


async def test_retryable_failures_run_again_until_max_attempts(queue_stub: Stub) -> None:
    await _drain_queue(queue_stub)
    job = (await _create(queue_stub)).job
    error = status_pb2.Status(code=code_pb2.UNAVAILABLE, message="engine went away")
    states = []
    for _ in range(MAX_ATTEMPTS):
        claimed = (
            await queue_stub.ClaimJobs(
                ppb.ClaimJobsRequest(worker="w", max_jobs=1, lease_duration=LEASE)
            )
        ).jobs[0]
        finished = await queue_stub.FinishJob(
            ppb.FinishJobRequest(
                job_id=claimed.job_id,
                lease_token=claimed.lease_token,
                outcome=ppb.JOB_OUTCOME_RETRY,
                error=error,
            )
        )
        states.append(finished.job.state)
    assert states == [opb.OPERATION_STATE_QUEUED, opb.OPERATION_STATE_FAILED]
    got = (await queue_stub.GetJob(ppb.GetJobRequest(caller="alice", job_id=job.job_id))).job
    assert got.error.message == "engine went away"


async def test_cancel_queued_never_runs_cancel_running_reaches_the_worker(
    queue_stub: Stub,
) -> None:
    await _drain_queue(queue_stub)
    queued = (await _create(queue_stub)).job
    cancelled = await queue_stub.CancelJob(
        ppb.CancelJobRequest(caller="alice", job_id=queued.job_id)
    )
    assert cancelled.job.state == opb.OPERATION_STATE_CANCELLED
    assert cancelled.job.error.code == code_pb2.CANCELLED
    assert not (
        await queue_stub.ClaimJobs(
            ppb.ClaimJobsRequest(worker="w", max_jobs=10, lease_duration=LEASE)
        )
    ).jobs

    running = (await _create(queue_stub)).job
    claimed = (await _claim(queue_stub)).jobs[0]
    flagged = await queue_stub.CancelJob(
        ppb.CancelJobRequest(caller="alice", job_id=running.job_id)
    )
    assert flagged.job.state == opb.OPERATION_STATE_RUNNING and flagged.job.cancel_requested
    renewed = await queue_stub.RenewJobLeases(
        ppb.RenewJobLeasesRequest(
            leases=[ppb.JobLease(job_id=claimed.job_id, lease_token=claimed.lease_token)],
            lease_duration=LEASE,
        )
    )
    assert list(renewed.statuses) == [ppb.LEASE_STATUS_CANCEL_REQUESTED]
    done = await queue_stub.FinishJob(
        ppb.FinishJobRequest(
            job_id=claimed.job_id,
            lease_token=claimed.lease_token,
            outcome=ppb.JOB_OUTCOME_CANCELLED,
        )
    )
    assert done.job.state == opb.OPERATION_STATE_CANCELLED


async def test_delete_only_when_finished_and_the_sweep_forgets_expired_jobs(
    queue_app: PersistenceApp, queue_stub: Stub, jobs_db: asyncpg.Connection
) -> None:
    await _drain_queue(queue_stub)
    job = (await _create(queue_stub, caller="dave")).job
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await queue_stub.DeleteJob(ppb.DeleteJobRequest(caller="dave", job_id=job.job_id))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(caught.value) == "JOB_NOT_FINISHED"
    await queue_stub.CancelJob(ppb.CancelJobRequest(caller="dave", job_id=job.job_id))
    await queue_stub.DeleteJob(ppb.DeleteJobRequest(caller="dave", job_id=job.job_id))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await queue_stub.GetJob(ppb.GetJobRequest(caller="dave", job_id=job.job_id))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    kept = (await _create(queue_stub, caller="dave")).job
    await queue_stub.CancelJob(ppb.CancelJobRequest(caller="dave", job_id=kept.job_id))
    await jobs_db.execute(
        "UPDATE inspection_jobs SET expire_at = now() - interval '1 second' WHERE job_id = $1",
        uuid.UUID(kept.job_id),
    )
    assert queue_app.jobs is not None
    _, deleted = await queue_app.jobs.sweep_once()
    assert deleted == 1
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await queue_stub.GetJob(ppb.GetJobRequest(caller="dave", job_id=kept.job_id))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_is_per_caller_newest_first_in_pages(queue_stub: Stub) -> None:
    made = [(await _create(queue_stub, caller="erin")).job.job_id for _ in range(5)]
    await _create(queue_stub, caller="frank")
    seen: list[str] = []
    token = ""
    while True:
        page = await queue_stub.ListJobs(
            ppb.ListJobsRequest(caller="erin", page_size=2, page_token=token)
        )
        seen += [j.job_id for j in page.jobs]
        assert all(not j.HasField("request") for j in page.jobs)
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(made))
    queued_only = await queue_stub.ListJobs(
        ppb.ListJobsRequest(caller="erin", state=opb.OPERATION_STATE_SUCCEEDED)
    )
    assert not queued_only.jobs
    await _drain_queue(queue_stub)


async def test_bad_calls_are_invalid_argument(queue_stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await queue_stub.ClaimJobs(ppb.ClaimJobsRequest(worker="", max_jobs=0))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await queue_stub.GetJob(ppb.GetJobRequest(caller="alice", job_id="nope"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await queue_stub.CreateJob(ppb.CreateJobRequest(caller="alice", request=_request()))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_result_finish_job_records_names_the_jobs_export_target(
    queue_stub: Stub,
) -> None:
    # FinishJob records the result itself (the replica's spool may never deliver its copy):
    # that record must name the export target fixed at submit, as the spooled copy does.
    await _drain_queue(queue_stub)
    target = "s3://partner-results/acme/SHIP-Q/x.json"
    created = await queue_stub.CreateJob(
        ppb.CreateJobRequest(
            caller="alice",
            request_sha256=hashlib.sha256(b"export").digest(),
            request=_request(),
            export_uri=target,
        )
    )
    (job,) = (await _claim(queue_stub)).jobs
    assert job.job_id == created.job.job_id
    await queue_stub.FinishJob(
        ppb.FinishJobRequest(
            job_id=job.job_id,
            lease_token=job.lease_token,
            outcome=ppb.JOB_OUTCOME_SUCCEEDED,
            result=pb.Inspection(inspection_id=job.inspection_id, shipping_id="SHIP-Q"),
        )
    )
    record = await queue_stub.GetInspection(
        ppb.GetInspectionRequest(inspection_id=job.inspection_id)
    )
    assert record.inspection.export_uri == target
