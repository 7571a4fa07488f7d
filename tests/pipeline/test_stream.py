"""Streamed answers and final answers read the same raw values the same way."""

from __future__ import annotations

import json
from typing import Any

import pytest

from inference_svc.domain.decision import decide
from inference_svc.domain.errors import Stage
from inference_svc.domain.models import (
    AnswerReady,
    GenerationProgress,
    ProgressEvent,
    Question,
    Queued,
)
from inference_svc.pipeline.observer import StageTracker
from inference_svc.pipeline.stream import StreamListener
from tests.pipeline.fakes import answer, output

# Raw Confidence / isRetakeImage values a model writes, including the awkward ones.
RAW: list[tuple[Any, Any]] = [
    ("85%", "yes"),
    (" 85.5 % ", "True"),
    (85.6, 1),
    ("about 70 percent", "no"),
    (True, 0.0),
    (None, None),
    ("150", "Y"),
    (-3, "false"),
]


def streamed(text: str) -> list[AnswerReady]:
    events: list[ProgressEvent] = []
    listener = StreamListener(
        events.append,
        attempt=1,
        max_new_tokens=1000,
        every=1,
        streaming=True,
        tracker=StageTracker(),
    )
    for end in range(1, len(text) + 1, 5):
        listener.on_tokens(end, text[:end])
    listener.on_tokens(len(text), text)
    return [e for e in events if isinstance(e, AnswerReady)]


@pytest.mark.parametrize(("confidence", "retake"), RAW)
def test_stream_and_decision_agree_on_the_same_raw_values(confidence: Any, retake: Any) -> None:
    question = Question("Text", "What is written?", "ACME", False)
    text = output([answer(question.label, "  ACME  ", confidence, retake)], "Reject")
    (early,) = streamed(text)
    (final,) = decide([question], json.loads(text)).answers
    assert early.confidence == final.confidence
    assert early.retake_image == final.retake_image
    assert early.evidence == final.evidence
    assert early.label == final.label


def test_answers_stream_only_to_streaming_callers_and_stages_follow_the_engine() -> None:
    events: list[ProgressEvent] = []
    tracker = StageTracker()
    listener = StreamListener(
        events.append, attempt=2, max_new_tokens=16, every=4, streaming=False, tracker=tracker
    )
    assert listener.wants_text is False
    stages: list[Stage] = []
    listener.on_queued(3)
    stages.append(tracker.current)
    listener.on_started()
    stages.append(tracker.current)
    assert stages == [Stage.QUEUE, Stage.GENERATE]
    for n in range(1, 17):
        listener.on_tokens(n, output([answer("x", "y")]))
    assert events[:2] == [Queued(3), Queued(0)]
    progress = [e for e in events if isinstance(e, GenerationProgress)]
    # Every 4 tokens, and always the last one.
    assert [p.tokens_generated for p in progress] == [3, 7, 11, 15, 16]
    assert all(p.attempt == 2 and p.max_new_tokens == 16 for p in progress)
    assert not [e for e in events if isinstance(e, AnswerReady)]
