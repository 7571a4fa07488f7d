"""Verification questions in the replaced API's legacy JSON form, parsed leniently the way the
replaced service did. Categories are in categories.py, value types and the boolean answer
vocabulary in vocabulary.py.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from typing import Any

from inference_svc.domain.errors import FieldViolation, Reason, invalid_argument
from inference_svc.domain.models import Question

LEGACY_FIELD = "legacy_questions_json"


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
