"""The attempt loop: render the prompt, generate, parse and validate; on invalid output retry
with the validation errors in the prompt. Every touch of the engine's API is in this module."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace

from inference_svc.domain.errors import ErrorKind, InspectionError, Reason, Stage
from inference_svc.domain.models import (
    AttemptRecord,
    Emit,
    InspectionRequest,
    ModelInfo,
    PreprocessingDone,
    StageTimings,
    ValidationOutcome,
)
from inference_svc.domain.output_parser import parse_model_output
from inference_svc.domain.output_schema import constrained_schema
from inference_svc.domain.prompt import PromptTemplate
from inference_svc.domain.recording import Recorder
from inference_svc.engine.api import (
    Engine,
    EngineNotReady,
    EngineOverloaded,
    GenerationRequest,
    GenerationResult,
    ImagesNotCached,
)
from inference_svc.pipeline.config import PipelineConfig
from inference_svc.pipeline.images import ModelImages
from inference_svc.pipeline.observer import PipelineObserver, StageTracker
from inference_svc.pipeline.stream import StreamListener

log = logging.getLogger(__name__)

# The request's images again with those at the given indexes as pixels (ImageIntake).
Resend = Callable[[tuple[int, ...]], Awaitable[ModelImages]]


@dataclass(frozen=True)
class AttemptsOutcome:
    """How the attempts ended: the first valid output (None when every attempt was invalid),
    how many attempts were made, and the last attempt's validation errors."""

    parsed: dict[str, object] | None
    attempts: int
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Generated:
    prompt: str
    result: GenerationResult
    seconds: float


class AttemptRunner:
    def __init__(
        self,
        *,
        engine: Engine,
        template: PromptTemplate,
        recorder: Recorder,
        executor: Executor,
        config: PipelineConfig,
        observer: PipelineObserver,
        tracer: trace.Tracer,
    ) -> None:
        self._engine = engine
        self._template = template
        self._recorder = recorder
        self._executor = executor
        self._config = config
        self._observer = observer
        self._tracer = tracer

    @property
    def model_info(self) -> ModelInfo:
        return ModelInfo(
            name=self._engine.info.model_name,
            revision=self._engine.info.model_revision,
            untrained=self._engine.info.untrained,
            prompt_template_version=self._template.version,
            load_path=self._engine.info.model_load_path,
        )

    async def run(
        self,
        request: InspectionRequest,
        images: ModelImages,
        emit: Emit,
        *,
        timings: StageTimings,
        tracker: StageTracker,
        deadline: float | None,
        streaming: bool,
        resend: Resend | None = None,
    ) -> AttemptsOutcome:
        schema = (
            constrained_schema(request.questions, self._template.limits)
            if self._engine.info.constrained
            else None
        )
        attempts = 1 + self._config.max_output_retries
        errors: list[str] | None = None
        for number in range(1, attempts + 1):
            tracker.enter(Stage.GENERATE)
            prompt = self._prompt(request, errors)
            if number == 1:
                prompt_tokens = await self._in_thread(
                    self._engine.count_prompt_tokens, prompt, images.tiles_per_image
                )
                emit(PreprocessingDone(tiles=images.tiles, prompt_tokens=prompt_tokens))
            listener = StreamListener(
                emit,
                attempt=number,
                max_new_tokens=self._config.max_new_tokens,
                every=self._config.progress_every_tokens,
                streaming=streaming,
                tracker=tracker,
            )
            request_id = f"{request.inspection_id}/{number}"
            try:
                generated = await self._generate(
                    request_id, prompt, images, schema, deadline, listener, timings, number
                )
            except ImagesNotCached:
                # The engine evicted a reference image since the intake chose to send it by
                # reference: every such image goes as pixels now (no second refusal possible).
                if resend is None:
                    raise
                log.info("reference images not cached any more; sending their pixels")
                images = await resend(images.by_reference)
                generated = await self._generate(
                    request_id, prompt, images, schema, deadline, listener, timings, number
                )
            tracker.enter(Stage.PARSE)
            outcome = await self._parse(generated.result.text, timings)
            await self._record(request.inspection_id, number, generated, outcome)
            if outcome.valid:
                return AttemptsOutcome(outcome.parsed, number)
            errors = list(outcome.errors) or ["the output was not valid JSON"]
            if number < attempts:
                self._observer.output_retry()
                log.info(
                    "model output invalid; retrying with the validation errors",
                    extra={"attempt": number, "errors": len(errors)},
                )
        return AttemptsOutcome(None, attempts, errors or [])

    def _prompt(self, request: InspectionRequest, retry_errors: list[str] | None) -> str:
        return self._template.render(
            product_name=request.product_name,
            questions=list(request.questions),
            n_reference=len(request.reference_images),
            n_pickup=len(request.pickup_images),
            retry_errors=retry_errors,
        )

    async def _generate(
        self,
        request_id: str,
        prompt: str,
        images: ModelImages,
        schema: dict[str, Any] | None,
        deadline: float | None,
        listener: StreamListener,
        timings: StageTimings,
        number: int,
    ) -> _Generated:
        generation = GenerationRequest(
            request_id=request_id,
            prompt=prompt,
            pixel_values=images.pixel_values,
            tiles_per_image=images.tiles_per_image,
            max_new_tokens=self._config.max_new_tokens,
            json_schema=schema,
            deadline=deadline,
            image_keys=images.image_keys,
            by_reference=images.by_reference,
        )
        started = time.monotonic()
        attributes = {"attempt": number, "constrained": schema is not None}
        with self._tracer.start_as_current_span("generate", attributes=attributes) as span:
            result = await self._call_engine(generation, listener)
            span.set_attributes(
                {
                    "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": result.completion_tokens,
                    "batch_size": result.batch_size,
                }
            )
        seconds = time.monotonic() - started
        timings.queue += result.timings.queue_seconds
        timings.generate += result.timings.prefill_seconds + result.timings.decode_seconds
        self._observer.stage("queue_wait", result.timings.queue_seconds)
        self._observer.generation(result)
        return _Generated(prompt, result, seconds)

    async def _call_engine(
        self, request: GenerationRequest, listener: StreamListener
    ) -> GenerationResult:
        """The engine's refusals as domain errors. A TimeoutError (the engine saw the request's
        deadline pass) goes to the pipeline, which owns the deadline."""
        try:
            return await self._engine.generate(request, listener)
        except EngineOverloaded as exc:
            self._observer.rejected(Reason.OVERLOADED.value)
            raise InspectionError(
                ErrorKind.RESOURCE_EXHAUSTED,
                Reason.OVERLOADED,
                "the model queue is full; retry with backoff",
                stage=Stage.QUEUE,
                retry_after_seconds=1.0,
            ) from exc
        except EngineNotReady as exc:
            raise InspectionError(
                ErrorKind.UNAVAILABLE,
                Reason.MODEL_NOT_READY,
                "the model is not ready",
                stage=Stage.GENERATE,
            ) from exc

    async def _parse(self, text: str, timings: StageTimings) -> ValidationOutcome:
        started = time.monotonic()
        with self._tracer.start_as_current_span("parse"):
            outcome: ValidationOutcome = await self._in_thread(parse_model_output, text)
        seconds = time.monotonic() - started
        timings.parse += seconds
        self._observer.stage("parse", seconds)
        return outcome

    async def _record(
        self, inspection_id: str, number: int, generated: _Generated, outcome: ValidationOutcome
    ) -> None:
        result, prompt = generated.result, generated.prompt
        await self._recorder.attempt(
            inspection_id,
            AttemptRecord(
                attempt_number=number,
                prompt=prompt,
                prompt_sha256=hashlib.sha256(prompt.encode()).hexdigest(),
                template_version=self._template.version,
                template_sha256=self._template.sha256,
                raw_output=result.text,
                parsed_output=outcome.parsed,
                valid=outcome.valid,
                validation_errors=list(outcome.errors),
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
                duration_s=generated.seconds,
                constrained=result.constrained,
            ),
            self.model_info,
        )

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
