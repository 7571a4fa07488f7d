"""Continuous (iteration-level) batching: rows join and leave the running batch between tokens.

Request-level batching (:class:`~inference_svc.engine.batched.BatchedEngine`) runs one
``generate`` per batch, so a request arriving a moment after a batch started waits for the
whole batch, and the batch shrinks as its rows finish. Here the model thread runs a loop:
take queued requests into free slots (one unpadded prefill each), run one decode step for
every live row, choose each row's next token under its own rules (grammar, token floor and
budget, cancellation, deadline), retire finished rows and answer them at once. A slot is free
again on the next step, and a cancelled or expired row leaves at the next step.

With prefill overlap (``PREFILL_OVERLAP``, on by default on CPU) a second model thread runs the
prefills: it takes a queued request as soon as a slot is free, runs the vision tower and the
prompt through the model beside the running steps, and hands the result over; the step
thread copies it into its slot between two steps. On CPU the prefill then uses the second
core instead of stalling every live row for its duration (tens of milliseconds per photo
request), and torch releases the interpreter lock inside its kernels, so the threads overlap.

With constrained decoding, a step's token masks depend only on the tokens chosen before the
step, so (``GRAMMAR_OVERLAP``, on by default) they are computed on a helper thread while the
step runs: llguidance releases the interpreter lock, the masks take the other core, and the
step thread finds them ready when the logits are (``bench.engine_loop``: 1.16x requests/s at
16 concurrent rows on 2 CPU cores; on an accelerator the whole mask time is hidden this way).

The event-loop side (queue bound, positions, deadlines, listeners) is the batched engine's;
only the scheduler differs. Models :mod:`.slot_decoder` cannot drive (the remote-code layout,
other language models) fall back to request-level batching, with a warning.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from . import constrained, token_rules
from .api import FinishReason, GenerationResult, GenerationTimings, NullListener
from .batched import BatchedEngine, _deliver_progress, _expired, _Job, _safe, _set_outcome
from .config import EngineConfig
from .loader import LoadedModel
from .pixels import PixelStaging
from .slot_decoder import Prefilled, SlotDecoder, supports

logger = logging.getLogger(__name__)

# Masks of fewer rows are computed on the step thread (see ContinuousEngine._plan_grammar).
_OVERLAP_MIN_ROWS = 2


def overlaps_prefill(mode: str, device: str) -> bool:
    """Whether PREFILL_OVERLAP ``mode`` runs prefills on their own thread on ``device``."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"prefill overlap {mode!r} is not one of auto, on, off")
    return mode == "on" or (mode == "auto" and torch.device(device).type == "cpu")


@dataclass(eq=False)
class _GrammarPlan:
    """One step's token rules, decided from the rows' grammar states before the step:
    rows whose grammar is done (``forced`` to end), rows that need a mask (``masked``), and
    the masks, computed (a tensor) or being computed beside the step (a future)."""

    forced: dict[int, int]
    masked: list[int]
    allowed: Future[torch.Tensor] | torch.Tensor | None = None


@dataclass(eq=False)
class _Row:
    job: _Job
    prompt_tokens: int
    admitted_at: float
    prefill_seconds: float = 0.0
    # Next cache position to write (the prompt length after prefill, +1 per step).
    position: int = 0
    tokens: list[int] = field(default_factory=list)
    reported: int = 0
    finish_reason: str = ""
    first_token_at: float = 0.0
    finished_at: float = 0.0
    # Sum of live rows over the steps this row took part in (mean batch size it saw).
    batch_rows: int = 0
    steps: int = 0
    grammar_error: str = ""

    @property
    def matcher(self) -> Any | None:
        return self.job.prepared.matcher

    @property
    def last_token(self) -> int:
        return self.tokens[-1]


class ContinuousEngine(BatchedEngine):
    """Implements :class:`inference_svc.engine.api.Engine` with iteration-level batching."""

    def __init__(self, config: EngineConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self._work = threading.Event()
        self._decoder: SlotDecoder | None = None
        self._stop_ids: frozenset[int] = frozenset()
        self._stop_list: torch.Tensor | None = None
        self.counters.update({"steps": 0, "row_steps": 0, "prefills": 0, "overlapped_masks": 0})
        # Rows taken from the queue and not yet answered; written by the model thread.
        self._live = 0
        # Prefill overlap: the prefill thread and the step thread share these under _slots.
        self._overlap = False
        self._slots = threading.Condition()
        self._prefilling = 0  # prefills running (slot taken, not yet handed over)
        self._handover: collections.deque[tuple[_Row, Prefilled | Exception | None]] = (
            collections.deque()
        )
        self._stepping = 0  # rows in the step thread's batch
        self._prefill_thread: threading.Thread | None = None
        # GRAMMAR_OVERLAP: the thread that computes a step's token masks during the step.
        self._grammar_pool: ThreadPoolExecutor | None = None
        self._logits_width = 0

    def running_rows(self) -> int:
        if self._decoder is None:
            return super().running_rows()
        if self._overlap:
            return self._occupied()
        return self._live

    @property
    def runner_name(self) -> str:  # type: ignore[override]
        return "slot" if self._decoder is not None else "generate"

    @property
    def overlapping_prefill(self) -> bool:
        """True when prefills run on their own thread beside the decode steps."""
        return self._overlap

    @property
    def continuous(self) -> bool:
        """False when the loaded model made the engine fall back to request-level batching."""
        return self._decoder is not None

    # --- set-up ----------------------------------------------------------------------------
    def _load(self) -> LoadedModel:
        loaded = super()._load()
        reason = "remote-code model" if loaded.kind != "native" else supports(loaded.model)
        if reason is not None:
            logger.warning("continuous batching unavailable (%s): batching per request", reason)
            return loaded
        self._decoder = SlotDecoder(
            loaded.model,
            self._max_batch,
            device=loaded.runtime.device,
            dtype=loaded.runtime.dtype,
            compile_step=self.config.torch_compile,
        )
        if self.config.grammar_overlap and self.config.constrained_decoding:
            self._grammar_pool = ThreadPoolExecutor(1, thread_name_prefix="model-grammar")
        self._logits_width = int(loaded.model.lm_head.weight.shape[0])
        self._stop_ids = frozenset(loaded.stop_token_ids)
        self._stop_list = torch.tensor(sorted(self._stop_ids), dtype=torch.long)
        self._overlap = overlaps_prefill(self.config.prefill_overlap, loaded.runtime.device)
        return loaded

    def _release(self) -> None:
        pool, self._grammar_pool = self._grammar_pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        if self._decoder is not None:
            self._decoder.release()
        super()._release()

    def _signal_work(self) -> None:
        super()._signal_work()
        self._work.set()
        if self._overlap:
            with self._slots:
                self._slots.notify_all()

    async def _warm_up(self) -> None:
        if self._decoder is None:
            await super()._warm_up()
            return
        # The same request as the batched warm-up, through this engine's own path.
        loaded = self.loaded
        request = self._warm_up_request(loaded)
        prepared = await asyncio.to_thread(self._prepare, request)
        assert self._loop is not None
        job = _Job(request, NullListener(), prepared, self._loop.create_future())
        started = time.perf_counter()
        await self._loop.run_in_executor(self._executor, self._run_to_completion, [job])
        outcome = await job.future
        if self._decoder.compiled:
            compiling = time.perf_counter()
            await self._loop.run_in_executor(self._executor, self._decoder.warm_up)
            logger.info("decode step compiled in %.1fs", time.perf_counter() - compiling)
        logger.info(
            "warm-up took %.3fs (%d tokens)",
            time.perf_counter() - started,
            outcome.completion_tokens,
        )

    # --- scheduling ------------------------------------------------------------------------
    async def _schedule(self) -> None:
        if self._decoder is None:
            await super()._schedule()
            return
        assert self._loop is not None
        if not self._overlap:
            await self._loop.run_in_executor(self._executor, self._serve)
            return
        thread = threading.Thread(target=self._prefill_loop, name="model-prefill", daemon=True)
        self._prefill_thread = thread
        thread.start()
        try:
            await self._loop.run_in_executor(self._executor, self._serve_overlapped)
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
        rows: list[_Row] = []
        while True:
            if not self._stopping:
                self._admit_queued(rows)
            if not rows:
                if self._stopping:
                    return
                self._work.clear()
                if not self._queue and not self._stopping:
                    self._work.wait()
                continue
            self._step(rows)

    @torch.no_grad()
    def _run_to_completion(self, jobs: list[_Job]) -> None:
        rows: list[_Row] = []
        for job in jobs:
            self._admit(job, rows)
        while rows:
            self._step(rows)

    def _admit_queued(self, rows: list[_Row]) -> None:
        taken = False
        while len(rows) < self._max_batch:
            job = self._queue.take()
            if job is None:
                break
            taken = True
            self._post(_safe, job.listener.on_started)
            self._live += 1
            self._admit(job, rows)
            self._live = len(rows)
        if taken:
            self._post(self._report_positions)

    def _admit(self, job: _Job, rows: list[_Row]) -> None:
        decoder = self._decoder
        assert decoder is not None
        row, outcome = self._prefill_row(job, decoder, decoder.pixels)
        self._settle(row, outcome, rows, decoder)

    def _prefill_row(
        self, job: _Job, decoder: SlotDecoder, staging: PixelStaging
    ) -> tuple[_Row, Prefilled | Exception | None]:
        """Run a job's prompt through the model, outside the slot cache (any model thread).
        The outcome is None when the job expired or was cancelled first, the exception when
        the prefill failed; :meth:`_settle` takes it from there on the step thread."""
        row = _Row(job, len(job.prepared.input_ids), admitted_at=time.monotonic())
        if self._gone(row):
            return row, None
        started = time.perf_counter()
        outcome: Prefilled | Exception
        try:
            outcome = decoder.prefill_detached(
                job.prepared.input_ids, job.prepared.pixel_values, staging
            )
        except Exception as exc:
            logger.exception("prefill failed for %s", job.request.request_id)
            outcome = exc
        row.prefill_seconds = time.perf_counter() - started
        return row, outcome

    def _step(self, rows: list[_Row]) -> None:
        decoder = self._decoder
        assert decoder is not None
        live = len(rows)
        # The masks depend on the tokens chosen so far only: computed during the step.
        plan = self._plan_grammar(rows, self._grammar_pool)
        try:
            logits = decoder.decode([r.last_token for r in rows], [r.position for r in rows])
        except Exception as exc:
            logger.exception("decode step failed (%d rows)", live)
            for row in rows:
                self._post(_set_outcome, row.job, exc)
            rows.clear()
            self._live = 0
            return
        for row in rows:
            row.position += 1
            row.batch_rows += live
            row.steps += 1
        self.counters["steps"] += 1
        self.counters["row_steps"] += live
        self._choose(rows, logits, plan)
        self._retire(rows)
        self._live = len(rows)

    # --- prefill overlap -------------------------------------------------------------------
    def _occupied(self) -> int:
        return self._stepping + self._prefilling + len(self._handover)

    @torch.no_grad()
    def _prefill_loop(self) -> None:
        """The prefill thread: queued request -> free slot -> prefill -> hand-over."""
        decoder = self._decoder
        assert decoder is not None
        staging = PixelStaging(decoder.device)  # this thread's own pixel buffer
        try:
            while True:
                with self._slots:
                    while not self._stopping and (
                        not self._queue or self._occupied() >= self._max_batch
                    ):
                        self._slots.wait()
                    if self._stopping:  # stop() answers the queued requests itself
                        return
                    job = self._queue.take()
                    if job is None:  # abandoned meanwhile
                        continue
                    self._prefilling += 1
                self._post(self._report_positions)
                self._prefill_one(job, decoder, staging)
        finally:
            staging.release()

    def _prefill_one(self, job: _Job, decoder: SlotDecoder, staging: PixelStaging) -> None:
        if job.cancelled or job.future.done():  # abandoned while queued: nothing to answer
            with self._slots:
                self._prefilling -= 1
                self._slots.notify_all()
            return
        self._post(_safe, job.listener.on_started)
        row, outcome = self._prefill_row(job, decoder, staging)
        with self._slots:
            self._prefilling -= 1
            self._handover.append((row, outcome))
        self._work.set()

    @torch.no_grad()
    def _serve_overlapped(self) -> None:
        """The step thread with prefill overlap: take over finished prefills, step, repeat."""
        rows: list[_Row] = []
        while True:
            self._take_over(rows)
            if rows:
                self._step(rows)
            self._set_stepping(len(rows))
            if rows:
                continue
            with self._slots:
                idle = not self._handover and not self._prefilling
            if idle and self._stopping and not self._prefill_alive():
                return
            self._work.clear()
            with self._slots:
                pending = bool(self._handover)
            if not pending:
                self._work.wait(timeout=0.1 if self._stopping else None)

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

    def _take_over(self, rows: list[_Row]) -> None:
        decoder = self._decoder
        assert decoder is not None
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
        row: _Row,
        outcome: Prefilled | Exception | None,
        rows: list[_Row],
        decoder: SlotDecoder,
    ) -> None:
        job = row.job
        if outcome is None or self._gone(row):
            self._finish(row, "cancelled")
            return
        if isinstance(outcome, Exception):
            self._post(_set_outcome, job, outcome)
            return
        try:
            decoder.reserve(outcome.length + job.prepared.max_new_tokens + 1)
            decoder.install(len(rows), outcome)
        except Exception as exc:
            logger.exception("installing the prefill failed for %s", job.request.request_id)
            self._post(_set_outcome, job, exc)
            return
        row.position = outcome.length
        self.counters["prefills"] += 1
        rows.append(row)
        self._choose([row], outcome.logits.unsqueeze(0))
        self._retire(rows)

    # --- token choice ----------------------------------------------------------------------
    def _gone(self, row: _Row) -> bool:
        return token_rules.gone(row.job.cancelled, row.job.request.deadline)

    def _plan_grammar(self, rows: list[_Row], pool: ThreadPoolExecutor | None) -> _GrammarPlan:
        """Which rows the grammar ends and which it masks. With ``pool`` the masks of two
        rows or more are computed there while the caller runs the step: llguidance's
        executor releases the interpreter lock, so they take the other core instead of
        adding to the step's time. One row's mask is computed after the step, on the step
        thread: llguidance computes a lone mask holding the lock, which beside the step made
        a 1-row request 1.5x slower (``bench.engine_loop --concurrency 1``)."""
        eos = self.loaded.eos_token_id
        plan = _GrammarPlan({}, [])
        for i, row in enumerate(rows):
            matcher = row.matcher
            if matcher is None or self._gone(row):
                continue
            if token_rules.grammar_done(matcher, row.grammar_error):
                plan.forced[i] = eos
            else:
                plan.masked.append(i)
        if len(plan.masked) >= _OVERLAP_MIN_ROWS and pool is not None:
            plan.allowed = pool.submit(self._allowed, [rows[i].matcher for i in plan.masked])
            self.counters["overlapped_masks"] += 1
        return plan

    def _allowed(self, matchers: list[Any]) -> torch.Tensor:
        return constrained.allowed_tokens(matchers, self.loaded.vocab_size, self._logits_width)

    def _choose(
        self, rows: list[_Row], logits: torch.Tensor, plan: _GrammarPlan | None = None
    ) -> None:
        """Pick each row's next token under its own grammar, floor and budget (``plan``:
        the grammar's part, decided before the step; decided here when not given)."""
        if plan is None:
            plan = self._plan_grammar(rows, None)
        scores = logits.float()
        forced = plan.forced
        for row in rows:
            if self._gone(row):
                row.finish_reason = "cancelled"
        if plan.masked:
            self._apply_grammars(rows, plan, scores)
        assert self._stop_list is not None
        below_floor = [
            i
            for i, row in enumerate(rows)
            if len(row.tokens) < row.job.prepared.min_new_tokens
            and not row.finish_reason
            and i not in forced
        ]
        token_rules.ban_stops(scores, below_floor, self._stop_list)
        choices = scores.argmax(dim=-1).tolist()
        now = time.perf_counter()
        for i, row in enumerate(rows):
            if row.finish_reason:
                continue
            token = forced.get(i, int(choices[i]))
            if not row.tokens:
                row.first_token_at = now
            row.tokens.append(token)
            if token not in self._stop_ids:
                self._advance_grammar(row, token)
            count = len(row.tokens)
            max_new = row.job.prepared.max_new_tokens
            row.finish_reason = token_rules.finish_reason(token, count, max_new, self._stop_ids)
            if not row.finish_reason and token_rules.progress_due(count, row.reported):
                self._report(row)

    def _advance_grammar(self, row: _Row, token: int) -> None:
        matcher = row.matcher
        if matcher is None or row.grammar_error:
            return
        error = token_rules.advance_grammar(matcher, token, row.job.request.request_id)
        if error is not None:
            row.grammar_error = error

    def _apply_grammars(self, rows: list[_Row], plan: _GrammarPlan, scores: torch.Tensor) -> None:
        masked = plan.masked
        matchers: list[Any] = [rows[i].matcher for i in masked]
        allowed = plan.allowed
        if allowed is None:
            allowed = self._allowed(matchers)
        elif isinstance(allowed, Future):
            allowed = allowed.result()
        for i, matcher in zip(masked, matchers, strict=True):
            if matcher.is_error():
                rows[i].grammar_error = matcher.get_error()
                plan.forced[i] = self.loaded.eos_token_id
        index = torch.tensor(masked, device=scores.device)
        scores[index] = scores[index].masked_fill(~allowed.to(scores.device), float("-inf"))

    # --- finishing -------------------------------------------------------------------------
    def _retire(self, rows: list[_Row]) -> None:
        """Answer finished rows and keep the live ones in slots 0..n-1."""
        if not any(r.finish_reason for r in rows):
            return
        decoder = self._decoder
        assert decoder is not None
        kept: list[_Row] = []
        for slot, row in enumerate(rows):
            if row.finish_reason:
                self._finish(row, row.finish_reason)
                continue
            if slot != len(kept):
                # Written up to position - 1; the pending last token is written next step.
                decoder.move(slot, len(kept), row.position)
            kept.append(row)
        rows[:] = kept

    def _finish(self, row: _Row, reason: str) -> None:
        row.finish_reason = reason
        row.finished_at = time.perf_counter()
        if reason == "cancelled":
            self.counters["cancelled_rows"] += 1
        self.counters["rows"] += 1
        self.counters["tokens_generated"] += len(row.tokens)
        if row.reported != len(row.tokens) or not row.tokens:
            self._report(row)
        self._post(_set_outcome, row.job, self._result(row))

    def _report(self, row: _Row) -> None:
        row.reported = len(row.tokens)
        wants_text = bool(getattr(row.job.listener, "wants_text", True))
        text = self._text(row) if wants_text else ""
        if not row.job.cancelled:
            self._post(_deliver_progress, row.job, len(row.tokens), text)

    def _text(self, row: _Row) -> str:
        ids = [t for t in row.tokens if t not in self._stop_ids]
        return str(self.loaded.tokenizer.decode(ids, skip_special_tokens=True))

    def _result(self, row: _Row) -> GenerationResult | BaseException:
        if row.finish_reason == "cancelled":
            return _expired()
        job = row.job
        queue_seconds = max(row.admitted_at - job.enqueued_at, 0.0)
        first = row.first_token_at or row.finished_at
        decode = max(row.finished_at - first, 0.0)
        batch = round(row.batch_rows / row.steps) if row.steps else 1
        matcher = row.matcher
        return GenerationResult(
            text=self._text(row),
            prompt_tokens=row.prompt_tokens,
            completion_tokens=len(row.tokens),
            timings=GenerationTimings(queue_seconds, row.prefill_seconds, decode),
            constrained=matcher is not None,
            batch_size=max(batch, 1),
            finish_reason=FinishReason(row.finish_reason),
            schema_complete=None
            if matcher is None
            else not row.grammar_error and bool(matcher.is_accepting()),
            constraint_error=row.grammar_error or None if matcher is not None else None,
        )

    def _post(self, callback: Any, *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(callback, *args)
