"""The worker that runs queued asynchronous inspections on this replica.

Every JOB_POLL_INTERVAL_S it renews the leases of the jobs it runs (learning of cancels and of
leases another replica took over) and, while its engine has a free row, claims more. A job
runs through the same pipeline, admission and engine as a synchronous call; ``run`` (the gRPC
layer's translation, inference_svc.grpc_api.async_jobs) does that. Each run is an inner task,
so a cancel, a lost lease or a drain stops it the way a client's disconnect stops a call: the
engine row leaves at its next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from enum import Enum

from google.rpc import code_pb2, status_pb2
from rpi.inspection.v1 import inspection_pb2 as pb
from rpi.inspection.v1 import operations_pb2 as opb
from rpi.persistence.v1 import persistence_pb2 as ppb

from inference_svc.domain.errors import InspectionError
from inference_svc.operations.jobs_link import JobsLink, LeaseLost
from svc_common.job_metrics import JobWorkerMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOutcome:
    """How one run ended: a result, or an error (retryable: another run may succeed)."""

    result: pb.Inspection | None = None
    error: status_pb2.Status | None = None
    retryable: bool = False


ProgressSink = Callable[[opb.InspectionProgress], None]
JobRun = Callable[[ppb.Job, ProgressSink], Coroutine[None, None, RunOutcome]]


class _Stop(Enum):
    CANCEL = "cancel"
    LOST = "lease_lost"
    DRAIN = "drain"


@dataclass
class _Running:
    job: ppb.Job
    task: asyncio.Task[RunOutcome] | None = None
    # Ends the run on the queue; held here, as the loop keeps only weak references to tasks.
    settle: asyncio.Task[None] | None = None
    progress: opb.InspectionProgress | None = None
    stop: _Stop | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def halt(self, why: _Stop) -> None:
        if self.stop is None:
            self.stop = why
        if self.task is not None:
            self.task.cancel()


_DRAINED = status_pb2.Status(
    code=code_pb2.UNAVAILABLE, message="the replica running the inspection shut down"
)
_FINISH_TRIES = 5


class JobWorker:
    def __init__(
        self,
        link: JobsLink,
        run: JobRun,
        *,
        room: Callable[[int], int],
        name: str,
        lease_s: float,
        poll_s: float,
        metrics: JobWorkerMetrics | None = None,
    ) -> None:
        """``room(running_here)``: how many more jobs this replica may take now."""
        self._link = link
        self._run = run
        self._room = room
        self._name = name
        self._lease_s = lease_s
        self._poll_s = poll_s
        self._metrics = metrics
        self._running: dict[str, _Running] = {}
        self._wake = asyncio.Event()
        self._claiming = True
        self._loop_task: asyncio.Task[None] | None = None

    @property
    def running(self) -> int:
        return len(self._running)

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop(), name="job-worker")

    def wake(self) -> None:
        """Look for work now (a job was submitted, or a slot freed)."""
        self._wake.set()

    def cancel_local(self, job_id: str) -> bool:
        """Stops the job at once when it runs here (a cancel that arrived at this replica)."""
        entry = self._running.get(job_id)
        if entry is None:
            return False
        entry.halt(_Stop.CANCEL)
        return True

    async def stop(self, grace_s: float) -> None:
        """Claims nothing more; runs still going after ``grace_s`` are stopped and queued
        again for another replica (the drain's grace is spent waiting for them elsewhere)."""
        self._claiming = False
        entries = list(self._running.values())
        if entries:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    await asyncio.gather(*(e.done.wait() for e in entries))
        for entry in list(self._running.values()):
            entry.halt(_Stop.DRAIN)
        for entry in list(self._running.values()):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await entry.done.wait()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task

    async def _loop(self) -> None:
        failures = 0
        while True:
            try:
                await self._renew()
                # One job per claim: a request may carry inline images of many MiB.
                while self._claiming and self._room(len(self._running)) > 0:
                    claimed = await self._link.claim(self._name, 1, self._lease_s)
                    if not claimed:
                        break
                    self._launch(claimed[0])
                    # Let the run take its admission slot (it does before its first await), so
                    # the next room() counts it among the engine's rows.
                    await asyncio.sleep(0)
                failures = 0
            except (InspectionError, LeaseLost) as exc:
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    log.warning("job queue unreachable: %s", exc, extra={"failures": failures})
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_s * min(failures + 1, 10)):
                    await self._wake.wait()

    async def _renew(self) -> None:
        entries = [e for e in self._running.values() if e.stop is None]
        if not entries:
            return
        statuses: list[int] = await self._link.renew(
            [(e.job.job_id, e.job.lease_token, e.progress) for e in entries], self._lease_s
        )
        for entry, status in zip(entries, statuses, strict=True):
            if status == ppb.LEASE_STATUS_CANCEL_REQUESTED:
                entry.halt(_Stop.CANCEL)
            elif status == ppb.LEASE_STATUS_LOST:
                entry.halt(_Stop.LOST)

    def _launch(self, job: ppb.Job) -> None:
        entry = _Running(job)
        self._running[job.job_id] = entry
        if self._metrics is not None:
            self._metrics.running.set(len(self._running))
            if job.attempts == 1:
                waited = time.time() - job.create_time.ToMicroseconds() / 1e6
                self._metrics.wait_seconds.observe(max(0.0, waited))

        def progress(update: opb.InspectionProgress) -> None:
            entry.progress = update

        entry.task = asyncio.create_task(self._run(job, progress), name=f"job-{job.job_id}")
        entry.settle = asyncio.create_task(self._settle(entry), name=f"job-settle-{job.job_id}")

    async def _settle(self, entry: _Running) -> None:
        job = entry.job
        assert entry.task is not None
        outcome_label = "lease_lost"
        try:
            try:
                outcome = await asyncio.shield(entry.task)
            except asyncio.CancelledError:
                if not entry.task.cancelled():
                    raise
                outcome = None
            if entry.stop == _Stop.LOST:
                return
            if outcome is None and entry.stop == _Stop.CANCEL:
                outcome_label = "cancelled"
                await self._finish(job, ppb.JOB_OUTCOME_CANCELLED)
            elif outcome is None:
                outcome_label = "retry"
                await self._finish(job, ppb.JOB_OUTCOME_RETRY, error=_DRAINED)
            elif outcome.result is not None:
                outcome_label = "succeeded"
                await self._finish(job, ppb.JOB_OUTCOME_SUCCEEDED, result=outcome.result)
            else:
                outcome_label = "retry" if outcome.retryable else "failed"
                await self._finish(
                    job,
                    ppb.JOB_OUTCOME_RETRY if outcome.retryable else ppb.JOB_OUTCOME_FAILED,
                    error=outcome.error,
                )
        except LeaseLost:
            outcome_label = "lease_lost"
        except Exception:
            log.exception("could not finish job", extra={"job_id": job.job_id})
        finally:
            del self._running[job.job_id]
            entry.done.set()
            if self._metrics is not None:
                self._metrics.running.set(len(self._running))
                self._metrics.runs.labels(outcome=outcome_label).inc()
            self._wake.set()

    async def _finish(
        self,
        job: ppb.Job,
        outcome: int,
        result: pb.Inspection | None = None,
        error: status_pb2.Status | None = None,
    ) -> None:
        """FinishJob, retried while the queue is unreachable: until the lease runs out the
        job stays this replica's."""
        for attempt in range(_FINISH_TRIES):
            try:
                await self._link.finish(job.job_id, job.lease_token, outcome, result, error)
                return
            except InspectionError:
                if attempt == _FINISH_TRIES - 1:
                    raise
                await asyncio.sleep(min(self._lease_s / _FINISH_TRIES, 0.2 * 2**attempt))
