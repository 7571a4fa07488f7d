"""Progress events of one generation: queue position, token progress and, for streaming
callers, each answer as soon as the model has written it completely."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from inference_svc.domain.decision import parse_answer
from inference_svc.domain.errors import Stage
from inference_svc.domain.models import AnswerReady, Emit, GenerationProgress, Queued
from inference_svc.domain.output_parser import IncrementalAnswerParser
from inference_svc.pipeline.observer import StageTracker


def answer_event(attempt: int, item: Mapping[str, Any]) -> AnswerReady:
    """A streamed answer, read by the decision's own parsing of the same raw item."""
    fields = parse_answer(item)
    return AnswerReady(
        attempt=attempt,
        label=fields.label,
        result=fields.result,
        evidence=fields.evidence,
        confidence=fields.confidence,
        retake_image=fields.retake_image,
    )


class StreamListener:
    """Turns engine callbacks (the engine's GenerationListener protocol) into stream events."""

    def __init__(
        self,
        emit: Emit,
        *,
        attempt: int,
        max_new_tokens: int,
        every: int,
        streaming: bool,
        tracker: StageTracker,
    ) -> None:
        # Only a streaming caller sees answers before the end: parse (and have the engine
        # decode) the text so far only for those.
        self.wants_text = streaming
        self._emit = emit
        self._attempt = attempt
        self._max = max_new_tokens
        self._every = max(1, every)
        self._tracker = tracker
        self._last_reported = -1
        self._parser = IncrementalAnswerParser()

    def on_queued(self, position: int) -> None:
        self._tracker.enter(Stage.QUEUE)
        self._emit(Queued(position=position))

    def on_started(self) -> None:
        self._tracker.enter(Stage.GENERATE)
        self._emit(Queued(position=0))

    def on_tokens(self, tokens_generated: int, text_so_far: str) -> None:
        if tokens_generated - self._last_reported >= self._every or tokens_generated >= self._max:
            self._last_reported = tokens_generated
            self._emit(GenerationProgress(self._attempt, tokens_generated, self._max))
        if not self.wants_text:
            return
        for answer in self._parser.feed(text_so_far):
            self._emit(answer_event(self._attempt, answer))
