"""The generate runner: one HF ``generate`` call per batch of requests (request-level batching).

The fallback for models the slot decoder cannot drive (an original-layout checkpoint with its
own remote code, other language models). The first queued request waits up to
``batch_wait_s`` for others to share its batch of up to ``max_batch`` rows; the batch runs on
the model thread, so the event loop never blocks on the model. Rows in a batch differ in
budget, constraint and liveness while ``generate`` only knows batch-wide settings, so a
logits processor and a stopping criterion sharing one :class:`BatchController` enforce each
row's own: the stopping criterion (after each new token) records tokens, ends rows and reports
progress; the logits processor (before each token) applies grammars and floors.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from . import token_rules
from .api import FinishReason, GenerationResult, GenerationTimings
from .constrained import ConstrainedLogitsProcessor
from .pixels import PixelStaging
from .runner import Host, expired, set_outcome
from .scheduler import Job, safe

logger = logging.getLogger(__name__)

# Request-level batching: how long the first queued request waits for others to share its batch.
BATCH_WAIT_S = 0.01


class GenerateRunner:
    """Implements :class:`inference_svc.engine.runner.Runner` with ``generate`` per batch."""

    name = "generate"

    def __init__(self, host: Host, batch_wait_s: float = BATCH_WAIT_S) -> None:
        self._host = host
        self._wait_s = batch_wait_s
        self._wakeup = asyncio.Event()
        self._batch_ids = itertools.count(1)
        self._running: list[Job] = []
        self._staging: PixelStaging | None = None  # the model thread's pixel buffer

    def running_rows(self) -> int:
        return len(self._running)

    def signal(self) -> None:
        self._wakeup.set()

    def release(self) -> None:
        self._staging = None

    async def warm_up(self, job: Job) -> GenerationResult:
        loop = asyncio.get_running_loop()
        outcome = (await loop.run_in_executor(self._host.executor, self._run_batch, [job]))[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def serve(self) -> None:
        host = self._host
        queue = host.queue
        loop = asyncio.get_running_loop()
        while not host.stopping:
            if not queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # Give concurrent arrivals a short window to share this batch.
            deadline = queue.first().enqueued_at + self._wait_s
            while len(queue) < host.max_batch and not host.stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            batch: list[Job] = []
            while len(batch) < host.max_batch and (job := queue.take()) is not None:
                batch.append(job)
            queue.report_positions()
            if not batch:
                continue
            for job in batch:
                safe(job.listener.on_started)
            self._running = batch
            try:
                outcomes = await loop.run_in_executor(host.executor, self._run_batch, batch)
            except Exception as exc:  # the worker itself failed; every row fails with it
                logger.exception("batch failed")
                outcomes = [exc] * len(batch)
            finally:
                self._running = []
            for job, outcome in zip(batch, outcomes, strict=True):
                set_outcome(job, outcome)

    def _pixels(self, device: torch.device | str) -> PixelStaging:
        staging = self._staging
        if staging is None or staging.device != torch.device(device):
            staging = self._staging = PixelStaging(device)
        return staging

    def _run_batch(self, jobs: list[Job]) -> list[GenerationResult | BaseException]:
        loaded = self._host.model
        device = loaded.runtime.device
        batch_id = next(self._batch_ids)
        started = time.perf_counter()
        started_mono = time.monotonic()
        queue_seconds = [started_mono - job.enqueued_at for job in jobs]
        width = max(len(job.prepared.input_ids) for job in jobs)
        ids = torch.full((len(jobs), width), loaded.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for row, job in enumerate(jobs):
            tokens = job.prepared.input_ids
            ids[row, width - len(tokens) :] = torch.tensor(tokens, dtype=torch.long)
            mask[row, width - len(tokens) :] = 1
        tiles = [job.prepared.pixel_values for job in jobs if job.prepared.pixel_values is not None]
        pixels = self._pixels(device).stage(tiles, loaded.runtime.dtype) if tiles else None
        ids = ids.to(device)
        mask = mask.to(device)

        def sink(row: int, count: int, text: str) -> None:
            self._host.post_progress(jobs[row], count, text)

        controller = BatchController(
            [
                RowSpec(
                    max_new_tokens=job.prepared.max_new_tokens,
                    min_new_tokens=job.prepared.min_new_tokens,
                    matcher=job.prepared.matcher,
                    is_cancelled=_cancel_probe(job),
                    deadline=job.request.deadline,
                    wants_text=bool(getattr(job.listener, "wants_text", True)),
                )
                for job in jobs
            ],
            stop_token_ids=loaded.stop_token_ids,
            eos_token_id=loaded.eos_token_id,
            ll_vocab_size=loaded.vocab_size,
            prompt_offset=loaded.prompt_offset(ids),
            decode=loaded.answer_text,
            progress=sink,
        )
        try:
            loaded.generate(
                ids,
                mask,
                pixels,
                max(job.prepared.max_new_tokens for job in jobs),
                logits_processor=LogitsProcessorList([controller.logits_processor]),
                stopping_criteria=StoppingCriteriaList([controller.stopping_criteria]),
            )
        except Exception as exc:
            logger.exception("generate failed for batch %d (%d rows)", batch_id, len(jobs))
            return [exc] * len(jobs)
        controller.finish()
        ended = time.perf_counter()
        counters = self._host.counters
        counters["batches"] += 1
        counters["rows"] += len(jobs)
        counters["tokens_generated"] += sum(len(t) for t in controller.tokens)
        counters["cancelled_rows"] += controller.finish_reason.count("cancelled")
        first = controller.first_token_time or ended
        prefill = first - started
        results: list[GenerationResult | BaseException] = []
        constraint = controller.constraint
        for row, job in enumerate(jobs):
            decode = max(controller.finish_time[row] - first, 0.0)
            count = len(controller.tokens[row])
            is_constrained = job.prepared.matcher is not None
            reason = controller.finish_reason[row] or "length"
            if reason == "cancelled":
                results.append(expired())
                continue
            results.append(
                GenerationResult(
                    text=controller.text(row),
                    prompt_tokens=len(job.prepared.input_ids),
                    completion_tokens=count,
                    timings=GenerationTimings(queue_seconds[row], prefill, decode),
                    constrained=is_constrained,
                    batch_size=len(jobs),
                    finish_reason=FinishReason(reason),
                    schema_complete=constraint.is_complete(row)
                    if constraint is not None and is_constrained
                    else None,
                    constraint_error=constraint.errors.get(row)
                    if constraint is not None and is_constrained
                    else None,
                )
            )
        return results


def _cancel_probe(job: Job) -> Callable[[], bool]:
    return lambda: job.cancelled


# (row, tokens generated, decoded text so far)
ProgressSink = Callable[[int, int, str], None]


@dataclass
class RowSpec:
    max_new_tokens: int
    min_new_tokens: int
    matcher: Any | None
    # Read on every step from the model thread: True once the caller has gone away.
    is_cancelled: Callable[[], bool]
    deadline: float | None = None
    # Decoding the text so far costs the model thread time (and the GIL) on every report;
    # callers that only count tokens say so.
    wants_text: bool = True


class BatchController:
    def __init__(
        self,
        rows: Sequence[RowSpec],
        *,
        stop_token_ids: Sequence[int],
        eos_token_id: int,
        ll_vocab_size: int,
        prompt_offset: int,
        decode: Callable[[list[int]], str],
        progress: ProgressSink | None,
    ) -> None:
        self.rows = list(rows)
        n = len(self.rows)
        self.stop_token_ids = frozenset(stop_token_ids)
        self.eos_token_id = eos_token_id
        self.tokens: list[list[int]] = [[] for _ in range(n)]
        self.finished = [False] * n
        self.finish_reason = [""] * n
        self.finish_time = [0.0] * n
        self.first_token_time: float | None = None
        self._decode = decode
        self._progress = progress
        self._reported = [0] * n
        self.constraint: ConstrainedLogitsProcessor | None = None
        if any(r.matcher is not None for r in self.rows):
            self.constraint = ConstrainedLogitsProcessor(
                [r.matcher for r in self.rows],
                eos_token_id=eos_token_id,
                vocab_size=ll_vocab_size,
                prompt_len=prompt_offset,
                finished=self.finished,
            )
        self._stop_list = torch.tensor(sorted(self.stop_token_ids), dtype=torch.long)
        self.logits_processor = _Logits(self)
        self.stopping_criteria = _Stopping(self)

    def _gone(self, row: int) -> bool:
        spec = self.rows[row]
        return token_rules.gone(spec.is_cancelled(), spec.deadline)

    def process_logits(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.constraint is not None:
            scores = self.constraint(input_ids, scores)  # type: ignore[arg-type]
        below_floor: list[int] = []
        for row, spec in enumerate(self.rows):
            if self.finished[row]:
                continue
            if self._gone(row):
                token_rules.force_eos(scores, row, self.eos_token_id)
                continue
            forced = self.constraint is not None and self.constraint.must_stop(row)
            if not forced and len(self.tokens[row]) < spec.min_new_tokens:
                below_floor.append(row)
        token_rules.ban_stops(scores, below_floor, self._stop_list)
        return scores

    def step(self, input_ids: torch.Tensor) -> torch.Tensor:
        now = time.perf_counter()
        if self.first_token_time is None:
            self.first_token_time = now
        last = input_ids[:, -1].tolist()
        for row, spec in enumerate(self.rows):
            if self.finished[row]:
                continue
            token = int(last[row])
            self.tokens[row].append(token)
            count = len(self.tokens[row])
            if self._gone(row):
                reason = token_rules.CANCELLED
            else:
                reason = token_rules.finish_reason(
                    token, count, spec.max_new_tokens, self.stop_token_ids
                )
            if reason:
                self.finished[row] = True
                self.finish_reason[row] = reason
                self.finish_time[row] = now
            elif token_rules.progress_due(count, self._reported[row]):
                self._report(row)
        return torch.tensor(self.finished, dtype=torch.bool, device=input_ids.device)

    def text(self, row: int) -> str:
        ids = [t for t in self.tokens[row] if t not in self.stop_token_ids]
        return self._decode(ids)

    def _report(self, row: int) -> None:
        self._reported[row] = len(self.tokens[row])
        if self._progress is not None:
            text = self.text(row) if self.rows[row].wants_text else ""
            self._progress(row, len(self.tokens[row]), text)

    def finish(self) -> None:
        """After generate returned: close rows it ended by length, feed grammars their last
        tokens and send every row's final progress."""
        now = time.perf_counter()
        for row in range(len(self.rows)):
            if not self.finished[row]:
                self.finished[row] = True
                self.finish_reason[row] = "length"
                self.finish_time[row] = now
            if self.constraint is not None:
                self.constraint.catch_up(row, self.tokens[row])
            if self._reported[row] != len(self.tokens[row]) or not self.tokens[row]:
                self._report(row)


class _Logits(LogitsProcessor):
    def __init__(self, controller: BatchController) -> None:
        self._c = controller

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self._c.process_logits(input_ids, scores)  # type: ignore[return-value]


class _Stopping(StoppingCriteria):
    def __init__(self, controller: BatchController) -> None:
        self._c = controller

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        return self._c.step(input_ids)  # type: ignore[return-value]
