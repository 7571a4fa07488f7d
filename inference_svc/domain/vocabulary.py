"""How a question's answer is expressed (value types) and the boolean vocabulary (Yes/No, Y/N,
true/false...) the replaced service used, with answers normalised into the value to check's.
"""

from __future__ import annotations

import enum
import re

from inference_svc.domain.models import Question


class ValueType(enum.Enum):
    BOOLEAN = "boolean"
    NUMERIC = "numeric"
    TEXT = "text"
    CATEGORY = "category"


_BOOLEAN_TYPE_WORDS = frozenset(
    {"boolean", "bool", "yesno", "yes/no", "yes or no", "y/n", "checkbox", "toggle", "binary"}
)
_NUMERIC_TYPE_WORDS = frozenset(
    {"number", "numeric", "integer", "int", "float", "decimal", "digit", "digits", "count"}
)
_CATEGORY_TYPE_WORDS = frozenset(
    {
        "category",
        "dropdown",
        "drop down",
        "select",
        "option",
        "options",
        "choice",
        "enum",
        "list",
        "radio",
        "mcq",
        "multiple choice",
    }
)
_TEXT_TYPE_WORDS = frozenset({"text", "string", "textbox", "free text", "str"})

_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$")


def value_type(question: Question) -> ValueType:
    """How the answer is expressed. A boolean value to check decides first (the answer must be
    given in its vocabulary); then the declared type; then whether the value is a number."""
    if is_boolean_word(question.value_to_check):
        return ValueType.BOOLEAN
    declared = " ".join(question.type.lower().replace("_", " ").split())
    if declared in _BOOLEAN_TYPE_WORDS:
        return ValueType.BOOLEAN
    if declared in _NUMERIC_TYPE_WORDS or is_number(question.value_to_check):
        return ValueType.NUMERIC
    if declared in _CATEGORY_TYPE_WORDS:
        return ValueType.CATEGORY
    return ValueType.TEXT


def is_number(value: str) -> bool:
    return bool(_NUMBER.match(value.strip().replace(",", "")))


# --------------------------------------------------------------------------- booleans

# Each pair: positive, negative (lower case). Detection is case-insensitive; output keeps the
# casing of the value to check.
_BOOLEAN_PAIRS: tuple[tuple[str, str], ...] = (("yes", "no"), ("y", "n"), ("true", "false"))
_POSITIVE = {pos: (pos, neg) for pos, neg in _BOOLEAN_PAIRS}
_NEGATIVE = {neg: (pos, neg) for pos, neg in _BOOLEAN_PAIRS}
_DEFAULT_PAIR = ("Yes", "No")


def is_boolean_word(value: str) -> bool:
    word = value.strip().lower()
    return word in _POSITIVE or word in _NEGATIVE


def boolean_truth(value: object) -> bool | None:
    """True/False for a recognisable boolean answer ("Yes", "n", True, "true.", "Yes, the box
    is sealed"); None when it is not one."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, str):
        return None
    word = value.strip().strip("\"'`*.!").strip().lower()
    if word in _POSITIVE:
        return True
    if word in _NEGATIVE:
        return False
    first = re.match(r"([a-z]+)\b\s*[,.;:!\-–]", word)
    if first and first.group(1) in ("yes", "no", "true", "false"):
        return first.group(1) in ("yes", "true")
    return None


def _styled(word: str, like: str) -> str:
    if like.isupper() and (len(like) > 1 or len(word) == 1):
        return word.upper()
    if like[:1].isupper():
        return word.capitalize()
    return word.lower()


def boolean_pair(value_to_check: str) -> tuple[str, str]:
    """The (positive, negative) words in the vocabulary and casing of ``value_to_check``;
    Yes/No when it is not a boolean word."""
    word = value_to_check.strip()
    pair = _POSITIVE.get(word.lower()) or _NEGATIVE.get(word.lower())
    if pair is None:
        return _DEFAULT_PAIR
    return _styled(pair[0], word), _styled(pair[1], word)


def opposite_boolean(value: str) -> str:
    """Yes->No, Y->N, true->false, TRUE->FALSE, no->yes... Raises ValueError for a non-boolean."""
    word = value.strip()
    truth = boolean_truth(word) if is_boolean_word(word) else None
    if truth is None:
        raise ValueError(f"not a boolean value: {value!r}")
    positive, negative = boolean_pair(word)
    return negative if truth else positive


def normalise_boolean(answer: object, like: str) -> str:
    """A boolean answer written in the vocabulary of ``like`` (the value to check): "yes" with
    like "Y" gives "Y", False with like "True" gives "False". Non-boolean answers come back as
    text, unchanged apart from surrounding whitespace."""
    truth = boolean_truth(answer)
    if truth is None:
        return "" if answer is None else str(answer).strip()
    positive, negative = boolean_pair(like)
    return positive if truth else negative
