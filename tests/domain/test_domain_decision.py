"""The decision rules (seeds 000/001 section 17), one table per rule."""

from __future__ import annotations

from typing import Any

import pytest
from rapidfuzz import fuzz, utils

from inference_svc.domain.decision import (
    decide,
    match_answers,
    parse_confidence,
    parse_retake,
    parse_score,
    same_value,
)
from inference_svc.domain.errors import ErrorKind, InspectionError, Reason
from inference_svc.domain.models import AnswerSource, Decision, Question, Recommendation
from inference_svc.domain.vocabulary import ValueType

BRAND = Question("Brand", "Is the brand visible?", "Yes", True)
DAMAGE = Question("Damage", "Is there any damage?", "N", True)
COLOUR = Question("Colour", "What is the colour?", "Red", False)
COUNT = Question("Quantity", "How many units?", "2", False)
ALL = [BRAND, DAMAGE, COLOUR, COUNT]


def item(label: str, result: object, **extra: object) -> dict[str, object]:
    return {
        "Label": label,
        "Result": result,
        "Evidence": extra.pop("evidence", f"evidence for {label}"),
        "Confidence": extra.pop("confidence", 80),
        "isRetakeImage": extra.pop("retake", False),
        **extra,
    }


def output(
    results: list[Any], recommendation: object = "Reject", **confidence: object
) -> dict[str, Any]:
    return {
        "image_analysis": {
            "pickup_images": " pickup desc ",
            "vendor_image": "vendor desc",
            "comparison": "comparison",
        },
        "verification_results": results,
        "pickup_confidence": {
            "overall_score": confidence.get("overall_score", 70),
            "confidence_factors": confidence.get(
                "factors",
                {"image_quality": 60, "attribute_visibility": "55%", "matching_confidence": "75"},
            ),
            "recommendation": recommendation,
        },
    }


# Answers that differ from the values to check, so no forced PICK.
MIXED = [
    item(BRAND.label, "Yes"),
    item(DAMAGE.label, "Y"),
    item(COLOUR.label, "Blue"),
    item(COUNT.label, "2"),
]


# --------------------------------------------------------------------------- rule 1


@pytest.mark.parametrize(
    ("recommendation", "expected_rec", "expected_decision"),
    [
        ("Accept", Recommendation.ACCEPT, Decision.PICK),
        ("Reject", Recommendation.REJECT, Decision.NOT_PICK),
        ("Partial", Recommendation.PARTIAL, Decision.NOT_PICK),
        ("Retry", Recommendation.RETRY, Decision.NOT_PICK),
        (" Accept ", Recommendation.ACCEPT, Decision.PICK),
    ],
)
def test_recommendation_mapping(
    recommendation: str, expected_rec: Recommendation, expected_decision: Decision
) -> None:
    decided = decide(ALL, output(MIXED, recommendation))
    assert decided.recommendation is expected_rec
    assert decided.decision is expected_decision


@pytest.mark.parametrize("recommendation", ["Approve", "accept", "", None, 1])
def test_unknown_recommendation_is_an_error(recommendation: object) -> None:
    with pytest.raises(InspectionError) as info:
        decide(ALL, output(MIXED, recommendation))
    assert info.value.kind is ErrorKind.INTERNAL
    assert info.value.reason is Reason.MODEL_OUTPUT_INVALID
    assert info.value.stage == "decide"
    assert "recommendation" in info.value.message


def test_missing_pickup_confidence_is_an_error() -> None:
    with pytest.raises(InspectionError):
        decide(ALL, {"verification_results": MIXED})


# --------------------------------------------------------------------------- forced PICK


@pytest.mark.parametrize("recommendation", ["Reject", "Partial", "Retry"])
def test_forced_pick_when_every_answer_is_its_value_to_check(recommendation: str) -> None:
    answers = [
        item(BRAND.label, "yes"),  # vocabulary differs, meaning is the same
        item(DAMAGE.label, "No"),
        item(COLOUR.label, " red "),
        item(COUNT.label, "2.0"),
    ]
    decided = decide(ALL, output(answers, recommendation))
    assert decided.decision is Decision.PICK
    assert decided.recommendation.value == recommendation  # the model's own word is kept
    assert [a.answer for a in decided.answers] == ["Yes", "N", "Red", "2"]


def test_no_forced_pick_when_a_question_was_missed() -> None:
    answers = [item(BRAND.label, "Yes"), item(DAMAGE.label, "N"), item(COLOUR.label, "Red")]
    decided = decide(ALL, output(answers, "Reject"))
    assert decided.decision is Decision.NOT_PICK


def test_no_forced_pick_when_one_answer_differs() -> None:
    answers = [
        item(BRAND.label, "Yes"),
        item(DAMAGE.label, "N"),
        item(COLOUR.label, "Red"),
        item(COUNT.label, "3"),
    ]
    assert decide(ALL, output(answers, "Partial")).decision is Decision.NOT_PICK


# --------------------------------------------------------------------------- label matching


def test_fuzzy_threshold_is_inclusive_at_90() -> None:
    question = Question("Text", "abcdefghij", "x", False)
    assert fuzz.token_set_ratio("abcdefghij", "abcdefghik", processor=utils.default_process) == 90
    assert fuzz.token_set_ratio("abcdefghij", "abcdefghkl", processor=utils.default_process) == 80
    matched = decide([question], output([item("abcdefghik", "x")]))
    assert matched.answers[0].source is AnswerSource.MODEL
    missed = decide([question], output([item("abcdefghkl", "x")]))
    assert missed.answers[0].source is AnswerSource.MISSED


@pytest.mark.parametrize(
    "model_label",
    [
        "Is the brand visible?",  # exact
        "is the brand visible",  # case and punctuation (fuzzywuzzy's preprocessing)
        "Is the brand clearly visible?",  # token-set: one set contains the other
        "Brand visible?",
    ],
)
def test_labels_matched_exactly_or_fuzzily(model_label: str) -> None:
    decided = decide([BRAND], output([item(model_label, "No", evidence="logo hidden")]))
    answer = decided.answers[0]
    assert answer.source is AnswerSource.MODEL
    assert answer.evidence == "logo hidden"
    assert answer.label == BRAND.label  # the request's label, not the model's


def test_exact_matches_win_over_fuzzy_ones() -> None:
    damaged = Question("Damage", "Is the product damaged?", "No", True)
    packaging = Question("Damage", "Is the product packaging damaged?", "No", True)
    results = [item(packaging.label, "Yes"), item(damaged.label, "No")]
    assert match_answers([damaged, packaging], results) == [1, 0]


def test_an_answer_is_used_once() -> None:
    damaged = Question("Damage", "Is the product damaged?", "No", True)
    packaging = Question("Damage", "Is the product packaging damaged?", "No", True)
    # "Is the product damaged?" is a token subset of the packaging label (similarity 100), but
    # that answer belongs to the packaging question.
    assert match_answers([damaged, packaging], [item(packaging.label, "Yes")]) == [None, 0]


def test_duplicate_labels_match_in_order() -> None:
    first = Question("Quantity", "Count", "1", False)
    second = Question("Quantity", "Count", "2", False)
    results = [item("Count", "1"), item("Count", "2")]
    assert match_answers([first, second], results) == [0, 1]


def test_non_object_answers_are_ignored() -> None:
    decided = decide([BRAND], output(["junk", 3, item(BRAND.label, "No")]))
    assert decided.answers[0].source is AnswerSource.MODEL


# --------------------------------------------------------------------------- missed questions


@pytest.mark.parametrize(
    ("question", "filled"),
    [
        (Question("Brand", "q", "Yes", True), "No"),
        (Question("Brand", "q", "no", True), "yes"),
        (Question("Damage", "q", "N", True), "Y"),
        (Question("Seal", "q", "TRUE", True), "FALSE"),
        (Question("Boolean", "q", "", True), ""),
        (Question("Colour", "q", "Red", False), ""),
        (Question("Quantity", "q", "2", False), ""),
        (Question("Dropdown", "q", "Footwear", False), ""),
    ],
)
def test_missed_questions_are_filled(question: Question, filled: str) -> None:
    decided = decide([question], output([item("something unrelated entirely", "Yes")]))
    answer = decided.answers[0]
    assert answer.source is AnswerSource.MISSED
    assert answer.answer == filled
    assert answer.confidence == 0
    assert answer.retake_image is True
    assert answer.evidence == ""
    assert (answer.label, answer.type, answer.value_to_check, answer.mandatory) == (
        question.label,
        question.type,
        question.value_to_check,
        question.mandatory,
    )


def test_missed_answers_become_the_value_to_check_on_pick() -> None:
    decided = decide([BRAND, COLOUR], output([item(BRAND.label, "Yes")], "Accept"))
    assert [a.source for a in decided.answers] == [AnswerSource.MODEL, AnswerSource.MISSED]
    assert [a.answer for a in decided.answers] == ["Yes", "Red"]
    assert decided.answers[1].confidence == 0 and decided.answers[1].retake_image


# --------------------------------------------------------------------------- answers


@pytest.mark.parametrize(
    ("value_to_check", "result", "expected"),
    [
        ("Y", "yes", "Y"),
        ("Y", "No", "N"),
        ("true", "Yes", "true"),
        ("TRUE", "n", "FALSE"),
        ("No", True, "Yes"),  # YAML-ish output turns Yes into true
        ("No", "no.", "No"),
        ("Yes", "Not sure", "Not sure"),  # not a boolean: left as the model wrote it
    ],
)
def test_boolean_answers_use_the_vocabulary_of_the_value(
    value_to_check: str, result: object, expected: str
) -> None:
    question = Question("Brand", "Is it there?", value_to_check, True)
    decided = decide([question, COLOUR], output([item(question.label, result)], "Reject"))
    assert decided.decision is Decision.NOT_PICK
    assert decided.answers[0].answer == expected


def test_not_pick_blanks_differing_text_and_number_answers() -> None:
    category = Question("Dropdown", "Product category", "Footwear", False)
    questions = [BRAND, DAMAGE, COLOUR, COUNT, category]
    answers = [
        item(BRAND.label, "No"),
        item(DAMAGE.label, "Y"),
        item(COLOUR.label, "Blue"),
        item(COUNT.label, 3),
        item(category.label, "footwear"),
    ]
    decided = decide(questions, output(answers, "Reject"))
    assert decided.decision is Decision.NOT_PICK
    # Booleans are kept; differing text/number answers blanked; an equal one kept.
    assert [a.answer for a in decided.answers] == ["No", "Y", "", "", "footwear"]


def test_pick_sets_every_answer_to_its_value_to_check() -> None:
    answers = [
        item(BRAND.label, "No"),
        item(DAMAGE.label, "Y"),
        item(COLOUR.label, "Blue"),
        item(COUNT.label, "3"),
    ]
    decided = decide(ALL, output(answers, "Accept"))
    assert decided.decision is Decision.PICK
    assert [a.answer for a in decided.answers] == ["Yes", "N", "Red", "2"]
    assert [a.evidence for a in decided.answers] == [f"evidence for {q.label}" for q in ALL]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (85, 85),
        (85.0, 85),
        (85.6, 86),
        ("85", 85),
        ("85%", 85),
        (" 85.5 % ", 86),
        ("about 70", 70),
        (150, 100),
        (-5, 0),
        ("high", 0),
        (None, 0),
        (True, 0),
        ("", 0),
        (float("nan"), 0),
    ],
)
def test_confidence_parsing(raw: object, expected: int) -> None:
    assert parse_confidence(raw) == expected
    decided = decide([BRAND], output([item(BRAND.label, "No", confidence=raw)]))
    assert decided.answers[0].confidence == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (True, True),
        (False, False),
        ("true", True),
        ("True", True),
        ("TRUE", True),
        ("false", False),
        ("False", False),
        ("yes", True),
        (None, False),
        ("maybe", False),
        (1, True),
        (0, False),
    ],
)
def test_retake_parsing(raw: object, expected: bool) -> None:
    assert parse_retake(raw) is expected
    decided = decide([BRAND], output([item(BRAND.label, "No", retake=raw)]))
    assert decided.answers[0].retake_image is expected


def test_scores_and_analysis_are_carried_through() -> None:
    decided = decide(ALL, output(MIXED, "Partial", overall_score="88.5%"))
    assert decided.match_score == 88.5
    assert decided.confidence_factors.image_quality == 60.0
    assert decided.confidence_factors.attribute_visibility == 55.0
    assert decided.confidence_factors.matching_confidence == 75.0
    assert decided.analysis.pickup_description == "pickup desc"
    assert decided.analysis.reference_description == "vendor desc"
    assert decided.analysis.comparison == "comparison"
    assert parse_score(250) == 100.0


def test_answers_keep_request_fields_and_order() -> None:
    decided = decide(ALL, output(list(reversed(MIXED)), "Reject"))
    assert [a.label for a in decided.answers] == [q.label for q in ALL]
    assert [a.mandatory for a in decided.answers] == [True, True, False, False]
    assert all(a.source is AnswerSource.MODEL for a in decided.answers)


@pytest.mark.parametrize(
    ("answer", "value", "vtype", "same"),
    [
        ("Yes", "Y", ValueType.BOOLEAN, True),
        ("maybe", "Yes", ValueType.BOOLEAN, False),
        ("2.0", "2", ValueType.NUMERIC, True),
        ("1,000", "1000", ValueType.NUMERIC, True),
        ("Navy  Blue", "navy blue", ValueType.TEXT, True),
        ("Blue", "Red", ValueType.TEXT, False),
    ],
)
def test_same_value(answer: str, value: str, vtype: ValueType, same: bool) -> None:
    assert same_value(answer, value, vtype) is same
