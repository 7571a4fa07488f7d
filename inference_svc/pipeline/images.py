"""Image intake: fetch every image of a request concurrently, decode and tile each in a worker
(never on the event loop), and stack the tiles for the model. With an engine that caches
vision features, a reference image seen before is sent by reference instead
(:mod:`.reference_reuse`): fetched (its content decides its key) but not decoded or tiled."""

from __future__ import annotations

import asyncio
import dataclasses
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
    Emit,
    FetchedImage,
    ImageRole,
    ImagesFetched,
    ImageSignal,
    ImageSource,
    InspectionRequest,
    PreparedImage,
    StageTimings,
)
from inference_svc.domain.recording import ImageInfo
from inference_svc.pipeline.observer import PipelineObserver, StageTracker
from inference_svc.pipeline.reference_reuse import ReferenceReuse, fingerprint, rebind


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
    # The engine's feature-cache key ("" = not cached) and whether it goes by reference
    # (no tiles: the engine holds its features).
    image_key: str = ""
    by_reference: bool = False

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
    """All tiles of a request, stacked in image order, and how many belong to each image;
    with the engine's feature cache, each image's key and those sent by reference (whose tiles
    are not in ``pixel_values``)."""

    pixel_values: NDArray[np.uint8]
    tiles_per_image: tuple[int, ...]
    image_keys: tuple[str, ...] = ()
    by_reference: tuple[int, ...] = ()

    @property
    def tiles(self) -> int:
        return sum(self.tiles_per_image)


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
        engine_caches: Callable[[], bool] | None = None,
    ) -> None:
        self._fetcher = fetcher
        # Reference reuse needs an engine that caches features and a preparer whose
        # configuration is known (it is part of the key).
        tiling = fingerprint(prepare)
        self._engine_caches = engine_caches
        self._reuse = ReferenceReuse(tiling) if engine_caches and tiling else None
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
        return await self._stack(states)

    async def with_pixels(self, states: list[ImageState], indexes: Sequence[int]) -> ModelImages:
        """The request's images again, those at ``indexes`` (sent by reference, which the
        engine no longer holds) decoded and tiled from their fetched bytes this time."""
        loop = asyncio.get_running_loop()
        for index in indexes:
            state = states[index]
            assert state.fetched is not None and state.by_reference
            state.prepared = await loop.run_in_executor(
                self._prepare_executor,
                self._prepare,
                state.fetched,
                self._max_tiles[state.source.role],
            )
            state.by_reference = False
        return await self._stack(states)

    async def _stack(self, states: list[ImageState]) -> ModelImages:
        prepared = [s.prepared for s in states if s.prepared is not None]
        sent = [s.prepared.tiles for s in states if s.prepared is not None and not s.by_reference]
        pixel_values: NDArray[np.uint8] = (
            await self._in_thread(np.concatenate, sent) if sent else _NO_TILES
        )
        caching = any(s.image_key for s in states)
        return ModelImages(
            pixel_values,
            tuple(p.num_tiles for p in prepared),
            tuple(s.image_key for s in states) if caching else (),
            tuple(i for i, s in enumerate(states) if s.by_reference),
        )

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
        max_tiles = self._max_tiles[state.source.role]
        reuse = self._reuse if state.source.role is ImageRole.REFERENCE else None
        analysis = fingerprint(analyse)
        if reuse is not None and analysis is not None and self._caching():
            if not fetched.sha256:
                # Not in the decode pool: a repeated catalogue photo must not wait behind the
                # other calls' decodes to find out it needs none (hashlib releases the GIL).
                digest = await asyncio.to_thread(_sha256, fetched.data)
                state.fetched = fetched = dataclasses.replace(fetched, sha256=digest)
            state.image_key = reuse.image_key(fetched.sha256, max_tiles)
            sketch = reuse.get(state.image_key, analysis)
        else:
            reuse = sketch = None
        if sketch is None and budget is not None:
            budget.charge(fetched)
        if progress.fetched_one():
            tracker.enter(Stage.PREPROCESS)
        emit(ImagesFetched(fetched=progress.fetched, total=progress.total))
        if sketch is not None:
            state.prepared = PreparedImage(
                source=state.source,
                tiles=_NO_TILES,
                num_tiles=sketch.num_tiles,
                width=sketch.width,
                height=sketch.height,
                format=sketch.format,
                size_bytes=len(fetched.data),
                sha256=fetched.sha256,
                fetched_uri=fetched.fetched_uri,
            )
            state.signal = rebind(sketch, state.source)
            state.by_reference = True
            return
        with self._tracer.start_as_current_span("preprocess", attributes=attributes):
            state.prepared, state.signal = await asyncio.get_running_loop().run_in_executor(
                self._prepare_executor,
                _prepare_and_analyse,
                self._prepare,
                analyse,
                fetched,
                max_tiles,
            )
        if reuse is not None and analysis is not None and state.prepared is not None:
            reuse.put(state.image_key, analysis, state.prepared, state.signal)

    def _caching(self) -> bool:
        return self._engine_caches is not None and self._engine_caches()

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


# A by-reference image's tiles: none (the engine holds its features).
_NO_TILES = np.zeros((0, 3, 0, 0), dtype=np.uint8)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
