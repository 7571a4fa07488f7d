"""One inspection, end to end: validate -> image intake -> attempts -> decision -> record.

The pipeline is transport-neutral: it reports progress through a callback and raises
InspectionError; the gRPC servicer translates both. It owns the call's deadline: the whole run
is bounded by it, and a timeout or cancellation is recorded against the stage it interrupted,
with the cause the caller's transport reports.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

from opentelemetry import trace

from inference_svc.domain.errors import ErrorKind, InspectionError, Reason, Stage
from inference_svc.domain.models import (
    Accepted,
    Completed,
    Emit,
    ImageRole,
    ImageSignal,
    Inspection,
    InspectionRequest,
    ModelInfo,
    StageTimings,
)
from inference_svc.domain.outcome import ReuseLookup, decide_with_policy
from inference_svc.domain.policy import PolicyHolder, SelectedPolicy
from inference_svc.domain.prompt import PromptTemplate
from inference_svc.domain.recording import ImageInfo, Recorder
from inference_svc.engine.api import Engine
from inference_svc.pipeline.attempts import AttemptRunner, AttemptsOutcome
from inference_svc.pipeline.config import PipelineConfig
from inference_svc.pipeline.images import (
    ImageIntake,
    ImagePreparer,
    ImageSourceFetcher,
    ImageState,
    PixelBudget,
    image_states,
)
from inference_svc.pipeline.observer import (
    NullObserver,
    PipelineObserver,
    StageTracker,
    timed,
)
from inference_svc.pipeline.policy_step import PolicyStep, ReuseLookupPort, retake_inspection

log = logging.getLogger("inference_svc.pipeline")

# Why a run was cancelled from outside: ErrorKind.DEADLINE_EXCEEDED when the caller's deadline
# passed, ErrorKind.CANCELLED when the caller went away. Asked only after a cancellation.
CancelCause = Callable[[], ErrorKind]


@dataclass
class _Run:
    request: InspectionRequest
    method: str
    states: list[ImageState]
    started: float = field(default_factory=time.monotonic)
    timings: StageTimings = field(default_factory=StageTimings)
    tracker: StageTracker = field(default_factory=StageTracker)
    request_recorded: bool = False


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
        pixel_budget: Callable[[], PixelBudget] | None = None,
        policies: PolicyHolder | None = None,
        reuse_lookup: ReuseLookupPort | None = None,
    ) -> None:
        self._recorder = recorder
        self._policy = PolicyStep(policies, reuse_lookup)
        self._observer: PipelineObserver = observer or NullObserver()
        tracer = tracer or trace.NoOpTracer()
        self._intake = ImageIntake(
            fetcher=fetcher,
            prepare=prepare,
            executor=executor,
            prepare_executor=prepare_executor or executor,
            max_tiles={
                ImageRole.REFERENCE: config.reference_max_tiles,
                ImageRole.PICKUP: config.pickup_max_tiles,
            },
            observer=self._observer,
            tracer=tracer,
            pixel_budget=pixel_budget,
            # Reference images seen before go by reference when the engine caches features.
            engine_caches=lambda: engine.info.vision_cache,
        )
        self._attempts = AttemptRunner(
            engine=engine,
            template=template,
            recorder=recorder,
            executor=executor,
            config=config,
            observer=self._observer,
            tracer=tracer,
        )

    @property
    def model_info(self) -> ModelInfo:
        return self._attempts.model_info

    async def run(
        self,
        request: InspectionRequest,
        method: str,
        emit: Emit,
        deadline: float | None = None,
        streaming: bool = True,
        cancel_cause: CancelCause | None = None,
    ) -> Inspection:
        """Runs the inspection within ``deadline`` (time.monotonic(); None = unbounded).
        Records request, attempts and result or failure; raises InspectionError (its
        ``stage`` says where) for every failure the caller should see."""
        self._admit()
        run = _Run(request, method, image_states(request))
        try:
            async with asyncio.timeout_at(deadline):
                return await self._inspect(run, emit, deadline, streaming)
        except InspectionError as exc:
            if exc.stage is None:
                exc.stage = run.tracker.current
            await self._record_failure(run, exc)
            raise
        except TimeoutError as exc:
            error = _deadline_error(run.tracker.current)
            await self._record_failure(run, error)
            raise error from exc
        except asyncio.CancelledError:
            kind = cancel_cause() if cancel_cause is not None else ErrorKind.CANCELLED
            await self._record_failure(run, _cancelled_error(kind, run.tracker.current))
            raise
        except Exception as exc:
            stage = run.tracker.current
            log.exception("inspection failed unexpectedly", extra={"stage": stage.value})
            internal = InspectionError(
                ErrorKind.INTERNAL, Reason.INTERNAL, f"{type(exc).__name__}: {exc}", stage=stage
            )
            await self._record_failure(run, internal)
            raise InspectionError(
                ErrorKind.INTERNAL, Reason.INTERNAL, "internal error", stage=stage
            ) from exc
        finally:
            self._observer.stage("total", time.monotonic() - run.started)

    def _admit(self) -> None:
        """An inspection whose records could not be kept is refused before work starts."""
        try:
            self._recorder.ensure_capacity()
        except InspectionError as exc:
            if exc.stage is None:
                exc.stage = Stage.ADMIT
            self._observer.rejected(exc.reason.value)
            raise

    async def _inspect(
        self, run: _Run, emit: Emit, deadline: float | None, streaming: bool
    ) -> Inspection:
        emit(Accepted(run.request.inspection_id))
        selected = self._policy.select(run.request)
        images = await self._intake.take(
            run.states, emit, run.timings, run.tracker, self._policy.analyser(selected)
        )
        await self._recorder.request_received(run.request, run.method, self._images(run))
        run.request_recorded = True
        signals = [s.signal for s in run.states if s.signal is not None]
        gated = self._policy.gate(selected, signals)
        if gated is not None:
            # The photos cannot be judged: no model time is spent on them.
            run.tracker.enter(Stage.DECIDE)
            run.timings.total = time.monotonic() - run.started
            inspection = retake_inspection(
                run.request, gated, signals, run.timings, self.model_info
            )
        else:
            reuse = self._policy.start_reuse(selected, run.request, signals)
            try:
                outcome = await self._attempts.run(
                    run.request,
                    images,
                    emit,
                    timings=run.timings,
                    tracker=run.tracker,
                    deadline=deadline,
                    streaming=streaming,
                    resend=partial(self._intake.with_pixels, run.states),
                )
            except BaseException:
                if reuse is not None:
                    reuse.cancel()
                raise
            run.tracker.enter(Stage.DECIDE)
            lookup = await self._policy.finish_reuse(selected, reuse)
            inspection = self._decide(run, outcome, selected, signals, lookup)
        self._observer.policy_outcome(inspection)
        run.tracker.enter(Stage.RECORD)
        with timed(self._observer, "persist_enqueue"):
            await self._recorder.result(inspection, run.request.export_uri)
        self._observer.decision(inspection.decision.value)
        emit(Completed(inspection))
        return inspection

    def _decide(
        self,
        run: _Run,
        outcome: AttemptsOutcome,
        selected: SelectedPolicy,
        signals: list[ImageSignal],
        lookup: ReuseLookup | None,
    ) -> Inspection:
        if outcome.parsed is None:
            raise InspectionError(
                ErrorKind.INTERNAL,
                Reason.MODEL_OUTPUT_INVALID,
                f"the model's output was invalid after {outcome.attempts} attempt(s): "
                + "; ".join(outcome.errors[:3]),
                stage=Stage.PARSE,
            )
        request = run.request
        verdict = decide_with_policy(
            selected, request.questions, outcome.parsed, self._policy.signals(signals, lookup)
        )
        decided = verdict.decided
        assert decided is not None  # only the quality gate decides without a model output
        run.timings.total = time.monotonic() - run.started
        return Inspection(
            inspection_id=request.inspection_id,
            shipping_id=request.shipping_id,
            product_id=request.product_id,
            previous_inspection_id=request.previous_inspection_id,
            decision=verdict.outcome,
            recommendation=decided.recommendation,
            match_score=decided.match_score,
            answers=decided.answers,
            analysis=decided.analysis,
            confidence_factors=decided.confidence_factors,
            timings=run.timings,
            attempts=outcome.attempts,
            model=self.model_info,
            created_at=datetime.now(UTC),
            reasons=verdict.reasons,
            policy_name=verdict.policy_name,
            policy_version=verdict.policy_version,
            images=signals,
        )

    @staticmethod
    def _images(run: _Run) -> list[ImageInfo]:
        return [s.info() for s in run.states]

    async def _record_failure(self, run: _Run, error: InspectionError) -> None:
        stage = error.stage or run.tracker.current

        async def record() -> None:
            if not run.request_recorded:
                await self._recorder.request_received(run.request, run.method, self._images(run))
            await self._recorder.failure(
                run.request.inspection_id,
                stage,
                error.reason.value,
                error.message,
                error.kind.value,
            )

        # Shielded so that a cancelled call still leaves its failure on record.
        try:
            await asyncio.shield(record())
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("could not record inspection failure")


def _deadline_error(stage: Stage) -> InspectionError:
    return InspectionError(
        ErrorKind.DEADLINE_EXCEEDED,
        Reason.DEADLINE_EXCEEDED,
        f"the deadline passed during {stage.value}",
        stage=stage,
    )


def _cancelled_error(kind: ErrorKind, stage: Stage) -> InspectionError:
    if kind is ErrorKind.DEADLINE_EXCEEDED:
        return _deadline_error(stage)
    return InspectionError(
        ErrorKind.CANCELLED, Reason.CANCELLED, "the call was cancelled", stage=stage
    )
