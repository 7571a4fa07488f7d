"""The image intake of a repeated catalogue photo: found in the reference cache without the
decode pool, so it never waits behind other calls' decodes (the pool is shared with them)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from opentelemetry import trace

from inference_svc.domain.models import ImageRole, ImageSource, StageTimings
from inference_svc.pipeline.images import ImageIntake, ImageState
from inference_svc.pipeline.observer import NullObserver, StageTracker
from tests.pipeline.fakes import FakeFetcher, prepare

REFERENCE = ImageSource(ImageRole.REFERENCE, 0, uri="https://cdn.example/mug.jpg")


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    # One worker, as busy as a loaded server's decode threads can be.
    with ThreadPoolExecutor(1) as executor:
        yield executor


def _intake(pool: ThreadPoolExecutor) -> ImageIntake:
    return ImageIntake(
        fetcher=FakeFetcher(),
        prepare=prepare,
        executor=pool,
        prepare_executor=pool,
        max_tiles={ImageRole.REFERENCE: 1, ImageRole.PICKUP: 2},
        observer=NullObserver(),
        tracer=trace.NoOpTracer(),
        engine_caches=lambda: True,
    )


async def _take(intake: ImageIntake) -> ImageState:
    state = ImageState(REFERENCE)
    await intake.take([state], lambda _event: None, StageTimings(), StageTracker())
    return state


async def test_a_repeated_reference_goes_by_reference_while_the_decode_pool_is_busy(
    pool: ThreadPoolExecutor,
) -> None:
    intake = _intake(pool)
    first = await _take(intake)
    assert not first.by_reference and first.image_key
    busy = threading.Event()
    pool.submit(busy.wait)
    try:
        # A hang guard, not a timing: with the digest queued behind the busy worker this
        # never finishes.
        again = await asyncio.wait_for(_take(intake), timeout=10)
    finally:
        busy.set()
    assert again.by_reference
    assert again.image_key == first.image_key
