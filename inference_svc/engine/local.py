"""The in-process engine: the scheduler plus the runner the loaded model supports.

:class:`LocalEngine` admits requests (bounded, through :class:`.scheduler.Scheduler`),
prepares them on a helper thread (prompt, tokens, pixels, grammar), queues them and answers
their callers; the runner (:mod:`.runner`) takes queued rows and drives the model on its own
thread, so the event loop never blocks on the model. The runner follows the model: the slot
runner (:mod:`.slot_runner`, slotted KV cache) when :mod:`.slot_decoder` can drive it, else the
generate runner (:mod:`.generate_runner`), with a warning.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch

from . import constrained, token_rules
from .api import (
    EngineInfo,
    EngineNotReady,
    EngineStats,
    GenerationListener,
    GenerationRequest,
    GenerationResult,
    NullListener,
)
from .config import EngineConfig, engine_info
from .devices import Runtime, detect_runtime, resolve_kv_cache
from .generate_runner import BATCH_WAIT_S, GenerateRunner
from .loader import LoadedModel, load_model
from .model_builder import ensure_demo_model
from .pixels import check_dtype
from .prompting import build_prompt
from .runner import Host, Runner
from .scheduler import Job, Prepared, Scheduler
from .slot_decoder import supports
from .slot_runner import SlotRunner
from .vision_cache import VisionFeatureCache, plan_request

logger = logging.getLogger(__name__)

# Builds the model for a configuration on a runtime (the default: the checkpoint at
# model_path, or the cached demo model); benchmarks bring their own.
ModelLoader = Callable[[EngineConfig, Runtime], LoadedModel]

# "auto": the slot runner when the model supports it; "generate": the generate runner always
# (benchmarks and tests that compare the runners; the service always uses "auto").
RunnerChoice = Literal["auto", "generate"]


class LocalEngine:
    """Implements :class:`inference_svc.engine.api.Engine` in this process.

    ``forced_length``: every row runs to its max_new_tokens unless its grammar ends it (stop
    tokens do not end it); for benchmarks and tests, which need fixed lengths."""

    def __init__(
        self,
        config: EngineConfig,
        *,
        forced_length: bool = False,
        model_loader: ModelLoader | None = None,
        runner: RunnerChoice = "auto",
        batch_wait_s: float = BATCH_WAIT_S,
    ) -> None:
        self.config = config
        self.forced_length = forced_length
        self._model_loader = model_loader or load_configured_model
        self._runner_choice = runner
        self._batch_wait_s = batch_wait_s
        # "auto": static on CPU, dynamic elsewhere (tests compare the two).
        self.kv_cache = "auto"
        self._queue = Scheduler(config.max_queue_size)
        self._host = Host(config, self._queue, max(1, config.max_batch_size))
        self._runner: Runner | None = None
        self._ready = False
        self._serving: asyncio.Task[None] | None = None
        self._jobs: dict[str, Job] = {}  # by request id, for cancel()

    # --- Engine protocol -------------------------------------------------------------------
    @property
    def info(self) -> EngineInfo:
        runner = self._runner
        return engine_info(
            self.config, self._host.loaded, runner.name if runner else "", self._host.max_batch
        )

    def stats(self) -> EngineStats:
        cache = self._host.vision_cache
        return EngineStats(
            **self._host.counters,
            **(cache.counters() if cache is not None else {}),
            running_rows=self.running_rows(),
        )

    def cancel(self, request_id: str) -> None:
        job = self._jobs.get(request_id)
        if job is not None and not job.future.done():
            self._queue.abandon(job)
            job.future.cancel()

    @property
    def ready(self) -> bool:
        return self._ready and not self._host.stopping

    @property
    def loaded(self) -> LoadedModel:
        return self._host.model

    @property
    def runner(self) -> Runner:
        """The runner the loaded model got (tests and benchmarks look inside)."""
        if self._runner is None:
            raise EngineNotReady("model not loaded")
        return self._runner

    def queue_depth(self) -> int:
        return len(self._queue)

    def running_rows(self) -> int:
        """Requests generating now (taken from the queue, not yet answered)."""
        return self._runner.running_rows() if self._runner is not None else 0

    async def start(self) -> None:
        host = self._host
        if host.executor is not None:
            return
        loop = host.loop = asyncio.get_running_loop()
        host.stopping = False
        host.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="model-worker"
        )
        started = time.perf_counter()
        loaded = await loop.run_in_executor(host.executor, self._load)
        if self.config.warmup:
            await self._warm_up()
        self._serving = asyncio.create_task(self.runner.serve(), name="engine-runner")
        self._ready = True
        logger.info(
            "engine ready: %s rev %s on %s/%s/%s in %.2fs (%s runner, batch<=%d)",
            loaded.name,
            loaded.revision,
            loaded.runtime.device,
            loaded.runtime.dtype,
            loaded.runtime.attn_implementation,
            time.perf_counter() - started,
            self.runner.name,
            host.max_batch,
        )

    async def stop(self) -> None:
        host = self._host
        host.stopping = True
        self._ready = False
        self._queue.drain(EngineNotReady("engine stopping"))
        self._signal_work()
        if self._serving is not None:
            # The runner returns once the rows in progress (if any) are answered.
            await self._serving
            self._serving = None
        if host.executor is not None:
            executor, host.executor = host.executor, None
            await asyncio.get_running_loop().run_in_executor(executor, self._release)
            executor.shutdown(wait=True)

    async def generate(
        self, request: GenerationRequest, listener: GenerationListener
    ) -> GenerationResult:
        if not self.ready or self._runner is None:
            raise EngineNotReady(
                "model not loaded" if not self._host.stopping else "engine stopping"
            )
        self._queue.check_admission(request)
        with self._queue.preparing():
            prepared = await asyncio.to_thread(self._prepare, request)
        if not self.ready:
            raise EngineNotReady("engine stopping")
        job = Job(request, listener, prepared, asyncio.get_running_loop().create_future())
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
            self._queue.abandon(job)
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
    def _prepare(self, request: GenerationRequest) -> Prepared:
        loaded = self.loaded
        tiles = tuple(int(t) for t in request.tiles_per_image)
        pixels = request.pixel_values
        if any(not 0 <= i < len(tiles) for i in request.by_reference):
            raise ValueError(f"by_reference {request.by_reference} names no image")
        # Images sent by reference have no tiles in pixel_values.
        total = sum(tiles) - sum(tiles[i] for i in set(request.by_reference))
        size = loaded.image_size
        if total:
            if pixels.ndim != 4 or pixels.shape[0] != total or pixels.shape[1:] != (3, size, size):
                raise ValueError(
                    f"pixel_values shape {tuple(pixels.shape)} does not fit {total} tiles of "
                    f"3x{size}x{size}"
                )
            check_dtype(pixels)
        elif pixels.size:
            raise ValueError("pixel_values given without images in tiles_per_image")
        vision, encode = plan_request(self._host.vision_cache, request, tiles)
        pixel_tensor: torch.Tensor | None = None
        chosen = [s for s in encode if s.stop > s.start]
        if total and chosen:
            parts = (
                pixels[chosen[0]]
                if len(chosen) == 1
                else np.concatenate([pixels[s] for s in chosen])
            )
            # Bytes stay bytes until they reach the model's device (pixels.PixelStaging).
            pixel_tensor = torch.from_numpy(np.ascontiguousarray(parts))
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
        return Prepared(input_ids, pixel_tensor, max_new, min_new, grammar, matcher, vision)

    def _ll_tokenizer(self) -> Any:
        loaded = self.loaded
        return constrained.ll_tokenizer(loaded.tokenizer, loaded.vocab_size, loaded.eos_token_id)

    def _signal_work(self) -> None:
        if self._runner is not None:
            self._runner.signal()

    # --- model thread ----------------------------------------------------------------------
    def _load(self) -> LoadedModel:
        loaded = self._load_model()
        loaded.kv_cache = resolve_kv_cache(self.kv_cache, loaded.runtime)
        self._host.loaded = loaded
        self._runner = self._choose_runner(loaded)
        if self.config.vision_cache_bytes > 0 and isinstance(self._runner, SlotRunner):
            runtime = loaded.runtime
            identity = f"{loaded.name}@{loaded.revision}/{runtime.device}/{runtime.dtype}"
            self._host.vision_cache = VisionFeatureCache(self.config.vision_cache_bytes, identity)
        return loaded

    def _choose_runner(self, loaded: LoadedModel) -> Runner:
        """The slot runner when the slot decoder can drive the model (the choice is by
        capability: the service has no setting for it), else the generate runner."""
        if self._runner_choice == "auto":
            reason = "remote-code model" if loaded.kind != "native" else supports(loaded.model)
            if reason is None:
                return SlotRunner(self._host)
            logger.warning("continuous batching unavailable (%s): batching per request", reason)
        return GenerateRunner(self._host, self._batch_wait_s)

    def _load_model(self) -> LoadedModel:
        cfg = self.config
        if cfg.torch_threads > 0:
            torch.set_num_threads(cfg.torch_threads)
        runtime = detect_runtime(cfg.device, cfg.dtype, cfg.attn_implementation)
        return self._model_loader(cfg, runtime)

    def _release(self) -> None:
        if self._runner is not None:
            self._runner.release()
        self._host.loaded = None
        self._host.vision_cache = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    async def _warm_up(self) -> None:
        """One small request through the runner's full path (vision, constrained decoding,
        streaming) so the first real request does not pay for lazy initialisation."""
        request = self._warm_up_request(self.loaded)
        prepared = await asyncio.to_thread(self._prepare, request)
        job = Job(request, NullListener(), prepared, asyncio.get_running_loop().create_future())
        started = time.perf_counter()
        result = await self.runner.warm_up(job)
        logger.info(
            "warm-up took %.3fs (%d tokens)",
            time.perf_counter() - started,
            result.completion_tokens,
        )

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
