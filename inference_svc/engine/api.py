"""The contract between the inspection pipeline and the model engine.

The pipeline hands over a user prompt whose images are marked with ``<image>`` placeholders
(one per image, in order) and the tiles of every image; the engine applies the chat format,
expands each placeholder to the model's image tokens, batches concurrent requests and
generates. Nothing here imports grpc.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    # Forces at least this many new tokens (benchmarks use min == max for a fixed length).
    min_new_tokens: int = 0
    # When set and the engine has constrained decoding on, output is forced to match it.
    json_schema: dict[str, Any] | None = None
    # Monotonic deadline (time.monotonic()) after which the request is abandoned.
    deadline: float | None = None


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    queue_seconds: float
    prefill_seconds: float
    decode_seconds: float
    constrained: bool
    batch_size: int = 1
    finish_reason: str = "stop"  # stop | length
    extra: dict[str, Any] = field(default_factory=dict)


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


class EngineNotReady(Exception):
    """The model is not loaded (or the engine is stopping)."""


class Engine(Protocol):
    """What the pipeline needs from a model engine."""

    @property
    def model_name(self) -> str: ...

    @property
    def model_revision(self) -> str: ...

    @property
    def untrained(self) -> bool: ...

    @property
    def constrained(self) -> bool: ...

    @property
    def ready(self) -> bool: ...

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
        full, EngineNotReady when not started; asyncio.CancelledError frees the slot."""
