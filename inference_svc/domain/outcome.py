"""Outcomes with reasons: a policy (``inference_svc.domain.policy``) applied on top of the
decision rules (``inference_svc.domain.decision``, which stay the rule engine).

Precedence, first hit wins (the outcome a returns desk acts on):

1. RETAKE_IMAGES: the quality gate in ``enforce`` mode found a problem in an image (the pipeline
   asks ``quality_gate`` before any generation, so no model time is spent);
2. NOT_PICK: a mandatory question did not pass, whatever the model recommended (final);
3. NEEDS_REVIEW: an answer or the overall score is under its confidence floor, or a pickup
   photo matches the catalogue photo or a photo of another shipment's inspection;
4. the decision rules' PICK / NOT_PICK (the model's recommendation, or the forced Pick).

Every rule that fired is listed as a reason; ``decisive`` marks the ones behind the outcome.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from inference_svc.domain.decision import Evaluation, evaluate, present_answers
from inference_svc.domain.models import (
    Answer,
    AnswerSource,
    DecidedOutcome,
    Decision,
    ImageRef,
    ImageRole,
    ImageSignal,
    OutcomeReason,
    QualityMeasures,
    QualityProblem,
    QualityReport,
    Question,
    ReasonCode,
)
from inference_svc.domain.policy import DecisionPolicy, QualityMode, SelectedPolicy

__all__ = [
    "ImageRef",
    "ImageSignal",
    "Outcome",
    "OutcomeReason",
    "PolicyOutcome",
    "QualityMeasures",
    "QualityProblem",
    "QualityReport",
    "ReasonCode",
    "ReuseLookup",
    "ReuseMatch",
    "Signals",
    "decide_with_policy",
    "hamming",
    "quality_gate",
    "signals_of",
]

# One enum for the outcome of an inspection: the decision rules' PICK / NOT_PICK and the two
# outcomes only a policy gives.
Outcome = Decision


_QUALITY_CODES = {
    QualityProblem.BLURRY: ReasonCode.IMAGE_BLURRY,
    QualityProblem.UNDEREXPOSED: ReasonCode.IMAGE_UNDEREXPOSED,
    QualityProblem.OVEREXPOSED: ReasonCode.IMAGE_OVEREXPOSED,
    QualityProblem.LOW_RESOLUTION: ReasonCode.IMAGE_LOW_RESOLUTION,
}


@dataclass(frozen=True)
class ReuseMatch:
    pickup_index: int
    inspection_id: str
    shipping_id: str
    distance: int


@dataclass(frozen=True)
class ReuseLookup:
    """What the reused-photo lookup found; ``skipped`` when it could not answer in time."""

    matches: tuple[ReuseMatch, ...] = ()
    skipped: bool = False


@dataclass(frozen=True)
class Signals:
    """What is known about the images besides the model's output. Hashes are 64-bit unsigned
    ints, None for an image that could not be hashed."""

    quality: tuple[QualityReport, ...] = ()
    reference_hashes: tuple[int | None, ...] = ()
    pickup_hashes: tuple[int | None, ...] = ()
    reuse: ReuseLookup | None = None


def signals_of(images: Sequence[ImageSignal], reuse: ReuseLookup | None = None) -> Signals:
    """The ``Signals`` of an inspection from its per-image signals (in any order)."""
    ordered = sorted(images, key=lambda s: (s.image.role.value, s.image.index))

    def hashes(role: ImageRole) -> tuple[int | None, ...]:
        return tuple(s.phash for s in ordered if s.image.role is role)

    return Signals(
        quality=tuple(s.quality for s in ordered if s.quality is not None),
        reference_hashes=hashes(ImageRole.REFERENCE),
        pickup_hashes=hashes(ImageRole.PICKUP),
        reuse=reuse,
    )


@dataclass
class PolicyOutcome:
    outcome: Outcome
    reasons: list[OutcomeReason]
    policy_name: str
    policy_version: str
    # The result with the outcome as its decision and the answers presented for it; None when
    # the quality gate ended the inspection before any generation. ``evaluation`` holds what
    # the decision rules alone made of the output.
    decided: DecidedOutcome | None = None
    evaluation: Evaluation | None = field(default=None, repr=False)

    @property
    def decisive(self) -> list[OutcomeReason]:
        return [r for r in self.reasons if r.decisive]


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def _quality_reasons(
    policy: DecisionPolicy, reports: Sequence[QualityReport], decisive: bool
) -> list[OutcomeReason]:
    reasons: list[OutcomeReason] = []
    for report in reports:
        if report.image.role is ImageRole.REFERENCE and not policy.quality.include_reference_images:
            continue
        m = report.measures
        detail = (
            f"{m.width}x{m.height}, sharpness {m.sharpness:.1f}, mean luma {m.mean_luma:.1f}, "
            f"dark {m.dark_fraction:.2f}, bright {m.bright_fraction:.2f}"
        )
        reasons.extend(
            OutcomeReason(_QUALITY_CODES[p], decisive, image=report.image, detail=detail)
            for p in report.problems
        )
    return reasons


def quality_gate(
    selected: SelectedPolicy, reports: Sequence[QualityReport]
) -> PolicyOutcome | None:
    """RETAKE_IMAGES when the gate enforces and an image fails it; None otherwise (go on)."""
    policy = selected.policy
    if policy.quality.mode is not QualityMode.ENFORCE:
        return None
    reasons = _quality_reasons(policy, reports, decisive=True)
    if not reasons:
        return None
    return PolicyOutcome(Outcome.RETAKE_IMAGES, reasons, selected.name, selected.version)


def _mandatory_reasons(
    policy: DecisionPolicy, questions: Sequence[Question], evaluation: Evaluation
) -> list[OutcomeReason]:
    reasons: list[OutcomeReason] = []
    for qi, (question, check) in enumerate(zip(questions, evaluation.checks, strict=True)):
        if check.passed or not policy.mandatory.applies_to(question):
            continue
        given = evaluation.given_answers[qi]
        reasons.append(
            OutcomeReason(
                ReasonCode.MANDATORY_QUESTION_FAILED,
                decisive=True,
                question_label=question.label,
                question_index=qi,
                detail=f"{check.match.value} answer {given.answer!r}, expected "
                f"{question.value_to_check!r}",
            )
        )
    return reasons


def _confidence_reasons(
    policy: DecisionPolicy, questions: Sequence[Question], evaluation: Evaluation
) -> list[OutcomeReason]:
    floors = policy.confidence_floors
    reasons: list[OutcomeReason] = []
    score = evaluation.outcome.match_score
    if floors.overall is not None and score < floors.overall:
        reasons.append(
            OutcomeReason(
                ReasonCode.OVERALL_CONFIDENCE_LOW,
                decisive=True,
                detail=f"overall score {score:g} < {floors.overall:g}",
            )
        )
    for qi, (question, answer) in enumerate(zip(questions, evaluation.given_answers, strict=True)):
        floor = floors.floor_for(question)
        if floor is not None and answer.confidence < floor:
            reasons.append(
                OutcomeReason(
                    ReasonCode.QUESTION_CONFIDENCE_LOW,
                    decisive=True,
                    question_label=question.label,
                    question_index=qi,
                    detail=f"confidence {answer.confidence} < {floor}"
                    + (" (question missed)" if answer.source is AnswerSource.MISSED else ""),
                )
            )
    return reasons


def _fraud_reasons(policy: DecisionPolicy, signals: Signals) -> list[OutcomeReason]:
    fraud = policy.fraud
    reasons: list[OutcomeReason] = []
    if fraud.catalogue_photo:
        for pi, pickup in enumerate(signals.pickup_hashes):
            distances = [
                (hamming(pickup, ref), ri)
                for ri, ref in enumerate(signals.reference_hashes)
                if pickup is not None and ref is not None
            ]
            if not distances:
                continue
            distance, ri = min(distances)
            if distance <= fraud.catalogue_max_distance:
                reasons.append(
                    OutcomeReason(
                        ReasonCode.CATALOGUE_PHOTO,
                        decisive=True,
                        image=ImageRef(ImageRole.PICKUP, pi),
                        detail=f"pickup photo matches the catalogue photo "
                        f"reference_images[{ri}] (distance {distance})",
                    )
                )
    if fraud.reused_photo and signals.reuse is not None:
        for match in signals.reuse.matches:
            if match.distance <= fraud.reused_max_distance:
                reasons.append(
                    OutcomeReason(
                        ReasonCode.REUSED_PHOTO,
                        decisive=True,
                        image=ImageRef(ImageRole.PICKUP, match.pickup_index),
                        related_inspection_id=match.inspection_id,
                        detail=f"pickup photo reused from inspection {match.inspection_id} "
                        f"(shipment {match.shipping_id}, distance {match.distance})",
                    )
                )
        if signals.reuse.skipped:
            reasons.append(
                OutcomeReason(
                    ReasonCode.REUSE_CHECK_SKIPPED,
                    decisive=False,
                    detail="the reused-photo lookup did not answer in time",
                )
            )
    return reasons


def _undecisive(reasons: Sequence[OutcomeReason]) -> list[OutcomeReason]:
    return [replace(r, decisive=False) for r in reasons]


def decide_with_policy(
    selected: SelectedPolicy,
    questions: Sequence[Question],
    output: Mapping[str, Any],
    signals: Signals = Signals(),
) -> PolicyOutcome:
    """The outcome of a (schema-valid) model output under ``selected``.

    Raises what ``decision.decide`` raises for an output it cannot decide on.
    """
    policy = selected.policy
    evaluation = evaluate(questions, output, policy.rules())
    base = evaluation.outcome
    base_reason = OutcomeReason(
        ReasonCode.FORCED_PICK if evaluation.forced_pick else ReasonCode.MODEL_RECOMMENDATION,
        decisive=True,
        detail=f"model recommended {base.recommendation.value}",
    )
    quality_enforced = policy.quality.mode is QualityMode.ENFORCE
    quality = (
        _quality_reasons(policy, signals.quality, decisive=quality_enforced)
        if policy.quality.mode is not QualityMode.OFF
        else []
    )
    mandatory = _mandatory_reasons(policy, questions, evaluation)
    review = _confidence_reasons(policy, questions, evaluation) + _fraud_reasons(policy, signals)
    review_decisive = [r for r in review if r.decisive]
    review_info = [r for r in review if not r.decisive]

    # Each stage in precedence order: the first with a decisive reason decides; the reasons of
    # the later stages are kept as information.
    stages: list[tuple[Outcome, list[OutcomeReason]]] = [
        (Outcome.RETAKE_IMAGES, quality if quality_enforced else []),
        (Outcome.NOT_PICK, mandatory),
        (Outcome.NEEDS_REVIEW, review_decisive),
        (Outcome(base.decision.value), [base_reason]),
    ]
    reasons: list[OutcomeReason] = []
    outcome: Outcome | None = None
    for stage_outcome, stage_reasons in stages:
        if outcome is None and stage_reasons:
            outcome = stage_outcome
            reasons.extend(stage_reasons)
        else:
            reasons.extend(_undecisive(stage_reasons))
    assert outcome is not None  # the last stage always has its reason
    if not quality_enforced:
        reasons.extend(quality)
    reasons.extend(review_info)
    reasons.sort(key=lambda r: not r.decisive)

    # Rule 6 for PICK / NOT_PICK; for retake and review the answers as the model gave them.
    final = outcome if outcome in (Decision.PICK, Decision.NOT_PICK) else None
    answers: list[Answer] = present_answers(evaluation.given_answers, evaluation.types, final)
    decided = DecidedOutcome(
        decision=outcome,
        recommendation=base.recommendation,
        match_score=base.match_score,
        answers=answers,
        analysis=base.analysis,
        confidence_factors=base.confidence_factors,
    )
    return PolicyOutcome(outcome, reasons, selected.name, selected.version, decided, evaluation)
