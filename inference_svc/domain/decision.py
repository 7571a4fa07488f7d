"""Decision rules of the replaced service (seeds 000/001 section 17), applied to a valid model
output:

1. recommendation Accept -> PICK; Reject, Partial, Retry -> NOT_PICK; anything else is an error;
2. model answers are matched to the request's questions by label: exactly, then by fuzzy
   token-set similarity >= 90 (rapidfuzz, with fuzzywuzzy's default preprocessing);
3. a question the model missed is filled: boolean -> the opposite of its value to check, other
   types -> empty; confidence 0; retake true;
4. boolean answers are written in the vocabulary of their value to check;
5. if every question was answered by the model with its value to check, the decision is PICK;
6. on PICK every answer becomes its value to check; on NOT_PICK a non-boolean answer that
   differs from its value to check is blanked.

These are the defaults. ``DecisionRules`` holds the open choices a policy may change (how an
answer is compared for rule 5, whether rule 5 applies, whether a fuzzy label match counts for
it); ``evaluate`` also reports, per question, how it was matched and whether it passed, which
the policy layer (``inference_svc.domain.outcome``) builds on.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from rapidfuzz import fuzz, process, utils

from inference_svc.domain.decision_rules import (
    DEFAULT_RULES,
    Comparison,
    DecisionRules,
    MatchKind,
    QuestionCheck,
)
from inference_svc.domain.errors import ErrorKind, InspectionError, Reason, Stage
from inference_svc.domain.models import (
    Analysis,
    Answer,
    AnswerSource,
    ConfidenceFactors,
    DecidedOutcome,
    Decision,
    Question,
    Recommendation,
)
from inference_svc.domain.prompt import prompt_safe
from inference_svc.domain.vocabulary import (
    ValueType,
    boolean_truth,
    is_boolean_word,
    is_number,
    normalise_boolean,
    opposite_boolean,
    value_type,
)

logger = logging.getLogger(__name__)

FUZZY_THRESHOLD = 90.0

_RECOMMENDATIONS = {r.value: r for r in Recommendation}
_NUMBER_IN_TEXT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")


# --------------------------------------------------------------------------- value parsing


def parse_score(value: object) -> float:
    """A 0-100 score from 85, 85.0, "85", "85%", " 85.5 % "; 0 when there is no number.
    Clamped to 0-100."""
    number: float | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        match = _NUMBER_IN_TEXT.search(value)
        number = float(match.group(0)) if match else None
    if number is None or math.isnan(number):
        return 0.0
    return min(100.0, max(0.0, number))


def parse_confidence(value: object) -> int:
    """Confidence as an integer 0-100 ("85%" -> 85, 85.6 -> 86)."""
    return math.floor(parse_score(value) + 0.5)


def parse_retake(value: object) -> bool:
    """isRetakeImage from true, "true", "True", "yes"; anything else is False."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        return value.strip().lower() in ("true", "yes", "y", "1")
    return False


def result_text(value: object) -> str:
    """A model Result as text: booleans as true/false, integral numbers without ".0"."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float | str):
        return str(value).strip()
    return str(value)


def _text(value: object) -> str:
    return "" if value is None else value if isinstance(value, str) else str(value)


@dataclass(frozen=True)
class AnswerFields:
    """One raw ``verification_results`` item read the way the decision reads it. The stream
    shows answers through the same function, so a streamed answer and the final one never
    disagree about the same raw value."""

    label: str
    result: str
    evidence: str
    confidence: int
    retake_image: bool


def parse_answer(item: Mapping[str, Any]) -> AnswerFields:
    return AnswerFields(
        label=_text(item.get("Label")).strip(),
        result=result_text(item.get("Result")),
        evidence=_text(item.get("Evidence")).strip(),
        confidence=parse_confidence(item.get("Confidence")),
        retake_image=parse_retake(item.get("isRetakeImage")),
    )


def same_value(answer: str, value_to_check: str, vtype: ValueType) -> bool:
    """Whether an answer says the same as the value to check: booleans by truth value, numbers
    by value, text ignoring case and surrounding/repeated whitespace."""
    if vtype is ValueType.BOOLEAN:
        truth = boolean_truth(answer)
        return truth is not None and truth == boolean_truth(value_to_check)
    if is_number(answer) and is_number(value_to_check):
        return float(answer.replace(",", "")) == float(value_to_check.replace(",", ""))
    return " ".join(answer.split()).casefold() == " ".join(value_to_check.split()).casefold()


# --------------------------------------------------------------------------- label matching


def match_answers(
    questions: Sequence[Question], results: Sequence[Mapping[str, Any]]
) -> list[int | None]:
    """For each question, the index of its model answer in ``results`` (None when missed).
    Exact label matches are taken first, in order; then each unmatched question takes the most
    similar unused answer with token-set similarity >= 90. An answer is used at most once."""
    return _match_answers(questions, results)[0]


def _match_answers(
    questions: Sequence[Question], results: Sequence[Mapping[str, Any]]
) -> tuple[list[int | None], set[int]]:
    """``match_answers`` and the indices of the questions matched only fuzzily."""
    labels = [_text(r.get("Label")).strip() for r in results]
    used: set[int] = set()
    fuzzy: set[int] = set()
    matched: list[int | None] = [None] * len(questions)
    for qi, question in enumerate(questions):
        wanted = {question.label.strip(), prompt_safe(question.label).strip()}
        for ri, label in enumerate(labels):
            if ri not in used and label in wanted:
                matched[qi] = ri
                used.add(ri)
                break
    for qi, question in enumerate(questions):
        if matched[qi] is not None:
            continue
        choices = {ri: label for ri, label in enumerate(labels) if ri not in used}
        if not choices:
            break
        best = process.extractOne(
            question.label,
            choices,
            scorer=fuzz.token_set_ratio,
            processor=utils.default_process,
            score_cutoff=FUZZY_THRESHOLD,
        )
        if best is not None:
            _label, score, ri = best
            logger.debug("fuzzy label match %.1f for question %d", score, qi)
            matched[qi] = int(ri)
            used.add(int(ri))
            fuzzy.add(qi)
    return matched, fuzzy


# --------------------------------------------------------------------------- the rules


def _recommendation(output: Mapping[str, Any]) -> Recommendation:
    confidence = output.get("pickup_confidence")
    raw = confidence.get("recommendation") if isinstance(confidence, Mapping) else None
    recommendation = _RECOMMENDATIONS.get(raw.strip()) if isinstance(raw, str) else None
    if recommendation is None:
        raise InspectionError(
            ErrorKind.INTERNAL,
            Reason.MODEL_OUTPUT_INVALID,
            f"unknown recommendation {raw!r}; expected one of " + ", ".join(_RECOMMENDATIONS),
            stage=Stage.DECIDE,
        )
    return recommendation


def _model_answer(question: Question, vtype: ValueType, item: Mapping[str, Any]) -> Answer:
    fields = parse_answer(item)
    answer = fields.result
    if vtype is ValueType.BOOLEAN:
        answer = normalise_boolean(answer, like=question.value_to_check)
    return Answer(
        label=question.label,
        type=question.type,
        answer=answer,
        value_to_check=question.value_to_check,
        mandatory=question.mandatory,
        evidence=fields.evidence,
        confidence=fields.confidence,
        retake_image=fields.retake_image,
        source=AnswerSource.MODEL,
    )


def missed_answer(question: Question) -> Answer:
    """The filled answer of a question the model did not answer."""
    vtype = value_type(question)
    answer = ""
    if vtype is ValueType.BOOLEAN and is_boolean_word(question.value_to_check):
        answer = opposite_boolean(question.value_to_check)
    return Answer(
        label=question.label,
        type=question.type,
        answer=answer,
        value_to_check=question.value_to_check,
        mandatory=question.mandatory,
        evidence="",
        confidence=0,
        retake_image=True,
        source=AnswerSource.MISSED,
    )


def _section(output: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = output.get(key)
    return value if isinstance(value, Mapping) else {}


@dataclass
class Evaluation:
    outcome: DecidedOutcome
    checks: list[QuestionCheck]
    forced_pick: bool  # rule 5 turned a recommendation other than Accept into PICK
    # The answers before rule 6, and their value types, so that a policy that overrides the
    # decision can present them for its own outcome (``present_answers``).
    given_answers: list[Answer]
    types: list[ValueType]


def present_answers(
    answers: Sequence[Answer], types: Sequence[ValueType], decision: Decision | None
) -> list[Answer]:
    """Rule 6 on copies of ``answers``; ``decision`` None leaves them as the model gave them."""
    presented: list[Answer] = []
    for answer, vtype in zip(answers, types, strict=True):
        shown = answer.answer
        if decision is Decision.PICK:
            shown = answer.value_to_check
        elif (
            decision is Decision.NOT_PICK
            and vtype is not ValueType.BOOLEAN
            and not same_value(answer.answer, answer.value_to_check, vtype)
        ):
            shown = ""
        presented.append(replace(answer, answer=shown))
    return presented


def _passes(raw: str, answer: Answer, vtype: ValueType, comparison: Comparison) -> bool:
    if comparison is Comparison.LITERAL:
        return raw.strip() == answer.value_to_check.strip()
    return same_value(answer.answer, answer.value_to_check, vtype)


def decide(
    questions: Sequence[Question],
    output: Mapping[str, Any],
    rules: DecisionRules = DEFAULT_RULES,
) -> DecidedOutcome:
    """Apply the decision rules to a (schema-valid) model output.

    Raises InspectionError(INTERNAL, MODEL_OUTPUT_INVALID, stage="decide") when the
    recommendation is not one of Accept, Reject, Partial, Retry.
    """
    return evaluate(questions, output, rules).outcome


def evaluate(
    questions: Sequence[Question],
    output: Mapping[str, Any],
    rules: DecisionRules = DEFAULT_RULES,
) -> Evaluation:
    """``decide``, with how each question was matched and whether it passed."""
    recommendation = _recommendation(output)
    decision = Decision.PICK if recommendation is Recommendation.ACCEPT else Decision.NOT_PICK

    raw_results = output.get("verification_results")
    results = (
        [r for r in raw_results if isinstance(r, Mapping)] if isinstance(raw_results, list) else []
    )
    matches, fuzzy = _match_answers(questions, results)

    answers: list[Answer] = []
    types: list[ValueType] = []
    checks: list[QuestionCheck] = []
    for qi, (question, ri) in enumerate(zip(questions, matches, strict=True)):
        vtype = value_type(question)
        types.append(vtype)
        if ri is None:
            answers.append(missed_answer(question))
            checks.append(QuestionCheck(MatchKind.MISSED, passed=False))
            continue
        answer = _model_answer(question, vtype, results[ri])
        answers.append(answer)
        raw = result_text(results[ri].get("Result"))
        checks.append(
            QuestionCheck(
                MatchKind.FUZZY if qi in fuzzy else MatchKind.EXACT,
                passed=_passes(raw, answer, vtype, rules.comparison),
            )
        )

    # Forced PICK: the model answered everything with the expected values, whatever it
    # recommended.
    forced = (
        rules.forced_pick
        and decision is Decision.NOT_PICK
        and bool(questions)
        and all(
            c.passed and (c.match is MatchKind.EXACT or rules.fuzzy_counts_for_forced_pick)
            for c in checks
        )
    )
    if forced:
        decision = Decision.PICK

    confidence = _section(output, "pickup_confidence")
    factors = confidence.get("confidence_factors")
    factors = factors if isinstance(factors, Mapping) else {}
    analysis = _section(output, "image_analysis")
    outcome = DecidedOutcome(
        decision=decision,
        recommendation=recommendation,
        match_score=parse_score(confidence.get("overall_score")),
        answers=present_answers(answers, types, decision),
        analysis=Analysis(
            pickup_description=_text(analysis.get("pickup_images")).strip(),
            reference_description=_text(analysis.get("vendor_image")).strip(),
            comparison=_text(analysis.get("comparison")).strip(),
        ),
        confidence_factors=ConfidenceFactors(
            image_quality=parse_score(factors.get("image_quality")),
            attribute_visibility=parse_score(factors.get("attribute_visibility")),
            matching_confidence=parse_score(factors.get("matching_confidence")),
        ),
    )
    return Evaluation(outcome, checks, forced, given_answers=answers, types=types)
