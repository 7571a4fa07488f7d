"""Image intake: fetch every image of a request concurrently, decode and tile each in a worker
(never on the event loop), and stack the tiles for the model."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from numpy.typing import NDArray
from opentelemetry import trace

from inference_svc.domain.errors import InspectionError, Stage
from inference_svc.domain.models import (
    FetchedImage,
    ImageRole,
    ImagesFetched,
    ImageSignal,
    ImageSource,
    InspectionRequest,
    PreparedImage,
    ProgressEvent,
    StageTimings,
)
from inference_svc.domain.recording import ImageInfo
from inference_svc.pipeline.observer import PipelineObserver, StageTracker

Emit = Callable[[ProgressEvent], None]


class ImageSourceFetcher(Protocol):
    async def fetch(self, source: ImageSource) -> FetchedImage: ...


ImagePreparer = Callable[[FetchedImage, int], PreparedImage]
Analyse = Callable[[PreparedImage], ImageSignal]


class PixelBudget(Protocol):
    """One request's allowance of full-size decoding (imaging.decode.PixelBudget)."""

    def charge(self, fetched: FetchedImage) -> None: ...


def without_query(uri: str) -> str:
    """Signed URLs carry credentials in the query string: records keep scheme, host and path."""
    parts = urlsplit(uri)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


@dataclass
class ImageState:
    """One image of a request as far as intake got with it."""

    source: ImageSource
    fetched: FetchedImage | None = None
    prepared: PreparedImage | None = None
    # The decision policy's measures of it (hash, quality), taken beside tiling.
    signal: ImageSignal | None = None

    def info(self) -> ImageInfo:
        p, f = self.prepared, self.fetched
        return ImageInfo(
            role=self.source.role,
            index=self.source.index,
            uri=without_query(self.source.uri or ""),
            fetched_uri=without_query(f.fetched_uri) if f else "",
            inline=self.source.content is not None,
            # Prepared images carry the digest (hashed in a worker thread); an image fetched
            # but never prepared (the request failed meanwhile) is hashed here, off the hot path.
            sha256=p.sha256 if p else (f.sha256 or hashlib.sha256(f.data).hexdigest()) if f else "",
            size_bytes=len(f.data) if f else 0,
            width=p.width if p else 0,
            height=p.height if p else 0,
            format=p.format if p else "",
            tiles=p.num_tiles if p else 0,
            perceptual_hash=self.signal.phash if self.signal else None,
        )


def image_states(request: InspectionRequest) -> list[ImageState]:
    """Reference images first, then pickup images: the order of the prompt's image slots."""
    return [ImageState(s) for s in (*request.reference_images, *request.pickup_images)]


@dataclass(frozen=True)
class ModelImages:
    """All tiles of a request, stacked in image order, and how many belong to each image."""

    pixel_values: NDArray[np.uint8]
    tiles_per_image: tuple[int, ...]

    @property
    def tiles(self) -> int:
        return int(self.pixel_values.shape[0])


async def _first_error(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Waits for all tasks; on the first failure cancels the rest and re-raises it."""
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class ImageIntake:
    def __init__(
        self,
        *,
        fetcher: ImageSourceFetcher,
        prepare: ImagePreparer,
        executor: Executor,
        prepare_executor: Executor,
        max_tiles: dict[ImageRole, int],
        observer: PipelineObserver,
        tracer: trace.Tracer,
        pixel_budget: Callable[[], PixelBudget] | None = None,
    ) -> None:
        self._fetcher = fetcher
        self._pixel_budget = pixel_budget
        self._prepare = prepare
        self._executor = executor
        self._prepare_executor = prepare_executor
        self._max_tiles = max_tiles
        self._observer = observer
        self._tracer = tracer

    async def take(
        self,
        states: list[ImageState],
        emit: Emit,
        timings: StageTimings,
        tracker: StageTracker,
        analyse: Analyse | None = None,
    ) -> ModelImages:
        """Fetches and prepares every image (the first failure cancels the rest), then stacks
        the tiles in a worker thread. ``analyse`` measures each prepared image in the same
        worker call (the decision policy's signals, in ``ImageState.signal``)."""
        tracker.enter(Stage.FETCH)
        started = time.monotonic()
        progress = _FetchProgress(len(states), started)
        # Charged from each header before its decode: refuses the image that would take the
        # request's full-size decoding over its limit.
        budget = self._pixel_budget() if self._pixel_budget is not None else None
        with self._tracer.start_as_current_span("images", attributes={"images": len(states)}):
            await _first_error(
                [
                    asyncio.create_task(self._one(s, emit, progress, tracker, budget, analyse))
                    for s in states
                ]
            )
        timings.fetch = progress.done_at - started
        timings.preprocess = time.monotonic() - progress.done_at
        self._observer.stage("fetch", timings.fetch)
        self._observer.stage("preprocess", timings.preprocess)
        prepared = [s.prepared for s in states if s.prepared is not None]
        pixel_values: NDArray[np.uint8] = await self._in_thread(
            np.concatenate, [p.tiles for p in prepared]
        )
        return ModelImages(pixel_values, tuple(p.num_tiles for p in prepared))

    async def _one(
        self,
        state: ImageState,
        emit: Emit,
        progress: _FetchProgress,
        tracker: StageTracker,
        budget: PixelBudget | None,
        analyse: Analyse | None,
    ) -> None:
        attributes = {"image": state.source.field_path}
        try:
            with self._tracer.start_as_current_span("fetch", attributes=attributes):
                fetched = await self._fetcher.fetch(state.source)
        except InspectionError as exc:
            self._observer.fetch_error(exc.metadata.get("fetch_error", exc.reason.value))
            raise
        state.fetched = fetched
        self._observer.image_bytes(state.source.role.value, len(fetched.data))
        if budget is not None:
            budget.charge(fetched)
        if progress.fetched_one():
            tracker.enter(Stage.PREPROCESS)
        emit(ImagesFetched(fetched=progress.fetched, total=progress.total))
        with self._tracer.start_as_current_span("preprocess", attributes=attributes):
            state.prepared, state.signal = await asyncio.get_running_loop().run_in_executor(
                self._prepare_executor,
                _prepare_and_analyse,
                self._prepare,
                analyse,
                fetched,
                self._max_tiles[state.source.role],
            )

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


def _prepare_and_analyse(
    prepare: ImagePreparer, analyse: Analyse | None, fetched: FetchedImage, max_tiles: int
) -> tuple[PreparedImage, ImageSignal | None]:
    prepared = prepare(fetched, max_tiles)
    return prepared, analyse(prepared) if analyse is not None else None


class _FetchProgress:
    def __init__(self, total: int, started: float) -> None:
        self.total = total
        self.fetched = 0
        self.done_at = started

    def fetched_one(self) -> bool:
        """Counts one fetched image; True when it was the last."""
        self.fetched += 1
        self.done_at = max(self.done_at, time.monotonic())
        return self.fetched == self.total
