"""Verification questions: the legacy JSON form, keyword categories, value types and the
boolean vocabulary (Yes/No, Y/N, true/false...) the replaced service used.
"""

from __future__ import annotations

import ast
import enum
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from inference_svc.domain.errors import FieldViolation, Reason, invalid_argument
from inference_svc.domain.models import Question

LEGACY_FIELD = "legacy_questions_json"


# --------------------------------------------------------------------------- legacy form


def parse_legacy_questions(text: str) -> list[Question]:
    """Parse the replaced API's ``question`` string.

    Accepts ``{"Question": [...]}``, a bare list, or a single question object, written as JSON,
    as JSON with single quotes, or as a Python literal (``True``/``None``), in that order, as
    the replaced service did. Keys are matched ignoring case and separators (``ValueToCheck``,
    ``value_to_check``, ``Value To Check``).
    """
    data = _load_lenient(text)
    items = _question_items(data)
    if not items:
        raise _invalid("no questions found")
    questions: list[Question] = []
    violations: list[FieldViolation] = []
    for index, item in enumerate(items):
        try:
            questions.append(_question_from(item))
        except ValueError as exc:
            violations.append(FieldViolation(LEGACY_FIELD, f"Question[{index}]: {exc}"))
    if violations:
        raise invalid_argument(
            f"legacy_questions_json has {len(violations)} invalid question(s): "
            + "; ".join(v.description for v in violations),
            violations=violations,
            reason=Reason.QUESTIONS_INVALID,
        )
    return questions


def _invalid(description: str) -> Exception:
    return invalid_argument(
        f"legacy_questions_json: {description}",
        violations=[FieldViolation(LEGACY_FIELD, description)],
        reason=Reason.QUESTIONS_INVALID,
    )


def _load_lenient(text: str) -> Any:
    stripped = text.strip()
    if not stripped:
        raise _invalid("empty")
    try:
        return json.loads(stripped)
    except (ValueError, RecursionError):
        pass
    try:
        # The replaced service's blunt fix; it breaks apostrophes inside values, which is why
        # the Python-literal attempt follows.
        return json.loads(stripped.replace("'", '"'))
    except (ValueError, RecursionError):
        pass
    try:
        return ast.literal_eval(stripped)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise _invalid("not valid JSON, JSON with single quotes, or a Python literal") from None


def _key(name: str) -> str:
    return re.sub(r"[^a-z]", "", name.lower())


def _question_items(data: Any) -> list[Any]:
    if isinstance(data, list):
        return data
    if isinstance(data, Mapping):
        keyed = {_key(str(k)): v for k, v in data.items()}
        for name in ("question", "questions"):
            if name in keyed:
                value = keyed[name]
                if isinstance(value, list):
                    return value
                if isinstance(value, Mapping):
                    return [value]
                raise _invalid(f"'{name}' must be a list of questions")
        if "label" in keyed:
            return [data]
    raise _invalid('expected {"Question": [...]} or a list of questions')


_KEY_ALIASES = {
    "type": "type",
    "label": "label",
    "question": "label",
    "valuetocheck": "value_to_check",
    "value": "value_to_check",
    "ismandatory": "mandatory",
    "mandatory": "mandatory",
}

_TRUE_WORDS = frozenset({"yes", "y", "true", "t", "1"})
_FALSE_WORDS = frozenset({"no", "n", "false", "f", "0", ""})


def _question_from(item: Any) -> Question:
    if not isinstance(item, Mapping):
        raise ValueError("must be an object with Type, Label, ValueToCheck, IsMandatory")
    fields: dict[str, Any] = {}
    for raw_key, value in item.items():
        name = _KEY_ALIASES.get(_key(str(raw_key)))
        if name is not None and name not in fields:
            fields[name] = value
    label = _scalar_text(fields.get("label"), "Label")
    if not label:
        raise ValueError("Label is missing or empty")
    return Question(
        type=_scalar_text(fields.get("type"), "Type"),
        label=label,
        value_to_check=_scalar_text(fields.get("value_to_check"), "ValueToCheck"),
        mandatory=_mandatory(fields.get("mandatory")),
    )


def _scalar_text(value: Any, name: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value).strip()
    raise ValueError(f"{name} must be a string")


def _mandatory(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise ValueError(f"IsMandatory must be Yes/No or true/false, got {value!r}")


# --------------------------------------------------------------------------- categories


class Category(enum.Enum):
    """Question category; decides the Result/Evidence instruction in the prompt."""

    DAMAGE = "damage"
    USAGE = "usage"
    SKU = "sku_verification"
    PRICE = "price_verification"
    SEAL = "seal_verification"
    QUANTITY = "quantity_verification"
    BRAND = "brand_verification"
    COLOUR = "color_verification"
    SIZE = "size_verification"
    PACKAGING = "packaging_verification"
    LABEL = "label_verification"
    DESIGN = "design_matching"
    CATEGORY = "category_verification"
    PRODUCT_MATCHING = "product_matching"
    GENERAL = "general"


# Checked in this order, first hit wins: damage and usage first because their expected healthy
# answer is the negative whatever else the label mentions ("Is the brand label torn?"); then the
# most specific words before the generic ones ("model number" is a SKU, not a design).
_KEYWORDS: tuple[tuple[Category, tuple[str, ...]], ...] = (
    (
        Category.DAMAGE,
        (
            "damage",
            "damaged",
            "damages",
            "broken",
            "break",
            "crack",
            "cracked",
            "scratch",
            "scratched",
            "scratches",
            "dent",
            "dented",
            "torn",
            "tear",
            "defect",
            "defective",
            "stain",
            "stained",
            "leak",
            "leakage",
            "leaking",
            "burnt",
            "rust",
            "rusted",
        ),
    ),
    (
        Category.USAGE,
        (
            "used",
            "usage",
            "worn",
            "washed",
            "soiled",
            "dirty",
            "signs of use",
            "second hand",
            "pre-owned",
        ),
    ),
    (
        Category.SKU,
        (
            "sku",
            "item code",
            "product code",
            "model number",
            "model no",
            "serial",
            "serial number",
            "imei",
            "ean",
            "upc",
            "barcode",
            "article number",
            "style code",
        ),
    ),
    (Category.PRICE, ("price", "mrp", "cost", "rate", "price tag")),
    (
        Category.SEAL,
        ("seal", "sealed", "unsealed", "seal intact", "tamper", "tampered", "unopened", "opened"),
    ),
    (
        Category.QUANTITY,
        (
            "quantity",
            "qty",
            "count",
            "number of",
            "how many",
            "pieces",
            "piece",
            "pcs",
            "units",
            "unit",
            "pack of",
            "set of",
            "pair",
            "pairs",
        ),
    ),
    (Category.BRAND, ("brand", "brand name", "logo", "manufacturer", "make", "trademark")),
    (Category.COLOUR, ("colour", "color", "colours", "colors", "shade", "hue")),
    (
        Category.SIZE,
        (
            "size",
            "sizes",
            "dimension",
            "dimensions",
            "length",
            "width",
            "height",
            "capacity",
            "volume",
            "weight",
        ),
    ),
    (
        Category.PACKAGING,
        (
            "packaging",
            "package",
            "packed",
            "packing",
            "box",
            "carton",
            "wrapper",
            "pouch",
            "original packaging",
        ),
    ),
    (Category.LABEL, ("label", "labels", "tag", "tags", "sticker", "stickers")),
    (Category.DESIGN, ("design", "pattern", "print", "printed", "style", "shape", "model")),
    (Category.CATEGORY, ("category", "product type", "type of product", "kind of product")),
    (
        Category.PRODUCT_MATCHING,
        (
            "match",
            "matches",
            "matching",
            "same product",
            "correct product",
            "identical",
            "product name",
            "same item",
            "correct item",
        ),
    ),
)


def _word_regex(words: Sequence[str]) -> re.Pattern[str]:
    # Word boundaries so that "use" does not fire on "house" nor "rate" on "accurate".
    alternatives = sorted((re.escape(w).replace(r"\ ", r"\s+") for w in words), key=len)
    return re.compile(r"\b(?:" + "|".join(reversed(alternatives)) + r")\b", re.IGNORECASE)


_PATTERNS: tuple[tuple[Category, re.Pattern[str]], ...] = tuple(
    (category, _word_regex(words)) for category, words in _KEYWORDS
)


def categorise(question: Question) -> Category:
    """The category of a question, from keywords in its label, then in its type."""
    for text in (question.label, question.type):
        for category, pattern in _PATTERNS:
            if pattern.search(text):
                return category
    return Category.GENERAL


def is_negative_expected(question: Question) -> bool:
    """Damage and usage questions: the healthy answer is the negative ("No damage")."""
    return categorise(question) in (Category.DAMAGE, Category.USAGE)


# --------------------------------------------------------------------------- value types


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
