"""How the service prepares images, from its settings: the worker pools decode and tiling run
in, the preparer they run, and each request's pixel budget."""

from __future__ import annotations

import functools
import multiprocessing
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

from inference_svc.allocator import fix_mmap_threshold
from inference_svc.domain.models import FetchedImage, PreparedImage
from inference_svc.imaging.decode import PixelBudget
from inference_svc.imaging.tiling import prepare_image
from inference_svc.priority import lower_process_priority, lower_thread_priority
from inference_svc.settings import InferenceSettings

IMAGE_SIZE = 448


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


def preparer(settings: InferenceSettings) -> Callable[[FetchedImage, int], PreparedImage]:
    """The image preparer: a module-level function with plain arguments, so it pickles to
    worker processes (and its bound arguments fingerprint the tiling for the caches)."""
    return functools.partial(
        prepare_image,
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
