"""Dynamic batching engine: a bounded queue, a scheduler and one model worker thread.

Requests are prepared (prompt, tokens, pixels, grammar) in a helper thread, queued, and
gathered into batches of up to ``max_batch_size`` within ``batch_wait_ms``; each batch is one
``generate`` call on a dedicated single thread, so the event loop never blocks on the model.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessorList, StoppingCriteriaList

from . import constrained, token_rules
from .api import (
    EngineInfo,
    EngineNotReady,
    EngineStats,
    FinishReason,
    GenerationListener,
    GenerationRequest,
    GenerationResult,
    GenerationTimings,
    NullListener,
)
from .batch_control import BatchController, RowSpec
from .config import EngineConfig
from .loader import LoadedModel, Runtime, detect_runtime, load_model, resolve_kv_cache
from .model_builder import ensure_demo_model
from .pixels import PixelStaging, check_dtype
from .prompting import build_prompt
from .scheduler import Job, Prepared, Scheduler, safe

logger = logging.getLogger(__name__)


_Prepared = Prepared
_Job = Job
_safe = safe


# Request-level batching: how long the first queued request waits for others to share its batch.
BATCH_WAIT_S = 0.01

# Builds the model for a configuration on a runtime (the default: the checkpoint at
# model_path, or the cached demo model); benchmarks bring their own.
ModelLoader = Callable[[EngineConfig, Runtime], LoadedModel]


class BatchedEngine:
    """Implements :class:`inference_svc.engine.api.Engine`.

    ``forced_length``: every row runs to its max_new_tokens unless its grammar ends it (stop
    tokens do not end it); for benchmarks and tests, which need fixed lengths."""

    def __init__(
        self,
        config: EngineConfig,
        *,
        forced_length: bool = False,
        model_loader: ModelLoader | None = None,
    ) -> None:
        self.config = config
        self.forced_length = forced_length
        self._model_loader = model_loader or load_configured_model
        self._max_batch = max(1, config.max_batch_size)
        self._wait_s = BATCH_WAIT_S
        # "auto": static on CPU, dynamic elsewhere (tests compare the two).
        self.kv_cache = "auto"
        self._loaded: LoadedModel | None = None
        self._ready = False
        self._stopping = False
        self._queue = Scheduler(config.max_queue_size)
        self._wakeup: asyncio.Event | None = None
        self._scheduler: asyncio.Task[None] | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batch_ids = itertools.count(1)
        self._running: list[_Job] = []
        self._staging: PixelStaging | None = None  # the model thread's pixel buffer
        self._jobs: dict[str, _Job] = {}  # by request id, for cancel()
        # Counters for metrics and tests; written by the model thread only.
        self.counters: dict[str, int] = {
            "batches": 0,
            "rows": 0,
            "tokens_generated": 0,
            "cancelled_rows": 0,
        }

    # --- Engine protocol -------------------------------------------------------------------
    runner_name = "generate"

    @property
    def info(self) -> EngineInfo:
        loaded = self._loaded
        return EngineInfo(
            model_name=loaded.name if loaded else "",
            model_revision=loaded.revision if loaded else self.config.model_revision,
            untrained=loaded.untrained if loaded else self.config.model_path is None,
            constrained=self.config.constrained_decoding,
            streams_text=True,
            device=str(loaded.runtime.device) if loaded else self.config.device,
            dtype=str(loaded.runtime.dtype).removeprefix("torch.") if loaded else self.config.dtype,
            runner=self.runner_name if loaded else "",
            max_batch_size=self._max_batch,
        )

    def stats(self) -> EngineStats:
        return EngineStats(**self.counters, running_rows=self.running_rows())

    def cancel(self, request_id: str) -> None:
        job = self._jobs.get(request_id)
        if job is not None and not job.future.done():
            self._abandon(job)
            job.future.cancel()

    @property
    def ready(self) -> bool:
        return self._ready and not self._stopping

    @property
    def loaded(self) -> LoadedModel:
        if self._loaded is None:
            raise EngineNotReady("model not loaded")
        return self._loaded

    def queue_depth(self) -> int:
        return len(self._queue)

    def running_rows(self) -> int:
        """Requests generating now (taken from the queue, not yet answered)."""
        return len(self._running)

    async def start(self) -> None:
        if self._executor is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self._wakeup = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="model-worker"
        )
        started = time.perf_counter()
        self._loaded = await self._loop.run_in_executor(self._executor, self._load)
        if self.config.warmup:
            await self._warm_up()
        self._scheduler = asyncio.create_task(self._schedule(), name="engine-scheduler")
        self._ready = True
        logger.info(
            "engine ready: %s rev %s on %s/%s/%s in %.2fs (%s, batch<=%d)",
            self._loaded.name,
            self._loaded.revision,
            self._loaded.runtime.device,
            self._loaded.runtime.dtype,
            self._loaded.runtime.attn_implementation,
            time.perf_counter() - started,
            type(self).__name__,
            self._max_batch,
        )

    async def stop(self) -> None:
        self._stopping = True
        self._ready = False
        self._queue.drain(EngineNotReady("engine stopping"))
        self._signal_work()
        if self._scheduler is not None:
            # The scheduler exits after the batch in progress (if any) has finished.
            await self._scheduler
            self._scheduler = None
        if self._executor is not None:
            executor, self._executor = self._executor, None
            await asyncio.get_running_loop().run_in_executor(executor, self._release)
            executor.shutdown(wait=True)

    async def generate(
        self, request: GenerationRequest, listener: GenerationListener
    ) -> GenerationResult:
        if not self.ready or self._wakeup is None:
            raise EngineNotReady("model not loaded" if not self._stopping else "engine stopping")
        self._queue.check_admission(request)
        with self._queue.preparing():
            prepared = await asyncio.to_thread(self._prepare, request)
        if not self.ready:
            raise EngineNotReady("engine stopping")
        job = _Job(request, listener, prepared, asyncio.get_running_loop().create_future())
        self._jobs[request.request_id] = job
        self._queue.enqueue(job)
        self._signal_work()
        try:
            if request.deadline is None:
                result = await job.future
            else:
                remaining = max(request.deadline - time.monotonic(), 0)
                result = await asyncio.wait_for(job.future, remaining)
        except (asyncio.CancelledError, TimeoutError):
            self._abandon(job)
            raise
        finally:
            if self._jobs.get(request.request_id) is job:
                del self._jobs[request.request_id]
        return result

    def count_prompt_tokens(self, prompt: str, tiles_per_image: tuple[int, ...]) -> int:
        """Tokens the model will read for this prompt, image tokens included (CPU work: call
        it from a worker thread)."""
        loaded = self.loaded
        text = build_prompt(
            prompt, tiles_per_image, loaded.tokens_per_tile, self.config.system_message
        )
        return len(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])

    # --- request preparation (helper thread) -----------------------------------------------
    def _prepare(self, request: GenerationRequest) -> _Prepared:
        loaded = self.loaded
        tiles = tuple(int(t) for t in request.tiles_per_image)
        pixels = request.pixel_values
        total = sum(tiles)
        size = loaded.image_size
        if total:
            if pixels.ndim != 4 or pixels.shape[0] != total or pixels.shape[1:] != (3, size, size):
                raise ValueError(
                    f"pixel_values shape {tuple(pixels.shape)} does not fit {total} tiles of "
                    f"3x{size}x{size}"
                )
            check_dtype(pixels)
            # Bytes stay bytes until they reach the model's device (pixels.PixelStaging).
            pixel_tensor: torch.Tensor | None = torch.from_numpy(np.ascontiguousarray(pixels))
        else:
            if pixels.size:
                raise ValueError("pixel_values given without images in tiles_per_image")
            pixel_tensor = None
        text = build_prompt(
            request.prompt, tiles, loaded.tokens_per_tile, self.config.system_message
        )
        input_ids: list[int] = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
        max_new = max(1, min(request.max_new_tokens, self.config.max_new_tokens))
        min_new = token_rules.min_new_tokens(max_new, self.forced_length)
        grammar = matcher = None
        if request.json_schema is not None and self.config.constrained_decoding:
            grammar = constrained.compile_json_schema(request.json_schema)
            matcher = constrained.new_matcher(self._ll_tokenizer(), grammar)
        return _Prepared(input_ids, pixel_tensor, max_new, min_new, grammar, matcher)

    def _ll_tokenizer(self) -> Any:
        loaded = self.loaded
        return constrained.ll_tokenizer(loaded.tokenizer, loaded.vocab_size, loaded.eos_token_id)

    # --- scheduling (event loop) -----------------------------------------------------------
    def _signal_work(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def _abandon(self, job: _Job) -> None:
        self._queue.abandon(job)

    def _report_positions(self) -> None:
        self._queue.report_positions()

    async def _schedule(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while not self._stopping:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # Give concurrent arrivals a short window to share this batch.
            deadline = self._queue.first().enqueued_at + self._wait_s
            while len(self._queue) < self._max_batch and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            batch: list[_Job] = []
            while len(batch) < self._max_batch and (job := self._queue.take()) is not None:
                batch.append(job)
            self._report_positions()
            if not batch:
                continue
            for job in batch:
                _safe(job.listener.on_started)
            self._running = batch
            try:
                outcomes = await loop.run_in_executor(self._executor, self._run_batch, batch)
            except Exception as exc:  # the worker itself failed; every row fails with it
                logger.exception("batch failed")
                outcomes = [exc] * len(batch)
            finally:
                self._running = []
            for job, outcome in zip(batch, outcomes, strict=True):
                _set_outcome(job, outcome)

    # --- model thread ----------------------------------------------------------------------
    def _load(self) -> LoadedModel:
        loaded = self._load_model()
        loaded.kv_cache = resolve_kv_cache(self.kv_cache, loaded.runtime)
        return loaded

    def _load_model(self) -> LoadedModel:
        cfg = self.config
        if cfg.torch_threads > 0:
            torch.set_num_threads(cfg.torch_threads)
        runtime = detect_runtime(cfg.device, cfg.dtype, cfg.attn_implementation)
        return self._model_loader(cfg, runtime)

    def _release(self) -> None:
        self._loaded = None
        self._staging = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    async def _warm_up(self) -> None:
        """One small batch through the full path (vision, constrained decoding, streaming) so
        the first real request does not pay for lazy initialisation."""
        request = self._warm_up_request(self.loaded)
        prepared = await asyncio.to_thread(self._prepare, request)
        assert self._loop is not None
        job = _Job(request, NullListener(), prepared, self._loop.create_future())
        started = time.perf_counter()
        outcome = await self._loop.run_in_executor(self._executor, self._run_batch, [job])
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        logger.info("warm-up generate took %.3fs", time.perf_counter() - started)

    def _warm_up_request(self, loaded: LoadedModel) -> GenerationRequest:
        size = loaded.image_size
        return GenerationRequest(
            request_id="warmup",
            prompt="<image>\nwarm up",
            pixel_values=np.zeros((1, 3, size, size), dtype=np.uint8),
            tiles_per_image=(1,),
            max_new_tokens=4,
            json_schema={"type": "object", "properties": {"ok": {"type": "boolean"}}}
            if self.config.constrained_decoding
            else None,
        )

    def _pixels(self, device: torch.device | str) -> PixelStaging:
        staging = self._staging
        if staging is None or staging.device != torch.device(device):
            staging = self._staging = PixelStaging(device)
        return staging

    def _run_batch(self, jobs: list[_Job]) -> list[GenerationResult | BaseException]:
        loaded = self.loaded
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
            self._post_progress(jobs[row], count, text)

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
            decode=lambda t: str(loaded.tokenizer.decode(t, skip_special_tokens=True)),
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
        self.counters["batches"] += 1
        self.counters["rows"] += len(jobs)
        self.counters["tokens_generated"] += sum(len(t) for t in controller.tokens)
        self.counters["cancelled_rows"] += controller.finish_reason.count("cancelled")
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
                results.append(_expired())
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

    def _post_progress(self, job: _Job, count: int, text: str) -> None:
        loop = self._loop
        if loop is None or job.cancelled:
            return
        loop.call_soon_threadsafe(_deliver_progress, job, count, text)


def load_configured_model(cfg: EngineConfig, runtime: Runtime) -> LoadedModel:
    """The checkpoint at ``model_path``; without one, the cached demo model."""
    if cfg.model_path is not None:
        return load_model(
            cfg.model_path,
            layout=cfg.model_layout,
            runtime=runtime,
            trust_remote_code=cfg.model_trust_remote_code,
            revision=cfg.model_revision,
            torch_compile=cfg.torch_compile,
        )
    path = ensure_demo_model(cfg.model_cache_dir, cfg.demo_config_path)
    return load_model(path, layout="native", runtime=runtime, revision=cfg.model_revision)


def _expired() -> TimeoutError:
    # The model thread ended the row at its deadline and answered before the caller's timer
    # fired (a busy loop): still a deadline, never a truncated success.
    return TimeoutError("deadline passed during generation")


def _cancel_probe(job: _Job) -> Any:
    return lambda: job.cancelled


def _deliver_progress(job: _Job, count: int, text: str) -> None:
    if not job.cancelled:
        _safe(job.listener.on_tokens, count, text)


def _set_outcome(job: _Job, outcome: GenerationResult | BaseException) -> None:
    """Answer a job's caller once (a cancelled or already answered caller is left alone)."""
    if job.future.done():
        return
    if isinstance(outcome, BaseException):
        job.future.set_exception(outcome)
    else:
        job.future.set_result(outcome)
