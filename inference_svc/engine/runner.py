"""What a runner is, and what it shares with the engine that owns it.

:class:`~inference_svc.engine.local.LocalEngine` owns the event-loop side (admission through
the :class:`~inference_svc.engine.scheduler.Scheduler`, preparation, deadlines, listeners);
a runner drives the model for the rows the scheduler hands out. Two runners exist, chosen by
what the loaded model supports: :mod:`.slot_runner` (slotted KV cache, iteration-level
batching, the default) and :mod:`.generate_runner` (one HF ``generate`` per batch of requests,
for models the slot decoder cannot drive). Both read and write the same :class:`Host`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any, Protocol

from .api import EngineNotReady, GenerationResult
from .config import EngineConfig
from .loader import LoadedModel
from .scheduler import Job, Scheduler, safe
from .vision_cache import VisionFeatureCache

# Counter names (EngineStats fields) the runners write, on their model threads only.
COUNTERS = (
    "batches",
    "rows",
    "tokens_generated",
    "cancelled_rows",
    "steps",
    "row_steps",
    "prefills",
    "overlapped_masks",
)


class Host:
    """The state a runner shares with its engine: the configuration, the one queue, the
    loaded model, the event loop and the model thread's executor, the stop flag and the
    counters behind :class:`~inference_svc.engine.api.EngineStats`."""

    def __init__(self, config: EngineConfig, queue: Scheduler, max_batch: int) -> None:
        self.config = config
        self.queue = queue
        self.max_batch = max_batch
        self.loaded: LoadedModel | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.stopping = False
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        # The slot runner's vision-feature cache (None: off, or the generate runner).
        self.vision_cache: VisionFeatureCache | None = None

    @property
    def model(self) -> LoadedModel:
        if self.loaded is None:
            raise EngineNotReady("model not loaded")
        return self.loaded

    def post(self, callback: Any, *args: Any) -> None:
        """Run ``callback(*args)`` on the event loop (from any thread)."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(callback, *args)

    def post_progress(self, job: Job, count: int, text: str) -> None:
        if not job.cancelled:
            self.post(deliver_progress, job, count, text)


class Runner(Protocol):
    """Drives the model for the rows the host's queue hands out."""

    # "slot" or "generate" (EngineInfo.runner).
    name: str

    def running_rows(self) -> int:
        """Requests generating now (taken from the queue, not yet answered)."""
        ...

    def signal(self) -> None:
        """New work was queued or the engine is stopping (event loop)."""
        ...

    async def serve(self) -> None:
        """Take and run rows until the host stops and the rows in progress are answered."""
        ...

    async def warm_up(self, job: Job) -> GenerationResult:
        """Run one job through the full path before serving (answers it, too)."""
        ...

    def release(self) -> None:
        """Free the runner's buffers (model thread, after serving)."""
        ...


def expired() -> TimeoutError:
    # The model thread ended the row at its deadline and answered before the caller's timer
    # fired (a busy loop): still a deadline, never a truncated success.
    return TimeoutError("deadline passed during generation")


def deliver_progress(job: Job, count: int, text: str) -> None:
    if not job.cancelled:
        safe(job.listener.on_tokens, count, text)


def set_outcome(job: Job, outcome: GenerationResult | BaseException) -> None:
    """Answer a job's caller once (a cancelled or already answered caller is left alone)."""
    if job.future.done():
        return
    if isinstance(outcome, BaseException):
        job.future.set_exception(outcome)
    else:
        job.future.set_result(outcome)
