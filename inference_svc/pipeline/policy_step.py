"""The decision policy's part of a run (docs/policy.md): the vendor's policy, the per-image
signals measured during intake, the quality gate before generation, the reused-photo lookup
beside generation, and the decision under the policy."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Protocol

from inference_svc.domain.models import (
    Analysis,
    Answer,
    AnswerSource,
    ConfidenceFactors,
    ImageRole,
    ImageSignal,
    Inspection,
    InspectionRequest,
    ModelInfo,
    PreparedImage,
    StageTimings,
)
from inference_svc.domain.outcome import (
    PolicyOutcome,
    ReuseLookup,
    ReuseMatch,
    Signals,
    quality_gate,
    signals_of,
)
from inference_svc.domain.policy import PolicyHolder, QualityMode, SelectedPolicy
from inference_svc.imaging.checks import image_signal

log = logging.getLogger("inference_svc.pipeline")

Analyse = Callable[[PreparedImage], ImageSignal]


class ReuseLookupPort(Protocol):
    """The persistence service's reused-photo lookup (an adapter outside the pipeline)."""

    async def find(
        self, shipping_id: str, hashes: Sequence[tuple[int, int]], max_distance: int
    ) -> tuple[ReuseMatch, ...]: ...


class PolicyStep:
    def __init__(
        self, policies: PolicyHolder | None = None, lookup: ReuseLookupPort | None = None
    ) -> None:
        self._policies = policies or PolicyHolder()
        self._lookup = lookup

    def select(self, request: InspectionRequest) -> SelectedPolicy:
        return self._policies.select(request.vendor_id)

    @staticmethod
    def analyser(selected: SelectedPolicy) -> Analyse:
        """Hash every image; measure quality unless the gate is off."""
        gate = selected.policy.quality
        limits = None if gate.mode is QualityMode.OFF else gate.thresholds
        return partial(image_signal, limits=limits)

    @staticmethod
    def gate(selected: SelectedPolicy, images: Sequence[ImageSignal]) -> PolicyOutcome | None:
        return quality_gate(selected, [s.quality for s in images if s.quality is not None])

    def start_reuse(
        self, selected: SelectedPolicy, request: InspectionRequest, images: Sequence[ImageSignal]
    ) -> asyncio.Task[ReuseLookup] | None:
        """The reused-photo lookup, started to run beside generation; None when it is off."""
        fraud = selected.policy.fraud
        hashes = [
            (s.image.index, s.phash)
            for s in images
            if s.image.role is ImageRole.PICKUP and s.phash is not None
        ]
        if not fraud.reused_photo or self._lookup is None or not hashes:
            return None
        return asyncio.create_task(
            self._reuse(request.shipping_id, hashes, fraud.reused_max_distance),
            name=f"reuse-lookup-{request.inspection_id}",
        )

    async def _reuse(
        self, shipping_id: str, hashes: list[tuple[int, int]], max_distance: int
    ) -> ReuseLookup:
        assert self._lookup is not None
        return ReuseLookup(await self._lookup.find(shipping_id, hashes, max_distance))

    @staticmethod
    async def finish_reuse(
        selected: SelectedPolicy, task: asyncio.Task[ReuseLookup] | None
    ) -> ReuseLookup | None:
        """The lookup's answer; skipped (never failed) when it cannot answer in time."""
        if task is None:
            return None
        try:
            return await asyncio.wait_for(task, selected.policy.fraud.reused_lookup_timeout_s)
        except TimeoutError:
            log.warning("reused-photo lookup timed out; check skipped")
        except Exception:
            log.warning("reused-photo lookup failed; check skipped", exc_info=True)
        return ReuseLookup(skipped=True)

    @staticmethod
    def signals(images: Sequence[ImageSignal], reuse: ReuseLookup | None) -> Signals:
        return signals_of(images, reuse)


def retake_inspection(
    request: InspectionRequest,
    gated: PolicyOutcome,
    images: list[ImageSignal],
    timings: StageTimings,
    model: ModelInfo,
) -> Inspection:
    """The result of an inspection the quality gate ended before any generation: every
    question unanswered, each asking for a retake."""
    answers = [
        Answer(
            label=q.label,
            type=q.type,
            answer="",
            value_to_check=q.value_to_check,
            mandatory=q.mandatory,
            evidence="",
            confidence=0,
            retake_image=True,
            source=AnswerSource.MISSED,
        )
        for q in request.questions
    ]
    return Inspection(
        inspection_id=request.inspection_id,
        shipping_id=request.shipping_id,
        product_id=request.product_id,
        previous_inspection_id=request.previous_inspection_id,
        decision=gated.outcome,
        recommendation=None,
        match_score=0.0,
        answers=answers,
        analysis=Analysis(),
        confidence_factors=ConfidenceFactors(),
        timings=timings,
        attempts=0,
        model=model,
        created_at=datetime.now(UTC),
        reasons=gated.reasons,
        policy_name=gated.policy_name,
        policy_version=gated.policy_version,
        images=images,
    )
