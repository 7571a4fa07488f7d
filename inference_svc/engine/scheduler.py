"""Admission, order and hand-out of requests: the one queue every runner takes rows from.

Admission is bounded (``max_queue_size`` queued or being prepared, else EngineOverloaded) and
refuses requests already past their deadline; the order is first come, first served (requests
carry no priority; process niceness, inference_svc/priority.py, is about threads, not requests);
rows leave the queue when taken, abandoned (cancelled, timed out) or the engine stops. The
queue is a deque: the event loop appends and removes, model threads pop (atomic operations),
and positions are reported from a snapshot.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .api import EngineOverloaded, GenerationListener, GenerationRequest, GenerationResult

if TYPE_CHECKING:
    from .vision_cache import VisionPlan

logger = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A request made ready for the model (on a helper thread, before it is queued)."""

    input_ids: list[int]
    pixel_values: torch.Tensor | None
    max_new_tokens: int
    min_new_tokens: int
    grammar: str | None
    matcher: Any | None
    # With the vision-feature cache: the features held for its images (pixel_values then
    # holds only the tiles still to encode).
    vision: VisionPlan | None = None


@dataclass(eq=False)
class Job:
    request: GenerationRequest
    listener: GenerationListener
    prepared: Prepared
    future: asyncio.Future[GenerationResult]
    enqueued_at: float = field(default_factory=time.monotonic)
    position: int = 0
    # Set on the event loop, read by the model thread (a plain bool is enough under the GIL).
    cancelled: bool = False

    @property
    def live(self) -> bool:
        """Someone still waits for this job's answer."""
        return not self.cancelled and not self.future.done()


class Scheduler:
    def __init__(self, max_queue_size: int) -> None:
        self.max_queue_size = max_queue_size
        self._queue: collections.deque[Job] = collections.deque()
        self._reserved = 0  # requests being prepared, counted against the bound

    def __len__(self) -> int:
        return len(self._queue)

    def first(self) -> Job:
        return self._queue[0]

    def check_admission(self, request: GenerationRequest) -> None:
        if len(self._queue) + self._reserved >= self.max_queue_size:
            raise EngineOverloaded(f"queue full ({self.max_queue_size})")
        if request.deadline is not None and request.deadline <= time.monotonic():
            raise TimeoutError("deadline passed before generation")

    @contextlib.contextmanager
    def preparing(self) -> Iterator[None]:
        """Holds a queue place while the request is prepared."""
        self._reserved += 1
        try:
            yield
        finally:
            self._reserved -= 1

    def enqueue(self, job: Job) -> None:
        self._queue.append(job)
        job.position = len(self._queue)
        safe(job.listener.on_queued, job.position)

    def take(self) -> Job | None:
        """The next job someone still waits for (any thread); None when the queue is empty."""
        while True:
            try:
                job = self._queue.popleft()
            except IndexError:
                return None
            if job.live:
                return job

    def abandon(self, job: Job) -> None:
        """The caller left: the job leaves the queue (or its row, at the next step)."""
        job.cancelled = True
        try:
            self._queue.remove(job)
        except ValueError:  # already taken for generation
            return
        self.report_positions()

    def report_positions(self) -> None:
        # A snapshot: a model thread may pop from the queue meanwhile (deque operations are
        # atomic; iterating while it changes is not).
        for index, job in enumerate(list(self._queue), start=1):
            if job.position != index:
                job.position = index
                safe(job.listener.on_queued, index)

    def drain(self, error: BaseException) -> None:
        """Answer every queued job with ``error`` (the engine stops)."""
        while (job := self.take()) is not None:
            job.future.set_exception(error)


def safe(callback: Any, *args: Any) -> None:
    # A listener's failure must not take the scheduler (and every other request) down.
    try:
        callback(*args)
    except Exception:
        logger.exception("generation listener failed")
