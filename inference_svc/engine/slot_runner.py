"""The slot runner: continuous (iteration-level) batching over a slotted KV cache.

Request-level batching (:mod:`.generate_runner`) runs one ``generate`` per batch, so a request
arriving a moment after a batch started waits for the whole batch, and the batch shrinks as
its rows finish. Here the model thread runs a loop: take queued requests into free slots (one
unpadded prefill each), run one decode step for every live row, choose each row's next token
under its own rules (:mod:`.slot_rows`), retire finished rows and answer them at once. A slot
is free again on the next step, and a cancelled or expired row leaves at the next step.

With prefill overlap (``PREFILL_OVERLAP``, on by default on CPU) a second model thread runs the
prefills: it takes a queued request as soon as a slot is free, runs the vision tower and the
prompt through the model beside the running steps, and hands the result over; the step
thread copies it into its slot between two steps. On CPU the prefill then uses the second
core instead of stalling every live row for its duration (tens of milliseconds per photo
request), and torch releases the interpreter lock inside its kernels, so the threads overlap.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from .api import GenerationResult
from .pixels import PixelStaging
from .runner import Host, set_outcome
from .scheduler import Job, safe
from .slot_decoder import Prefilled, SlotDecoder
from .slot_rows import Row, SlotRules

logger = logging.getLogger(__name__)


def overlaps_prefill(mode: str, device: str) -> bool:
    """Whether PREFILL_OVERLAP ``mode`` runs prefills on their own thread on ``device``."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"prefill overlap {mode!r} is not one of auto, on, off")
    return mode == "on" or (mode == "auto" and torch.device(device).type == "cpu")


class SlotRunner:
    """Implements :class:`inference_svc.engine.runner.Runner` with iteration-level batching.
    Built on the model thread, once the model is loaded (the slot cache is allocated here)."""

    name = "slot"

    def __init__(self, host: Host) -> None:
        loaded = host.model
        config = host.config
        self._host = host
        self._queue = host.queue
        self._counters = host.counters
        self._max_batch = host.max_batch
        self._work = threading.Event()
        self.decoder = SlotDecoder(
            loaded.model,
            host.max_batch,
            device=loaded.runtime.device,
            dtype=loaded.runtime.dtype,
            compile_step=config.torch_compile,
        )
        # GRAMMAR_OVERLAP: the thread that computes a step's token masks during the step.
        pool = None
        if config.grammar_overlap and config.constrained_decoding:
            pool = ThreadPoolExecutor(1, thread_name_prefix="model-grammar")
        self._rules = SlotRules(host, pool)
        # Rows taken from the queue and not yet answered; written by the model thread.
        self._live = 0
        # Prefill overlap: the prefill thread and the step thread share these under _slots.
        self._overlap = overlaps_prefill(config.prefill_overlap, loaded.runtime.device)
        self._slots = threading.Condition()
        self._prefilling = 0  # prefills running (slot taken, not yet handed over)
        self._handover: collections.deque[tuple[Row, Prefilled | Exception | None]] = (
            collections.deque()
        )
        self._stepping = 0  # rows in the step thread's batch
        self._prefill_thread: threading.Thread | None = None

    def running_rows(self) -> int:
        if self._overlap:
            return self._occupied()
        return self._live

    @property
    def overlapping_prefill(self) -> bool:
        """True when prefills run on their own thread beside the decode steps."""
        return self._overlap

    def release(self) -> None:
        pool, self._rules.grammar_pool = self._rules.grammar_pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self.decoder.release()

    def signal(self) -> None:
        self._work.set()
        if self._overlap:
            with self._slots:
                self._slots.notify_all()

    async def warm_up(self, job: Job) -> GenerationResult:
        loop = asyncio.get_running_loop()
        executor = self._host.executor
        await loop.run_in_executor(executor, self._run_to_completion, [job])
        result = await job.future
        if self.decoder.compiled:
            compiling = time.perf_counter()
            await loop.run_in_executor(executor, self.decoder.warm_up)
            logger.info("decode step compiled in %.1fs", time.perf_counter() - compiling)
        return result

    # --- serving ---------------------------------------------------------------------------
    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        executor = self._host.executor
        if not self._overlap:
            await loop.run_in_executor(executor, self._serve)
            return
        thread = threading.Thread(target=self._prefill_loop, name="model-prefill", daemon=True)
        self._prefill_thread = thread
        thread.start()
        try:
            await loop.run_in_executor(executor, self._serve_overlapped)
        finally:
            with self._slots:
                self._slots.notify_all()
            await asyncio.to_thread(thread.join)
            self._prefill_thread = None

    @torch.no_grad()
    def _serve(self) -> None:
        """The model thread's loop, until the engine stops and the live rows are done.

        Without autograd throughout (the decoder's own operations are, too): token choice
        masks the logits in place."""
        rows: list[Row] = []
        while True:
            if not self._host.stopping:
                self._admit_queued(rows)
            if not rows:
                if self._host.stopping:
                    return
                self._work.clear()
                if not self._queue and not self._host.stopping:
                    self._work.wait()
                continue
            self._step(rows)

    @torch.no_grad()
    def _run_to_completion(self, jobs: list[Job]) -> None:
        rows: list[Row] = []
        for job in jobs:
            self._admit(job, rows)
        while rows:
            self._step(rows)

    def _admit_queued(self, rows: list[Row]) -> None:
        taken = False
        while len(rows) < self._max_batch:
            job = self._queue.take()
            if job is None:
                break
            taken = True
            self._host.post(safe, job.listener.on_started)
            self._live += 1
            self._admit(job, rows)
            self._live = len(rows)
        if taken:
            self._host.post(self._queue.report_positions)

    def _admit(self, job: Job, rows: list[Row]) -> None:
        decoder = self.decoder
        row, outcome = self._prefill_row(job, decoder, decoder.pixels)
        self._settle(row, outcome, rows, decoder)

    def _prefill_row(
        self, job: Job, decoder: SlotDecoder, staging: PixelStaging
    ) -> tuple[Row, Prefilled | Exception | None]:
        """Run a job's prompt through the model, outside the slot cache (any model thread).
        The outcome is None when the job expired or was cancelled first, the exception when
        the prefill failed; :meth:`_settle` takes it from there on the step thread."""
        row = Row(job, len(job.prepared.input_ids), admitted_at=time.monotonic())
        if self._rules.gone(row):
            return row, None
        started = time.perf_counter()
        outcome: Prefilled | Exception
        try:
            outcome = decoder.prefill_detached(
                job.prepared.input_ids,
                job.prepared.pixel_values,
                staging,
                job.prepared.vision,
                self._host.vision_cache,
            )
        except Exception as exc:
            logger.exception("prefill failed for %s", job.request.request_id)
            outcome = exc
        row.prefill_seconds = time.perf_counter() - started
        return row, outcome

    def _step(self, rows: list[Row]) -> None:
        decoder = self.decoder
        live = len(rows)
        # The masks depend on the tokens chosen so far only: computed during the step.
        plan = self._rules.plan_grammar(rows, self._rules.grammar_pool)
        try:
            logits = decoder.decode([r.last_token for r in rows], [r.position for r in rows])
        except Exception as exc:
            logger.exception("decode step failed (%d rows)", live)
            for row in rows:
                self._host.post(set_outcome, row.job, exc)
            rows.clear()
            self._live = 0
            return
        for row in rows:
            row.position += 1
            row.batch_rows += live
            row.steps += 1
        self._counters["steps"] += 1
        self._counters["row_steps"] += live
        self._rules.choose(rows, logits, plan)
        self._retire(rows)
        self._live = len(rows)

    # --- prefill overlap -------------------------------------------------------------------
    def _occupied(self) -> int:
        return self._stepping + self._prefilling + len(self._handover)

    @torch.no_grad()
    def _prefill_loop(self) -> None:
        """The prefill thread: queued request -> free slot -> prefill -> hand-over."""
        decoder = self.decoder
        staging = PixelStaging(decoder.device)  # this thread's own pixel buffer
        try:
            while True:
                with self._slots:
                    while not self._host.stopping and (
                        not self._queue or self._occupied() >= self._max_batch
                    ):
                        self._slots.wait()
                    if self._host.stopping:  # stop() answers the queued requests itself
                        return
                    job = self._queue.take()
                    if job is None:  # abandoned meanwhile
                        continue
                    self._prefilling += 1
                self._host.post(self._queue.report_positions)
                self._prefill_one(job, decoder, staging)
        finally:
            staging.release()

    def _prefill_one(self, job: Job, decoder: SlotDecoder, staging: PixelStaging) -> None:
        if job.cancelled or job.future.done():  # abandoned while queued: nothing to answer
            with self._slots:
                self._prefilling -= 1
                self._slots.notify_all()
            return
        self._host.post(safe, job.listener.on_started)
        row, outcome = self._prefill_row(job, decoder, staging)
        with self._slots:
            self._prefilling -= 1
            self._handover.append((row, outcome))
        self._work.set()

    @torch.no_grad()
    def _serve_overlapped(self) -> None:
        """The step thread with prefill overlap: take over finished prefills, step, repeat."""
        rows: list[Row] = []
        while True:
            self._take_over(rows)
            if rows:
                self._step(rows)
            self._set_stepping(len(rows))
            if rows:
                continue
            with self._slots:
                idle = not self._handover and not self._prefilling
            if idle and self._host.stopping and not self._prefill_alive():
                return
            self._work.clear()
            with self._slots:
                pending = bool(self._handover)
            if not pending:
                self._work.wait(timeout=0.1 if self._host.stopping else None)

    def _prefill_alive(self) -> bool:
        thread = self._prefill_thread
        return thread is not None and thread.is_alive()

    def _set_stepping(self, count: int) -> None:
        if count == self._stepping:
            return
        with self._slots:
            freed = count < self._stepping
            self._stepping = count
            if freed:
                self._slots.notify_all()

    def _take_over(self, rows: list[Row]) -> None:
        decoder = self.decoder
        while True:
            with self._slots:
                if not self._handover:
                    return
                row, outcome = self._handover.popleft()
                self._stepping += 1  # the slot stays taken until the row is settled below
            self._settle(row, outcome, rows, decoder)
            self._set_stepping(len(rows))

    def _settle(
        self,
        row: Row,
        outcome: Prefilled | Exception | None,
        rows: list[Row],
        decoder: SlotDecoder,
    ) -> None:
        job = row.job
        if outcome is None or self._rules.gone(row):
            self._rules.finish(row, "cancelled")
            return
        if isinstance(outcome, Exception):
            self._host.post(set_outcome, job, outcome)
            return
        try:
            decoder.reserve(outcome.length + job.prepared.max_new_tokens + 1)
            decoder.install(len(rows), outcome)
        except Exception as exc:
            logger.exception("installing the prefill failed for %s", job.request.request_id)
            self._host.post(set_outcome, job, exc)
            return
        row.position = outcome.length
        self._counters["prefills"] += 1
        rows.append(row)
        self._rules.choose([row], outcome.logits.unsqueeze(0))
        self._retire(rows)

    # --- token choice ----------------------------------------------------------------------
    def _retire(self, rows: list[Row]) -> None:
        """Answer finished rows and keep the live ones in slots 0..n-1."""
        if not any(r.finish_reason for r in rows):
            return
        decoder = self.decoder
        kept: list[Row] = []
        for slot, row in enumerate(rows):
            if row.finish_reason:
                self._rules.finish(row, row.finish_reason)
                continue
            if slot != len(kept):
                # Written up to position - 1; the pending last token is written next step.
                decoder.move(slot, len(kept), row.position)
            kept.append(row)
        rows[:] = kept
