"""The one scheduler (scheduler.py): admission, order, and rows leaving the queue."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from inference_svc.engine.api import EngineNotReady, EngineOverloaded, GenerationRequest
from inference_svc.engine.scheduler import Job, Prepared, Scheduler

from .conftest import Recorder


def _request(name: str, deadline: float | None = None) -> GenerationRequest:
    return GenerationRequest(name, "hi", np.zeros((0,), np.uint8), (), 4, deadline=deadline)


def _job(name: str) -> tuple[Job, Recorder]:
    listener = Recorder()
    prepared = Prepared([1, 2], None, 4, 0, None, None)
    future = asyncio.get_running_loop().create_future()
    return Job(_request(name), listener, prepared, future), listener


async def test_admission_is_bounded_and_counts_requests_being_prepared() -> None:
    scheduler = Scheduler(max_queue_size=2)
    first, _ = _job("a")
    scheduler.enqueue(first)
    with scheduler.preparing(), pytest.raises(EngineOverloaded):
        scheduler.check_admission(_request("b"))
    scheduler.check_admission(_request("b"))  # the prepared place is free again
    with pytest.raises(TimeoutError):
        scheduler.check_admission(_request("late", deadline=time.monotonic() - 1))


async def test_first_come_first_served_and_positions_move_up() -> None:
    scheduler = Scheduler(max_queue_size=8)
    jobs = [_job(name) for name in "abc"]
    for job, _ in jobs:
        scheduler.enqueue(job)
    assert [listener.queued for _, listener in jobs] == [[1], [2], [3]]
    assert scheduler.take() is jobs[0][0]
    scheduler.report_positions()
    assert [listener.queued for _, listener in jobs[1:]] == [[2, 1], [3, 2]]
    assert len(scheduler) == 2 and scheduler.first() is jobs[1][0]


async def test_abandoned_and_answered_jobs_are_never_handed_out() -> None:
    scheduler = Scheduler(max_queue_size=8)
    (gone, _), (answered, _), (kept, kept_listener) = (_job(name) for name in "xyz")
    for job in (gone, answered, kept):
        scheduler.enqueue(job)
    scheduler.abandon(gone)
    assert gone.cancelled and len(scheduler) == 2
    assert kept_listener.queued == [3, 2]  # moved up when the abandoned job left
    answered.future.cancel()  # e.g. its caller's deadline fired while it waited
    assert scheduler.take() is kept
    assert scheduler.take() is None
    scheduler.abandon(kept)  # already taken: only marked, for the runner to retire its row
    assert kept.cancelled


async def test_stopping_answers_every_queued_job() -> None:
    scheduler = Scheduler(max_queue_size=8)
    jobs = [_job(name)[0] for name in "ab"]
    for job in jobs:
        scheduler.enqueue(job)
    scheduler.drain(EngineNotReady("engine stopping"))
    assert len(scheduler) == 0
    for job in jobs:
        with pytest.raises(EngineNotReady):
            job.future.result()
