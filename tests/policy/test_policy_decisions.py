"""The same stored model outputs decided under different policies: the default (today's
decisions), literal comparison, confidence floors, mandatory questions, forced Pick off, fuzzy
matches not counting, and the precedence between the rules."""

from __future__ import annotations

from typing import Any

import pytest
from policy_support import BRAND, COLOUR, COUNT, QUESTIONS, SEAL, item, output, selected

from inference_svc.domain.decision import decide
from inference_svc.domain.models import Decision, ImageRole, Question
from inference_svc.domain.outcome import (
    ImageRef,
    Outcome,
    QualityMeasures,
    QualityProblem,
    QualityReport,
    ReasonCode,
    ReuseLookup,
    ReuseMatch,
    Signals,
    decide_with_policy,
    quality_gate,
)
from inference_svc.domain.policy import BUILTIN_POLICY

# The model said Reject, but every answer means its value to check ("Y", "true" and "Yes, the
# logo is visible" are Yes; "2.0" is 2; " red " is Red).
AMBIGUOUS = [
    [
        item(BRAND.label, "Y"),
        item(SEAL.label, "yes"),
        item(COUNT.label, "2.0"),
        item(COLOUR.label, " red "),
    ],
    [
        item(BRAND.label, "true"),
        item(SEAL.label, "Yes"),
        item(COUNT.label, "2"),
        item(COLOUR.label, "Red"),
    ],
    [
        item(BRAND.label, "Yes, the logo is visible"),
        item(SEAL.label, "Yes"),
        item(COUNT.label, "2"),
        item(COLOUR.label, "Red"),
    ],
    [
        item(BRAND.label, "Yes"),
        item(SEAL.label, "Yes"),
        item(COUNT.label, "2.0"),
        item(COLOUR.label, "Red"),
    ],
]
LITERAL_EQUAL = [
    item(BRAND.label, "Yes"),
    item(SEAL.label, " Yes"),
    item(COUNT.label, "2"),
    item(COLOUR.label, "Red"),
]
SEAL_BROKEN = [
    item(BRAND.label, "Yes"),
    item(SEAL.label, "No"),
    item(COUNT.label, "2"),
    item(COLOUR.label, "Red"),
]

# Every input of the decision-rule table, decided by the rules alone and by the default policy.
DEFAULT_TABLE: list[tuple[list[Question], dict[str, Any]]] = [
    *[(QUESTIONS, output(r, rec)) for r in AMBIGUOUS for rec in ("Reject", "Partial", "Accept")],
    (QUESTIONS, output(SEAL_BROKEN, "Reject")),
    (QUESTIONS, output(SEAL_BROKEN, "Accept")),
    (QUESTIONS, output(SEAL_BROKEN[:3], "Reject")),
    (QUESTIONS, output(SEAL_BROKEN[:3], "Accept")),
    (QUESTIONS, output([item("Brand visible?", "Yes"), *LITERAL_EQUAL[1:]], "Retry")),
    (QUESTIONS, output([], "Accept")),
    ([], output([], "Reject")),
]


@pytest.mark.parametrize(("questions", "model_output"), DEFAULT_TABLE)
def test_default_policy_reproduces_todays_decisions(
    questions: list[Question], model_output: dict[str, Any]
) -> None:
    today = decide(questions, model_output)
    for policy in (BUILTIN_POLICY.select(""), selected("version: x\ndefault: {}\n")):
        decided = decide_with_policy(policy, questions, model_output)
        assert decided.outcome.value == today.decision.value
        assert decided.decided is not None
        assert decided.decided.answers == today.answers
        assert decided.decided.decision is today.decision
        assert [r.decisive for r in decided.reasons] == [True]


@pytest.mark.parametrize("results", AMBIGUOUS)
def test_semantic_forces_pick_literal_does_not(results: list[dict[str, object]]) -> None:
    semantic = decide_with_policy(selected(), QUESTIONS, output(results, "Reject"))
    assert semantic.outcome is Outcome.PICK
    assert semantic.reasons[0].code is ReasonCode.FORCED_PICK

    literal = decide_with_policy(
        selected("version: l1\ndefault: {comparison: literal}\n"), QUESTIONS, output(results)
    )
    assert literal.outcome is Outcome.NOT_PICK
    assert literal.reasons[0].code is ReasonCode.MODEL_RECOMMENDATION
    assert literal.policy_version == "l1"


def test_literal_still_forces_pick_on_exact_strings() -> None:
    literal = selected("version: l1\ndefault: {comparison: literal}\n")
    decided = decide_with_policy(literal, QUESTIONS, output(LITERAL_EQUAL, "Reject"))
    assert decided.outcome is Outcome.PICK
    assert decided.reasons[0].code is ReasonCode.FORCED_PICK


def test_forced_pick_off_leaves_the_recommendation() -> None:
    results = AMBIGUOUS[3]
    off = selected("version: f\ndefault: {forced_pick: false}\n")
    assert decide_with_policy(off, QUESTIONS, output(results, "Reject")).outcome is Outcome.NOT_PICK
    assert decide_with_policy(off, QUESTIONS, output(results, "Accept")).outcome is Outcome.PICK


def test_fuzzy_label_matches_may_be_kept_from_the_forced_pick() -> None:
    results = [item("Brand visible?", "Yes"), *LITERAL_EQUAL[1:]]
    assert decide_with_policy(selected(), QUESTIONS, output(results)).outcome is Outcome.PICK
    strict = selected("version: s\ndefault: {fuzzy_counts_for_forced_pick: false}\n")
    assert decide_with_policy(strict, QUESTIONS, output(results)).outcome is Outcome.NOT_PICK
    exact = decide_with_policy(strict, QUESTIONS, output(LITERAL_EQUAL))
    assert exact.outcome is Outcome.PICK


def test_overall_confidence_floor_sends_to_review() -> None:
    policy = selected("version: c\ndefault: {confidence_floors: {overall: 75}}\n")
    low = decide_with_policy(policy, QUESTIONS, output(AMBIGUOUS[0], "Accept", overall_score=70))
    assert low.outcome is Outcome.NEEDS_REVIEW
    assert low.decisive[0].code is ReasonCode.OVERALL_CONFIDENCE_LOW
    # The rule that would have decided is still listed, as information.
    assert [r.code for r in low.reasons if not r.decisive] == [ReasonCode.MODEL_RECOMMENDATION]
    # Review: the answers are shown as the model gave them, not set to the values to check.
    assert low.decided is not None
    assert low.decided.answers[0].answer == "Yes"
    assert low.decided.answers[3].answer == "red"
    ok = decide_with_policy(policy, QUESTIONS, output(AMBIGUOUS[0], "Accept", overall_score=75))
    assert ok.outcome is Outcome.PICK


def test_question_confidence_floor_names_the_question() -> None:
    yaml_text = (
        "version: q\n"
        "default:\n"
        "  confidence_floors: {question: 50, by_label: {'  is the SEAL intact? ': 95}}\n"
    )
    results = [*AMBIGUOUS[1][:1], item(SEAL.label, "Yes", confidence=94), *AMBIGUOUS[1][2:]]
    decided = decide_with_policy(selected(yaml_text), QUESTIONS, output(results, "Accept"))
    assert decided.outcome is Outcome.NEEDS_REVIEW
    (reason,) = decided.decisive
    assert reason.code is ReasonCode.QUESTION_CONFIDENCE_LOW
    assert (reason.question_label, reason.question_index) == (SEAL.label, 1)


def test_a_missed_question_is_under_any_floor() -> None:
    policy = selected("version: q\ndefault: {confidence_floors: {question: 1}}\n")
    decided = decide_with_policy(policy, QUESTIONS, output(AMBIGUOUS[1][:3], "Accept"))
    assert decided.outcome is Outcome.NEEDS_REVIEW
    assert decided.decisive[0].question_label == COLOUR.label
    assert "missed" in decided.decisive[0].detail


@pytest.mark.parametrize("recommendation", ["Accept", "Reject", "Partial"])
def test_failed_mandatory_question_is_not_pick_whatever_the_recommendation(
    recommendation: str,
) -> None:
    policy = selected("version: m\ndefault: {mandatory: {categories: [seal_verification]}}\n")
    decided = decide_with_policy(policy, QUESTIONS, output(SEAL_BROKEN, recommendation))
    assert decided.outcome is Outcome.NOT_PICK
    (reason,) = decided.decisive
    assert reason.code is ReasonCode.MANDATORY_QUESTION_FAILED
    assert (reason.question_label, reason.question_index) == (SEAL.label, 1)
    assert decided.decided is not None and decided.decided.decision is Decision.NOT_PICK
    # NOT_PICK presentation: booleans kept, so the failed seal reads "No".
    assert decided.decided.answers[1].answer == "No"


def test_mandatory_by_label_and_by_request_flag() -> None:
    by_label = selected("version: m\ndefault: {mandatory: {labels: ['how many UNITS?']}}\n")
    results = [*LITERAL_EQUAL[:2], item(COUNT.label, "3"), LITERAL_EQUAL[3]]
    assert decide_with_policy(by_label, QUESTIONS, output(results, "Accept")).outcome is (
        Outcome.NOT_PICK
    )
    flagged = [BRAND, SEAL, Question("Quantity", COUNT.label, "2", True), COLOUR]
    by_flag = selected("version: m\ndefault: {mandatory: {request_flags: true}}\n")
    assert decide_with_policy(by_flag, flagged, output(results, "Accept")).outcome is (
        Outcome.NOT_PICK
    )
    # The request's flag alone decides nothing by default.
    assert decide_with_policy(selected(), flagged, output(results, "Accept")).outcome is (
        Outcome.PICK
    )


def test_mandatory_failure_wins_over_review() -> None:
    yaml_text = (
        "version: p\n"
        "default:\n"
        "  mandatory: {categories: [seal_verification]}\n"
        "  confidence_floors: {overall: 99}\n"
    )
    decided = decide_with_policy(selected(yaml_text), QUESTIONS, output(SEAL_BROKEN, "Accept"))
    assert decided.outcome is Outcome.NOT_PICK
    codes = [(r.code, r.decisive) for r in decided.reasons]
    assert codes == [
        (ReasonCode.MANDATORY_QUESTION_FAILED, True),
        (ReasonCode.OVERALL_CONFIDENCE_LOW, False),
        (ReasonCode.MODEL_RECOMMENDATION, False),
    ]


def _report(
    index: int, *problems: QualityProblem, role: ImageRole = ImageRole.PICKUP
) -> QualityReport:
    return QualityReport(
        ImageRef(role, index), QualityMeasures(640, 480, 12.0, 30.0, 0.7, 0.0), problems
    )


def test_quality_gate_modes() -> None:
    reports = [_report(0), _report(1, QualityProblem.BLURRY, QualityProblem.UNDEREXPOSED)]
    enforce = selected("version: g\ndefault: {quality: {mode: enforce}}\n")
    gated = quality_gate(enforce, reports)
    assert gated is not None and gated.outcome is Outcome.RETAKE_IMAGES
    assert [(r.code, r.image) for r in gated.reasons] == [
        (ReasonCode.IMAGE_BLURRY, ImageRef(ImageRole.PICKUP, 1)),
        (ReasonCode.IMAGE_UNDEREXPOSED, ImageRef(ImageRole.PICKUP, 1)),
    ]
    assert gated.decided is None
    assert quality_gate(enforce, [_report(0)]) is None
    # Reference photos are not the agent's to retake, unless the policy says so.
    reference = [_report(0, QualityProblem.BLURRY, role=ImageRole.REFERENCE)]
    assert quality_gate(enforce, reference) is None
    both = selected(
        "version: g\ndefault: {quality: {mode: enforce, include_reference_images: true}}\n"
    )
    assert quality_gate(both, reference) is not None

    flag = selected("version: g\ndefault: {quality: {mode: flag}}\n")
    assert quality_gate(flag, reports) is None
    flagged = decide_with_policy(
        flag, QUESTIONS, output(LITERAL_EQUAL, "Accept"), Signals(quality=tuple(reports))
    )
    assert flagged.outcome is Outcome.PICK
    assert [(r.code, r.decisive) for r in flagged.reasons] == [
        (ReasonCode.MODEL_RECOMMENDATION, True),
        (ReasonCode.IMAGE_BLURRY, False),
        (ReasonCode.IMAGE_UNDEREXPOSED, False),
    ]
    off = decide_with_policy(
        selected(), QUESTIONS, output(LITERAL_EQUAL, "Accept"), Signals(quality=tuple(reports))
    )
    assert [r.code for r in off.reasons] == [ReasonCode.MODEL_RECOMMENDATION]


FRAUD = (
    "version: f\n"
    "default:\n"
    "  fraud: {catalogue_photo: true, catalogue_max_distance: 10, reused_photo: true,"
    " reused_max_distance: 6}\n"
)


@pytest.mark.parametrize(("flipped_bits", "review"), [(0, True), (10, True), (11, False)])
def test_catalogue_photo_match_sends_to_review(flipped_bits: int, review: bool) -> None:
    reference = 0x0123_4567_89AB_CDEF
    pickup = reference ^ ((1 << flipped_bits) - 1)
    signals = Signals(
        reference_hashes=(None, reference), pickup_hashes=(0xFFFF_0000_FFFF_0000, pickup)
    )
    decided = decide_with_policy(
        selected(FRAUD), QUESTIONS, output(LITERAL_EQUAL, "Accept"), signals
    )
    assert (decided.outcome is Outcome.NEEDS_REVIEW) is review
    if review:
        (reason,) = decided.decisive
        assert reason.code is ReasonCode.CATALOGUE_PHOTO
        assert reason.image == ImageRef(ImageRole.PICKUP, 1)
        assert "reference_images[1]" in reason.detail
    # With the check off, the same hashes change nothing.
    plain = decide_with_policy(selected(), QUESTIONS, output(LITERAL_EQUAL, "Accept"), signals)
    assert plain.outcome is Outcome.PICK


def test_reused_photo_names_the_earlier_inspection() -> None:
    match = ReuseMatch(pickup_index=2, inspection_id="insp-1", shipping_id="ship-9", distance=3)
    far = ReuseMatch(pickup_index=0, inspection_id="insp-2", shipping_id="ship-8", distance=7)
    signals = Signals(reuse=ReuseLookup(matches=(match, far)))
    decided = decide_with_policy(
        selected(FRAUD), QUESTIONS, output(LITERAL_EQUAL, "Accept"), signals
    )
    assert decided.outcome is Outcome.NEEDS_REVIEW
    (reason,) = decided.decisive
    assert reason.code is ReasonCode.REUSED_PHOTO
    assert reason.related_inspection_id == "insp-1"
    assert reason.image == ImageRef(ImageRole.PICKUP, 2)


def test_a_skipped_reuse_lookup_is_noted_never_failed() -> None:
    signals = Signals(reuse=ReuseLookup(skipped=True))
    decided = decide_with_policy(
        selected(FRAUD), QUESTIONS, output(LITERAL_EQUAL, "Accept"), signals
    )
    assert decided.outcome is Outcome.PICK
    assert [(r.code, r.decisive) for r in decided.reasons] == [
        (ReasonCode.MODEL_RECOMMENDATION, True),
        (ReasonCode.REUSE_CHECK_SKIPPED, False),
    ]


def test_vendor_policy_is_selected_and_inherits_the_default() -> None:
    yaml_text = (
        "version: '2026-12-03.1'\n"
        "default:\n"
        "  quality: {mode: flag, thresholds: {min_sharpness: 40}}\n"
        "vendors:\n"
        "  electronics-co:\n"
        "    mandatory: {categories: [seal_verification]}\n"
        "    quality: {thresholds: {min_short_side: 480}}\n"
    )
    electronics = selected(yaml_text, " electronics-co ")
    assert electronics.name == "electronics-co"
    assert electronics.version == "2026-12-03.1"
    assert electronics.policy.quality.mode.value == "flag"
    assert electronics.policy.quality.thresholds.min_sharpness == 40
    assert electronics.policy.quality.thresholds.min_short_side == 480
    assert decide_with_policy(electronics, QUESTIONS, output(SEAL_BROKEN, "Accept")).outcome is (
        Outcome.NOT_PICK
    )
    apparel = selected(yaml_text, "apparel-co")
    assert apparel.name == "default"
    assert apparel.policy.quality.thresholds.min_short_side == 300
    assert decide_with_policy(apparel, QUESTIONS, output(SEAL_BROKEN, "Accept")).outcome is (
        Outcome.PICK
    )
