"""The pipeline over a deterministic fake engine: what it records and raises, the stage of
every failure, and the one deadline it enforces."""

from __future__ import annotations

import asyncio
import time

import pytest

from inference_svc.domain.errors import ErrorKind, InspectionError, Reason, Stage, image_error
from inference_svc.domain.models import (
    Accepted,
    AnswerReady,
    Completed,
    Decision,
    GenerationProgress,
    ImagesFetched,
    PreprocessingDone,
    ProgressEvent,
    Queued,
)
from inference_svc.engine.api import EngineNotReady, EngineOverloaded
from tests.pipeline.conftest import Build
from tests.pipeline.fakes import VALID, FakeFetcher, MemoryRecorder, request
from tests.support.fake_engine import FakeEngine


async def test_inspection_end_to_end_records_request_attempt_and_result(
    build: Build, recorder: MemoryRecorder
) -> None:
    engine = FakeEngine([VALID])
    events: list[ProgressEvent] = []
    inspection = await build(engine).run(request(), "Inspect", events.append)
    assert inspection.decision is Decision.PICK
    assert inspection.attempts == 1
    assert [a.label for a in inspection.answers] == ["Is the brand visible?", "What is the colour?"]
    assert inspection.model.name == "fake-model"
    assert inspection.model.prompt_template_version == "inspection-v1"
    # Tiles of every image, in prompt order (reference first), 1 + 2 + 2 by default.
    (generation,) = engine.requests
    assert generation.tiles_per_image == (1, 2, 2)
    assert generation.pixel_values.shape[0] == 5
    assert generation.json_schema is not None
    # The string bounds are the prompt template's (the bundled one: 300 evidence chars).
    first_item = generation.json_schema["properties"]["verification_results"]["prefixItems"][0]
    assert first_item["properties"]["Evidence"]["maxLength"] == 300
    assert generation.request_id == "insp-1/1"
    (received,) = recorder.requests
    images = received[2]
    assert [i.uri for i in images] == ["", "", "https://img.example/p1.jpg"]  # query dropped
    assert all(len(i.sha256) == 64 for i in images)
    (attempt,) = recorder.attempts
    assert attempt.valid and attempt.raw_output == VALID
    assert recorder.results == [inspection]
    assert recorder.failures == []
    kinds = [type(e) for e in events]
    assert kinds[0] is Accepted and kinds[-1] is Completed
    assert kinds.count(ImagesFetched) == 3
    assert PreprocessingDone in kinds and Queued in kinds and GenerationProgress in kinds
    assert kinds.count(AnswerReady) == 2


async def test_unary_callers_get_no_early_answers(build: Build) -> None:
    events: list[ProgressEvent] = []
    await build(FakeEngine([VALID])).run(request(), "Inspect", events.append, streaming=False)
    assert not [e for e in events if isinstance(e, AnswerReady)]


async def test_invalid_output_is_retried_with_its_errors(
    build: Build, recorder: MemoryRecorder
) -> None:
    engine = FakeEngine(["not json at all", VALID])
    inspection = await build(engine, max_output_retries=1).run(
        request(), "Inspect", lambda _e: None
    )
    assert inspection.attempts == 2
    assert [a.valid for a in recorder.attempts] == [False, True]
    first, second = engine.requests
    assert second.request_id == "insp-1/2"
    assert second.prompt != first.prompt  # the retry prompt carries the validation errors


async def test_output_invalid_after_every_attempt_fails_in_parse(
    build: Build, recorder: MemoryRecorder
) -> None:
    engine = FakeEngine(["{}", "{}"])
    with pytest.raises(InspectionError) as err:
        await build(engine, max_output_retries=1).run(request(), "Inspect", lambda _e: None)
    assert err.value.reason is Reason.MODEL_OUTPUT_INVALID
    assert err.value.stage is Stage.PARSE
    assert "after 2 attempt(s)" in err.value.message
    (failure,) = recorder.failures
    assert (failure.stage, failure.reason, failure.status_code) == (
        Stage.PARSE,
        "MODEL_OUTPUT_INVALID",
        "INTERNAL",
    )
    assert len(recorder.attempts) == 2


async def test_unknown_recommendation_fails_in_decide(
    build: Build, recorder: MemoryRecorder
) -> None:
    bad = VALID.replace('"Accept"', '"Maybe"')
    engine = FakeEngine([bad])
    # Unconstrained: the lenient output schema does not know the recommendations either.
    engine.constrained = False
    with pytest.raises(InspectionError) as err:
        await build(engine, max_output_retries=0).run(request(), "Inspect", lambda _e: None)
    assert err.value.stage in (Stage.PARSE, Stage.DECIDE)
    assert recorder.failures[0].stage is err.value.stage


async def test_imaging_errors_keep_their_own_stage(build: Build, recorder: MemoryRecorder) -> None:
    fetcher = FakeFetcher(
        fail=image_error(Reason.IMAGE_UNDECODABLE, "pickup_images[1]", "bad", Stage.DECODE)
    )
    with pytest.raises(InspectionError):
        await build(FakeEngine([VALID]), fetcher).run(request(), "Inspect", lambda _e: None)
    (failure,) = recorder.failures
    assert failure.stage is Stage.DECODE
    assert failure.reason == "IMAGE_UNDECODABLE"
    # The request is on record even though intake failed (no image was prepared).
    assert len(recorder.requests) == 1


@pytest.mark.parametrize(
    ("error", "reason", "stage"),
    [
        (EngineOverloaded(), Reason.OVERLOADED, Stage.QUEUE),
        (EngineNotReady(), Reason.MODEL_NOT_READY, Stage.GENERATE),
    ],
)
async def test_engine_refusals_become_domain_errors(
    build: Build, recorder: MemoryRecorder, error: Exception, reason: Reason, stage: Stage
) -> None:
    with pytest.raises(InspectionError) as err:
        await build(FakeEngine([], fail_with=error)).run(request(), "Inspect", lambda _e: None)
    assert (err.value.reason, err.value.stage) == (reason, stage)
    assert recorder.failures[0].stage is stage


async def test_unexpected_errors_are_internal_with_the_stage_they_hit(
    build: Build, recorder: MemoryRecorder
) -> None:
    engine = FakeEngine([], fail_with=ZeroDivisionError("boom"))
    with pytest.raises(InspectionError) as err:
        await build(engine).run(request(), "Inspect", lambda _e: None)
    assert err.value.kind is ErrorKind.INTERNAL
    assert err.value.message == "internal error"
    (failure,) = recorder.failures
    assert failure.stage is Stage.GENERATE
    assert "ZeroDivisionError: boom" in failure.message


async def test_deadline_during_fetch_is_recorded_against_fetch(
    build: Build, recorder: MemoryRecorder
) -> None:
    pipeline = build(FakeEngine([VALID]), FakeFetcher(delay=5.0))
    started = time.monotonic()
    with pytest.raises(InspectionError) as err:
        await pipeline.run(request(), "Inspect", lambda _e: None, deadline=started + 0.2)
    assert time.monotonic() - started < 2.0
    assert (err.value.kind, err.value.reason) == (
        ErrorKind.DEADLINE_EXCEEDED,
        Reason.DEADLINE_EXCEEDED,
    )
    assert err.value.stage is Stage.FETCH
    (failure,) = recorder.failures
    assert (failure.stage, failure.reason, failure.status_code) == (
        Stage.FETCH,
        "DEADLINE_EXCEEDED",
        "DEADLINE_EXCEEDED",
    )


async def test_deadline_during_generation_is_recorded_against_generate(
    build: Build, recorder: MemoryRecorder
) -> None:
    engine = FakeEngine([VALID], hold=asyncio.Event())
    with pytest.raises(InspectionError) as err:
        await build(engine).run(
            request(), "Inspect", lambda _e: None, deadline=time.monotonic() + 0.3
        )
    assert err.value.reason is Reason.DEADLINE_EXCEEDED
    assert recorder.failures[0].stage is Stage.GENERATE
    # The engine was told the same deadline (it may drop the row before running it).
    assert engine.requests[0].deadline is not None


@pytest.mark.parametrize(
    ("cause", "reason"),
    [(ErrorKind.CANCELLED, "CANCELLED"), (ErrorKind.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED")],
)
async def test_cancellation_is_recorded_with_the_cause_the_caller_reports(
    build: Build, recorder: MemoryRecorder, cause: ErrorKind, reason: str
) -> None:
    engine = FakeEngine([VALID], hold=asyncio.Event(), queue_first=True)
    generating = asyncio.Event()

    def emit(event: ProgressEvent) -> None:
        if isinstance(event, GenerationProgress):
            generating.set()

    task = asyncio.create_task(
        build(engine, progress_every_tokens=1).run(
            request(), "InspectStream", emit, cancel_cause=lambda: cause
        )
    )
    await asyncio.wait_for(generating.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (failure,) = recorder.failures
    assert (failure.stage, failure.reason, failure.status_code) == (
        Stage.GENERATE,
        reason,
        cause.value,
    )


async def test_cancellation_while_queued_is_recorded_against_the_queue(
    build: Build, recorder: MemoryRecorder
) -> None:
    engine = FakeEngine([VALID], queue_first=True)
    queued = asyncio.Event()

    def emit(event: ProgressEvent) -> None:
        if isinstance(event, Queued) and event.position > 0:
            queued.set()
            raise_later.cancel()

    raise_later = asyncio.create_task(build(engine).run(request(), "InspectStream", emit))
    with pytest.raises(asyncio.CancelledError):
        await raise_later
    assert queued.is_set()
    assert recorder.failures[0].stage is Stage.QUEUE
    assert recorder.failures[0].reason == "CANCELLED"


async def test_spool_full_is_refused_before_any_work(
    build: Build, recorder: MemoryRecorder
) -> None:
    def full() -> None:
        raise InspectionError(ErrorKind.RESOURCE_EXHAUSTED, Reason.EVENT_SPOOL_FULL, "full")

    recorder.ensure_capacity = full  # type: ignore[method-assign]
    engine = FakeEngine([VALID])
    with pytest.raises(InspectionError) as err:
        await build(engine).run(request(), "Inspect", lambda _e: None)
    assert err.value.stage is Stage.ADMIT
    assert engine.requests == [] and recorder.requests == [] and recorder.failures == []
