"""One inspection, end to end: images -> tiles -> prompt -> model -> parsed output -> decision.

The pipeline is transport-neutral: it reports progress through a callback and raises
InspectionError; the gRPC servicer translates both. CPU work (decode, tiling, JSON parsing)
runs in a thread pool, generation in the engine's own worker, so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from opentelemetry import trace

from inference_svc.domain.decision import decide
from inference_svc.domain.errors import ErrorKind, InspectionError, Reason
from inference_svc.domain.models import (
    Accepted,
    AnswerReady,
    AttemptRecord,
    Completed,
    FetchedImage,
    GenerationProgress,
    ImagesFetched,
    ImageSource,
    Inspection,
    InspectionRequest,
    ModelInfo,
    PreparedImage,
    PreprocessingDone,
    ProgressEvent,
    Queued,
    StageTimings,
)
from inference_svc.domain.output_parser import IncrementalAnswerParser, parse_model_output
from inference_svc.domain.output_schema import constrained_schema
from inference_svc.domain.prompt import PromptTemplate
from inference_svc.domain.recording import ImageInfo, Recorder
from inference_svc.engine.api import (
    Engine,
    EngineNotReady,
    EngineOverloaded,
    GenerationRequest,
    GenerationResult,
)

log = logging.getLogger(__name__)

Emit = Callable[[ProgressEvent], None]


class ImageSourceFetcher(Protocol):
    async def fetch(self, source: ImageSource) -> FetchedImage: ...


ImagePreparer = Callable[[FetchedImage, int], PreparedImage]


class PipelineObserver(Protocol):
    """Metrics hooks; every method must be cheap and must not raise."""

    def stage(self, name: str, seconds: float) -> None: ...

    def decision(self, decision: str) -> None: ...

    def output_retry(self) -> None: ...

    def fetch_error(self, reason: str) -> None: ...

    def generation(self, result: GenerationResult) -> None: ...

    def image_bytes(self, role: str, size: int) -> None: ...

    def rejected(self, reason: str) -> None: ...


class NullObserver:
    def stage(self, name: str, seconds: float) -> None:
        pass

    def decision(self, decision: str) -> None:
        pass

    def output_retry(self) -> None:
        pass

    def fetch_error(self, reason: str) -> None:
        pass

    def generation(self, result: GenerationResult) -> None:
        pass

    def image_bytes(self, role: str, size: int) -> None:
        pass

    def rejected(self, reason: str) -> None:
        pass


@dataclass(frozen=True)
class PipelineConfig:
    reference_max_tiles: int = 1
    pickup_max_tiles: int = 2
    max_new_tokens: int = 2000
    max_output_retries: int = 1
    max_evidence_chars: int = 300
    max_analysis_chars: int = 600
    max_result_chars: int = 120
    # Stream a GenerationProgress at most every this many tokens.
    progress_every_tokens: int = 8


@dataclass
class _ImageState:
    source: ImageSource
    fetched: FetchedImage | None = None
    prepared: PreparedImage | None = None

    def info(self) -> ImageInfo:
        p, f = self.prepared, self.fetched
        return ImageInfo(
            role=self.source.role,
            index=self.source.index,
            uri=_without_query(self.source.uri or ""),
            fetched_uri=_without_query(f.fetched_uri) if f else "",
            inline=self.source.content is not None,
            # Prepared images carry the digest (hashed in a worker thread); an image fetched
            # but never prepared (the request failed meanwhile) is hashed here, off the hot path.
            sha256=p.sha256 if p else (f.sha256 or hashlib.sha256(f.data).hexdigest()) if f else "",
            size_bytes=len(f.data) if f else 0,
            width=p.width if p else 0,
            height=p.height if p else 0,
            format=p.format if p else "",
            tiles=p.num_tiles if p else 0,
        )


class _GenerationListener:
    """Turns engine callbacks into stream events, including answers parsed as they complete."""

    def __init__(
        self, emit: Emit, attempt: int, max_new_tokens: int, every: int, streaming: bool
    ) -> None:
        # Only a streaming caller sees answers before the end: parse (and have the engine
        # decode) the text so far only for those.
        self.wants_text = streaming
        self._emit = emit
        self._attempt = attempt
        self._max = max_new_tokens
        self._every = max(1, every)
        self._last_reported = -1
        self._parser = IncrementalAnswerParser()
        self.first_token_at: float | None = None

    def on_queued(self, position: int) -> None:
        self._emit(Queued(position=position))

    def on_started(self) -> None:
        self._emit(Queued(position=0))

    def on_tokens(self, tokens_generated: int, text_so_far: str) -> None:
        if self.first_token_at is None and tokens_generated > 0:
            self.first_token_at = time.monotonic()
        if tokens_generated - self._last_reported >= self._every or tokens_generated >= self._max:
            self._last_reported = tokens_generated
            self._emit(GenerationProgress(self._attempt, tokens_generated, self._max))
        if not self.wants_text:
            return
        for answer in self._parser.feed(text_so_far):
            self._emit(
                AnswerReady(
                    attempt=self._attempt,
                    label=str(answer.get("Label", "")),
                    result=str(answer.get("Result", "")),
                    evidence=str(answer.get("Evidence", "")),
                    confidence=_as_confidence(answer.get("Confidence")),
                    retake_image=_as_bool(answer.get("isRetakeImage")),
                )
            )


def _without_query(uri: str) -> str:
    """Signed URLs carry credentials in the query string: records keep scheme, host and path."""
    parts = urlsplit(uri)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _as_confidence(value: Any) -> int:
    try:
        return max(0, min(100, round(float(str(value).strip().rstrip("%")))))
    except (TypeError, ValueError):
        return 0


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in {"true", "yes", "y", "1"}


async def _first_error(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Waits for all tasks; on the first failure cancels the rest and re-raises it."""
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class InspectionPipeline:
    def __init__(
        self,
        *,
        fetcher: ImageSourceFetcher,
        prepare: ImagePreparer,
        engine: Engine,
        template: PromptTemplate,
        recorder: Recorder,
        executor: Executor,
        config: PipelineConfig,
        observer: PipelineObserver | None = None,
        tracer: trace.Tracer | None = None,
        prepare_executor: Executor | None = None,
    ) -> None:
        self._fetcher = fetcher
        self._prepare = prepare
        self._engine = engine
        self._template = template
        self._recorder = recorder
        self._executor = executor
        self._config = config
        self._observer: PipelineObserver = observer or NullObserver()
        self._tracer = tracer or trace.NoOpTracer()
        self._prepare_executor = prepare_executor or executor

    @property
    def model_info(self) -> ModelInfo:
        return ModelInfo(
            name=self._engine.info.model_name,
            revision=self._engine.info.model_revision,
            untrained=self._engine.info.untrained,
            prompt_template_version=self._template.version,
        )

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def run(
        self,
        request: InspectionRequest,
        method: str,
        emit: Emit,
        deadline: float | None = None,
        streaming: bool = True,
    ) -> Inspection:
        """Runs the inspection. Records request, attempts and result or failure; raises
        InspectionError (its ``stage`` says where) for every failure the caller should see."""
        try:
            self._recorder.ensure_capacity()
        except InspectionError as exc:
            self._observer.rejected(exc.reason.value)
            raise
        started = time.monotonic()
        timings = StageTimings()
        states = [_ImageState(s) for s in (*request.reference_images, *request.pickup_images)]
        stage = "fetch"
        request_recorded = False
        try:
            emit(Accepted(request.inspection_id))
            await self._fetch_and_prepare(states, emit, timings)
            await self._recorder.request_received(request, method, [s.info() for s in states])
            request_recorded = True
            stage = "generate"
            inspection = await self._infer(
                request, states, emit, timings, deadline, started, streaming
            )
            stage = "record"
            enqueue_started = time.monotonic()
            await self._recorder.result(inspection)
            self._observer.stage("persist_enqueue", time.monotonic() - enqueue_started)
            self._observer.decision(inspection.decision.value)
            emit(Completed(inspection))
            return inspection
        except InspectionError as exc:
            if exc.stage == "validate":
                exc.stage = stage
            await self._record_failure(
                request,
                method,
                states,
                request_recorded,
                exc.stage,
                exc.reason.value,
                exc.message,
                exc.kind.value,
            )
            raise
        except asyncio.CancelledError:
            # The server cancels the run when the call's deadline passes (gRPC's own deadline
            # timer may fire a moment before ours); the caller went away otherwise. The record
            # says which.
            expired = deadline is not None and time.monotonic() >= deadline - 0.1
            await self._record_failure(
                request,
                method,
                states,
                request_recorded,
                stage,
                (Reason.DEADLINE_EXCEEDED if expired else Reason.CANCELLED).value,
                "the deadline passed" if expired else "the call was cancelled",
                "DEADLINE_EXCEEDED" if expired else "CANCELLED",
            )
            raise
        except Exception as exc:
            log.exception("inspection failed unexpectedly", extra={"stage": stage})
            await self._record_failure(
                request,
                method,
                states,
                request_recorded,
                stage,
                Reason.INTERNAL.value,
                f"{type(exc).__name__}: {exc}",
                "INTERNAL",
            )
            raise InspectionError(
                ErrorKind.INTERNAL, Reason.INTERNAL, "internal error", stage=stage
            ) from exc
        finally:
            self._observer.stage("total", time.monotonic() - started)

    async def _record_failure(
        self,
        request: InspectionRequest,
        method: str,
        states: list[_ImageState],
        request_recorded: bool,
        stage: str,
        reason: str,
        message: str,
        status_code: str,
    ) -> None:
        async def record() -> None:
            if not request_recorded:
                await self._recorder.request_received(request, method, [s.info() for s in states])
            await self._recorder.failure(request.inspection_id, stage, reason, message, status_code)

        # Shielded so that a cancelled call still leaves its failure on record.
        try:
            await asyncio.shield(record())
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("could not record inspection failure")

    async def _fetch_and_prepare(
        self, states: list[_ImageState], emit: Emit, timings: StageTimings
    ) -> None:
        started = time.monotonic()
        fetched_count = 0
        fetch_done_at = started
        total = len(states)

        async def one(state: _ImageState) -> None:
            nonlocal fetched_count, fetch_done_at
            try:
                with self._tracer.start_as_current_span(
                    "fetch", attributes={"image": state.source.field_path}
                ):
                    state.fetched = await self._fetcher.fetch(state.source)
            except InspectionError as exc:
                self._observer.fetch_error(exc.metadata.get("fetch_error", exc.reason.value))
                raise
            self._observer.image_bytes(state.source.role.value, len(state.fetched.data))
            fetched_count += 1
            fetch_done_at = max(fetch_done_at, time.monotonic())
            emit(ImagesFetched(fetched=fetched_count, total=total))
            max_tiles = (
                self._config.reference_max_tiles
                if state.source.role.value == "reference"
                else self._config.pickup_max_tiles
            )
            with self._tracer.start_as_current_span(
                "preprocess", attributes={"image": state.source.field_path}
            ):
                state.prepared = await asyncio.get_running_loop().run_in_executor(
                    self._prepare_executor, self._prepare, state.fetched, max_tiles
                )

        with self._tracer.start_as_current_span("images", attributes={"images": total}):
            await _first_error([asyncio.create_task(one(s)) for s in states])
        done = time.monotonic()
        timings.fetch = fetch_done_at - started
        timings.preprocess = done - fetch_done_at
        self._observer.stage("fetch", timings.fetch)
        self._observer.stage("preprocess", timings.preprocess)

    async def _generate(
        self, request: GenerationRequest, listener: _GenerationListener
    ) -> GenerationResult:
        try:
            return await self._engine.generate(request, listener)
        except EngineOverloaded as exc:
            self._observer.rejected(Reason.OVERLOADED.value)
            raise InspectionError(
                ErrorKind.RESOURCE_EXHAUSTED,
                Reason.OVERLOADED,
                "the model queue is full; retry with backoff",
                stage="generate",
                retry_after_seconds=1.0,
            ) from exc
        except EngineNotReady as exc:
            raise InspectionError(
                ErrorKind.UNAVAILABLE,
                Reason.MODEL_NOT_READY,
                "the model is not ready",
                stage="generate",
            ) from exc
        except TimeoutError as exc:
            raise InspectionError(
                ErrorKind.DEADLINE_EXCEEDED,
                Reason.DEADLINE_EXCEEDED,
                "the deadline passed before generation finished",
                stage="generate",
            ) from exc

    async def _infer(
        self,
        request: InspectionRequest,
        states: list[_ImageState],
        emit: Emit,
        timings: StageTimings,
        deadline: float | None,
        started: float,
        streaming: bool,
    ) -> Inspection:
        prepared = [s.prepared for s in states if s.prepared is not None]
        pixel_values: np.ndarray[Any, np.dtype[np.uint8]] = await self._in_thread(
            np.concatenate, [p.tiles for p in prepared]
        )
        tiles_per_image = tuple(p.num_tiles for p in prepared)
        n_ref = len(request.reference_images)
        n_pick = len(request.pickup_images)
        schema = (
            constrained_schema(
                request.questions,
                max_evidence_chars=self._config.max_evidence_chars,
                max_analysis_chars=self._config.max_analysis_chars,
                max_result_chars=self._config.max_result_chars,
            )
            if self._engine.info.constrained
            else None
        )
        retry_errors: list[str] | None = None
        attempts = 1 + self._config.max_output_retries
        parsed: dict[str, object] | None = None
        for attempt_no in range(1, attempts + 1):
            prompt = self._template.render(
                product_name=request.product_name,
                questions=list(request.questions),
                n_reference=n_ref,
                n_pickup=n_pick,
                retry_errors=retry_errors,
            )
            if attempt_no == 1:
                prompt_tokens = await self._in_thread(
                    self._engine.count_prompt_tokens, prompt, tiles_per_image
                )
                emit(
                    PreprocessingDone(tiles=int(pixel_values.shape[0]), prompt_tokens=prompt_tokens)
                )
            listener = _GenerationListener(
                emit,
                attempt_no,
                self._config.max_new_tokens,
                self._config.progress_every_tokens,
                streaming,
            )
            gen_started = time.monotonic()
            with self._tracer.start_as_current_span(
                "generate", attributes={"attempt": attempt_no, "constrained": schema is not None}
            ) as span:
                result = await self._generate(
                    GenerationRequest(
                        request_id=f"{request.inspection_id}/{attempt_no}",
                        prompt=prompt,
                        pixel_values=pixel_values,
                        tiles_per_image=tiles_per_image,
                        max_new_tokens=self._config.max_new_tokens,
                        json_schema=schema,
                        deadline=deadline,
                    ),
                    listener,
                )
                span.set_attributes(
                    {
                        "prompt_tokens": result.prompt_tokens,
                        "completion_tokens": result.completion_tokens,
                        "batch_size": result.batch_size,
                    }
                )
            gen_seconds = time.monotonic() - gen_started
            timings.queue += result.timings.queue_seconds
            timings.generate += result.timings.prefill_seconds + result.timings.decode_seconds
            self._observer.stage("queue_wait", result.timings.queue_seconds)
            self._observer.generation(result)

            parse_started = time.monotonic()
            with self._tracer.start_as_current_span("parse"):
                outcome = await self._in_thread(parse_model_output, result.text)
            parse_seconds = time.monotonic() - parse_started
            timings.parse += parse_seconds
            self._observer.stage("parse", parse_seconds)
            await self._recorder.attempt(
                request.inspection_id,
                AttemptRecord(
                    attempt_number=attempt_no,
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
                    duration_s=gen_seconds,
                    constrained=result.constrained,
                ),
                self.model_info,
            )
            if outcome.valid:
                parsed = outcome.parsed
                break
            retry_errors = list(outcome.errors) or ["the output was not valid JSON"]
            if attempt_no < attempts:
                self._observer.output_retry()
                log.info(
                    "model output invalid; retrying with the validation errors",
                    extra={"attempt": attempt_no, "errors": len(retry_errors)},
                )
        if parsed is None:
            raise InspectionError(
                ErrorKind.INTERNAL,
                Reason.MODEL_OUTPUT_INVALID,
                f"the model's output was invalid after {attempts} attempt(s): "
                + "; ".join((retry_errors or [])[:3]),
                stage="parse",
            )
        outcome_decided = decide(request.questions, parsed)
        timings.total = time.monotonic() - started
        return Inspection(
            inspection_id=request.inspection_id,
            shipping_id=request.shipping_id,
            product_id=request.product_id,
            previous_inspection_id=request.previous_inspection_id,
            decision=outcome_decided.decision,
            recommendation=outcome_decided.recommendation,
            match_score=outcome_decided.match_score,
            answers=outcome_decided.answers,
            analysis=outcome_decided.analysis,
            confidence_factors=outcome_decided.confidence_factors,
            timings=timings,
            attempts=attempt_no,
            model=self.model_info,
            created_at=datetime.now(UTC),
        )


@dataclass
class Admission:
    """Bounds the inspections in progress; beyond the bound callers get OVERLOADED at once."""

    limit: int
    inflight: int = 0
    _listeners: list[Callable[[int], None]] = field(default_factory=list)
    _reject_listeners: list[Callable[[str], None]] = field(default_factory=list)

    def on_change(self, callback: Callable[[int], None]) -> None:
        self._listeners.append(callback)

    def on_reject(self, callback: Callable[[str], None]) -> None:
        self._reject_listeners.append(callback)

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        if self.inflight >= self.limit:
            for cb in self._reject_listeners:
                cb(Reason.OVERLOADED.value)
            raise InspectionError(
                ErrorKind.RESOURCE_EXHAUSTED,
                Reason.OVERLOADED,
                f"{self.inflight} inspections in progress (limit {self.limit}); retry with backoff",
                retry_after_seconds=1.0,
            )
        self.inflight += 1
        self._notify()
        try:
            yield
        finally:
            self.inflight -= 1
            self._notify()

    def _notify(self) -> None:
        for cb in self._listeners:
            cb(self.inflight)
