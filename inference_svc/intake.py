"""How the service prepares images, from its settings: the worker pools decode and tiling run
in, the preparer they run, and each request's pixel budget."""

from __future__ import annotations

import functools
import multiprocessing
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

from inference_svc.allocator import fix_mmap_threshold, release_free_memory
from inference_svc.domain.models import FetchedImage, PreparedImage
from inference_svc.imaging.decode import PixelBudget
from inference_svc.imaging.tiling import prepare_image
from inference_svc.priority import lower_process_priority, lower_thread_priority
from inference_svc.settings import InferenceSettings

IMAGE_SIZE = 448
# Images at least this large (full size, in pixels) leave enough behind in the decoding thread's
# heap to be worth a trim afterwards; the trim costs far less than such a decode.
RELEASE_AFTER_PIXELS = 16_000_000


def _init_preprocess_process(nice: int, mmap_threshold_bytes: int) -> None:
    lower_process_priority(nice)
    fix_mmap_threshold(mmap_threshold_bytes)


def worker_pools(settings: InferenceSettings) -> tuple[ThreadPoolExecutor, Executor]:
    """(threads for parsing and, without PREPROCESS_PROCESSES, decoding; the pool decode and
    tiling run in). Fixes this process's allocator first, as the processes do theirs."""
    fix_mmap_threshold(settings.malloc_mmap_threshold_bytes)
    threads = ThreadPoolExecutor(
        max_workers=settings.preprocess_threads,
        thread_name_prefix="preprocess",
        initializer=lower_thread_priority,
        initargs=(settings.worker_nice,),
    )
    if settings.preprocess_processes <= 0:
        return threads, threads
    # forkserver: never fork this process, whose gRPC and torch threads a fork would copy in an
    # undefined state.
    processes = ProcessPoolExecutor(
        max_workers=settings.preprocess_processes,
        mp_context=multiprocessing.get_context("forkserver"),
        # Image decoding is throughput work: it yields the CPU to the event loop.
        initializer=_init_preprocess_process,
        initargs=(settings.worker_nice, settings.malloc_mmap_threshold_bytes),
    )
    return threads, processes


def prepare_releasing(
    fetched: FetchedImage, max_tiles: int, *, release_after_pixels: int, **options: Any
) -> PreparedImage:
    """``prepare_image``, then, after a big image, the freed memory back to the OS."""
    prepared = prepare_image(fetched, max_tiles, **options)
    if release_after_pixels and prepared.width * prepared.height >= release_after_pixels:
        release_free_memory()
    return prepared


def preparer(settings: InferenceSettings) -> Callable[[FetchedImage, int], PreparedImage]:
    """The image preparer: a module-level function with plain arguments, so it pickles to
    worker processes (and its bound arguments fingerprint the tiling for the caches).
    MALLOC_MMAP_THRESHOLD_BYTES=0 leaves the allocator alone, the trim included."""
    return functools.partial(
        prepare_releasing,
        release_after_pixels=RELEASE_AFTER_PIXELS if settings.malloc_mmap_threshold_bytes else 0,
        image_size=IMAGE_SIZE,
        max_pixels=settings.max_image_pixels,
        mode=settings.preprocess,
        exif=settings.exif_transpose,
    )


def pixel_budget(settings: InferenceSettings) -> Callable[[], PixelBudget]:
    """A new budget per request; exact mode decodes JPEGs at full size, so they count there."""
    return functools.partial(
        PixelBudget,
        settings.max_request_pixels,
        settings.max_image_pixels,
        full_size_jpeg=settings.preprocess == "exact",
    )
