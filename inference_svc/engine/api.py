"""The contract between the inspection pipeline and the model engine.

The pipeline hands over a user prompt whose images are marked with ``<image>`` placeholders
(one per image, in order) and the tiles of every image; the engine applies the chat format,
expands each placeholder to the model's image tokens, batches concurrent requests and
generates. Nothing here imports grpc.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

# Re-exported: the placeholder is part of the engine contract (defined in the neutral module).
from inference_svc.model_inputs import IMAGE_PLACEHOLDER as IMAGE_PLACEHOLDER  # noqa: PLC0414


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    # User message text with one IMAGE_PLACEHOLDER per image, in image order.
    prompt: str
    # (total_tiles, 3, H, W), images concatenated in order: uint8 RGB bytes, which the engine
    # normalises on its own device (the cheap form to hand over), or float32 tiles that are
    # already ImageNet-normalised.
    pixel_values: npt.NDArray[np.uint8] | npt.NDArray[np.float32]
    # Tiles per image, same order as the placeholders; sums to pixel_values.shape[0].
    tiles_per_image: tuple[int, ...]
    max_new_tokens: int
    # When set and the engine has constrained decoding on, output is forced to match it.
    json_schema: dict[str, Any] | None = None
    # Monotonic deadline (time.monotonic()) after which the request is abandoned.
    deadline: float | None = None
    # Vision-feature cache (vision_cache.py). Empty, or one key per image in placeholder order:
    # the key under which the engine may keep that image's features ("": never cached).
    image_keys: tuple[str, ...] = ()
    # Indexes of images sent by reference: their tiles are not in pixel_values, the engine
    # uses the features it holds under their key or raises ImagesNotCached.
    by_reference: tuple[int, ...] = ()


class FinishReason(StrEnum):
    STOP = "stop"
    LENGTH = "length"


@dataclass(frozen=True)
class GenerationTimings:
    # Enqueued -> taken for generation.
    queue_seconds: float
    # The prompt (vision tower included) through the model, up to the first token's logits.
    prefill_seconds: float
    # First token -> last token.
    decode_seconds: float

    @property
    def ttft_seconds(self) -> float:
        """Time to the first token, queue included."""
        return self.queue_seconds + self.prefill_seconds


@dataclass(frozen=True)
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    timings: GenerationTimings
    constrained: bool
    # Mean number of rows generating beside this one (itself included).
    batch_size: int = 1
    finish_reason: FinishReason = FinishReason.STOP
    # Constrained rows only: whether the output is a complete match of the schema's grammar,
    # and why the grammar gave up when it did.
    schema_complete: bool | None = None
    constraint_error: str | None = None


@dataclass(frozen=True)
class EngineInfo:
    """What the engine runs (known once started; before that, what its configuration says)."""

    model_name: str
    model_revision: str
    untrained: bool
    constrained: bool
    # Whether listeners get the text so far (engines always do today; a remote engine might not).
    streams_text: bool
    device: str
    dtype: str
    # "slot" (slotted KV cache, rows join and leave between tokens), "generate" (HF generate
    # per batch, for models the slot decoder cannot drive), "" before start.
    runner: str
    max_batch_size: int
    # How the checkpoint was loaded: "native", "converted" (original layout converted to the
    # native model) or "remote_code" (the checkpoint's own code); "" before start.
    model_load_path: str = ""
    # Whether the engine keeps vision features (GenerationRequest.image_keys are used).
    vision_cache: bool = False


@dataclass(frozen=True)
class EngineStats:
    """Counters since start (metrics, tests and benchmarks read these)."""

    # Requests answered by the model (cancelled ones included), and their generated tokens.
    rows: int = 0
    tokens_generated: int = 0
    cancelled_rows: int = 0
    # generate runner: generate() calls; slot runner: decode steps, rows over all steps
    # (row_steps / steps = mean batch), prefills, steps whose grammar masks overlapped the step.
    batches: int = 0
    steps: int = 0
    row_steps: int = 0
    prefills: int = 0
    overlapped_masks: int = 0
    # Requests generating now (taken from the queue, not answered yet).
    running_rows: int = 0
    # Process engine: requests whose tiles went through shared memory / the pipe.
    tiles_shared: int = 0
    tiles_pickled: int = 0
    slab_bytes: int = 0
    # Vision-feature cache: lookups that found / did not find an image's features, entries
    # evicted to make room, and what it holds now.
    vision_cache_hits: int = 0
    vision_cache_misses: int = 0
    vision_cache_evictions: int = 0
    vision_cache_bytes: int = 0
    vision_cache_entries: int = 0


class GenerationListener(Protocol):
    """Progress callbacks. Called from the event loop (never from the model worker thread).

    A listener may set ``wants_text = False``: ``on_tokens`` then gets an empty text, and the
    engine skips decoding the output so far (work that competes with the event loop)."""

    def on_queued(self, position: int) -> None: ...

    def on_started(self) -> None: ...

    def on_tokens(self, tokens_generated: int, text_so_far: str) -> None: ...


class NullListener:
    def on_queued(self, position: int) -> None:
        pass

    def on_started(self) -> None:
        pass

    def on_tokens(self, tokens_generated: int, text_so_far: str) -> None:
        pass


class EngineOverloaded(Exception):
    """The engine's queue is full."""


class ImagesNotCached(Exception):
    """Images sent by reference whose features the engine does not hold (never cached, or
    evicted meanwhile): the caller sends them again as pixels."""

    def __init__(self, indexes: tuple[int, ...]) -> None:
        super().__init__(indexes)
        self.indexes = indexes

    def __str__(self) -> str:
        return f"features of images {list(self.indexes)} are not cached"


class EngineNotReady(Exception):
    """The model is not loaded (or the engine is stopping)."""


class Engine(Protocol):
    """What the pipeline needs from a model engine."""

    @property
    def info(self) -> EngineInfo: ...

    @property
    def ready(self) -> bool: ...

    def stats(self) -> EngineStats: ...

    def queue_depth(self) -> int: ...

    def count_prompt_tokens(self, prompt: str, tiles_per_image: tuple[int, ...]) -> int:
        """Tokens the model reads for this prompt, image tokens included (blocking)."""
        ...

    async def start(self) -> None:
        """Load the model, warm it up and start the worker."""

    async def stop(self) -> None:
        """Finish or cancel queued work and release the model."""

    async def generate(
        self, request: GenerationRequest, listener: GenerationListener
    ) -> GenerationResult:
        """Queue, wait for a batch slot, generate. Raises EngineOverloaded when the queue is
        full, EngineNotReady when not started, TimeoutError past the deadline;
        asyncio.CancelledError (or :meth:`cancel`) frees the slot."""
        ...

    def cancel(self, request_id: str) -> None:
        """Abandon a request: its generate() raises asyncio.CancelledError and its row leaves
        at the next step. Unknown ids are ignored."""
