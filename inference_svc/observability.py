"""Adapts the pipeline's observer hooks to the Prometheus metrics of svc_common."""

from __future__ import annotations

from collections import deque
from typing import get_args

from inference_svc.engine.api import GenerationResult
from svc_common.inference_metrics import InferenceMetrics, Stage

_STAGES: frozenset[str] = frozenset(get_args(Stage))


class MetricsObserver:
    def __init__(self, metrics: InferenceMetrics) -> None:
        self._m = metrics
        # Every request of a batch reports the batch; the histogram counts generate calls.
        self._seen_batches: deque[object] = deque(maxlen=256)

    def stage(self, name: str, seconds: float) -> None:
        if name in _STAGES:
            self._m.observe_stage(name, seconds)  # type: ignore[arg-type]

    def decision(self, decision: str) -> None:
        self._m.record_decision(decision)

    def output_retry(self) -> None:
        self._m.output_retries.inc()

    def fetch_error(self, reason: str) -> None:
        self._m.record_fetch_error(reason)

    def generation(self, result: GenerationResult) -> None:
        self._m.observe_stage("prefill", result.prefill_seconds)
        self._m.observe_stage("decode_tokens", result.decode_seconds)
        self._m.generated_tokens.inc(result.completion_tokens)
        self._m.prompt_tokens.inc(result.prompt_tokens)
        batch_id = result.extra.get("batch_id")
        if batch_id is None or batch_id not in self._seen_batches:
            self._seen_batches.append(batch_id)
            self._m.batch_size.observe(result.batch_size)
        ttft = result.extra.get("ttft_seconds")
        if isinstance(ttft, (int, float)):
            self._m.time_to_first_token.observe(float(ttft))

    def image_bytes(self, role: str, size: int) -> None:
        self._m.observe_image(role, size)

    def rejected(self, reason: str) -> None:
        self._m.record_rejection(reason)
