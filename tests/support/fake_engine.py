"""A deterministic engine for fast unit tests of the pipeline and the servicer.

It implements the engine contract (inference_svc.engine.api.Engine): each generate call replays
the next scripted output, streaming it a few characters per "token" through the listener. It
proves nothing about the model; the engine's own tests run the real InternVL code path."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field

from inference_svc.engine.api import (
    EngineInfo,
    EngineStats,
    GenerationListener,
    GenerationRequest,
    GenerationResult,
    GenerationTimings,
)


@dataclass
class FakeEngine:
    outputs: list[str]
    constrained: bool = True
    chars_per_token: int = 8
    # When set, generation waits for it after the first token (a long generation).
    hold: asyncio.Event | None = None
    queue_first: bool = False
    fail_with: BaseException | None = None
    requests: list[GenerationRequest] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    ready: bool = True
    model_name: str = "fake-model"
    model_revision: str = "rev-1"
    untrained: bool = True
    _stats: EngineStats = field(default_factory=EngineStats)

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(
            model_name=self.model_name,
            model_revision=self.model_revision,
            untrained=self.untrained,
            constrained=self.constrained,
            streams_text=True,
            device="cpu",
            dtype="float32",
            runner="fake",
            max_batch_size=1,
        )

    def stats(self) -> EngineStats:
        return self._stats

    def cancel(self, request_id: str) -> None:
        self.cancelled.append(request_id)

    def queue_depth(self) -> int:
        return 0

    def count_prompt_tokens(self, prompt: str, tiles_per_image: tuple[int, ...]) -> int:
        return len(prompt.split()) + 256 * sum(tiles_per_image)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def generate(
        self, request: GenerationRequest, listener: GenerationListener
    ) -> GenerationResult:
        self.requests.append(request)
        if self.fail_with is not None:
            raise self.fail_with
        if self.queue_first:
            listener.on_queued(1)
            await asyncio.sleep(0)
        listener.on_started()
        text = self.outputs.pop(0)
        tokens = 0
        for end in range(
            self.chars_per_token, len(text) + self.chars_per_token, self.chars_per_token
        ):
            tokens += 1
            wants_text = getattr(listener, "wants_text", True)
            listener.on_tokens(tokens, text[:end] if wants_text else "")
            if self.hold is not None:
                await self.hold.wait()
            await asyncio.sleep(0)
        self._stats = dataclasses.replace(
            self._stats,
            rows=self._stats.rows + 1,
            tokens_generated=self._stats.tokens_generated + tokens,
        )
        return GenerationResult(
            text=text,
            prompt_tokens=self.count_prompt_tokens(request.prompt, request.tiles_per_image),
            completion_tokens=tokens,
            timings=GenerationTimings(
                queue_seconds=0.001, prefill_seconds=0.002, decode_seconds=0.003
            ),
            constrained=request.json_schema is not None,
        )
