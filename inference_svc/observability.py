"""Adapts the pipeline's observer hooks to the Prometheus metrics of svc_common."""

from __future__ import annotations

from typing import get_args

from inference_svc.domain.models import Inspection
from inference_svc.domain.policy import DEFAULT_POLICY_NAME
from inference_svc.engine.api import GenerationResult
from svc_common.inference_metrics import InferenceMetrics, Stage

_STAGES: frozenset[str] = frozenset(get_args(Stage))


class MetricsObserver:
    def __init__(self, metrics: InferenceMetrics) -> None:
        self._m = metrics

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
        self._m.observe_stage("prefill", result.timings.prefill_seconds)
        self._m.observe_stage("decode_tokens", result.timings.decode_seconds)
        self._m.generated_tokens.inc(result.completion_tokens)
        self._m.prompt_tokens.inc(result.prompt_tokens)
        # batch_size is the mean number of rows this request generated beside.
        self._m.batch_size.observe(result.batch_size)
        self._m.time_to_first_token.observe(result.timings.ttft_seconds)

    def image_bytes(self, role: str, size: int) -> None:
        self._m.observe_image(role, size)

    def rejected(self, reason: str) -> None:
        self._m.record_rejection(reason)

    def policy_outcome(self, inspection: Inspection) -> None:
        self._m.record_policy_outcome(
            inspection.policy_name or DEFAULT_POLICY_NAME,
            inspection.decision.value,
            [(r.code.value, r.decisive) for r in inspection.reasons],
        )
        for image in inspection.images:
            if image.quality is not None:
                m = image.quality.measures
                self._m.observe_image_quality(image.image.role.value, m.sharpness, m.mean_luma)
