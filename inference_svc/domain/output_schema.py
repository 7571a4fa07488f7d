"""The model output contract.

``RESPONSE_SCHEMA`` is the replaced service's contract, used to validate any model output
(constrained or not). It is lenient where the model's free-form output reasonably varies and
the decision rules cope:

- ``Confidence``, ``overall_score`` and the confidence factors: a number 0-100 or a numeric
  string ("85", "85%", "85.5"). The replaced prompt showed them as strings, so models write
  "85%"; the decision rules parse both, and a retry for that alone would double latency.
- ``isRetakeImage``: a boolean or the strings true/false (any case).
- ``Result``: a string, number or boolean (YAML-ish output turns Yes into true; the decision
  rules write booleans back in the vocabulary of the value to check).
- The echoed fields ``Type``, ``IsMandatory``, ``ValueToCheck`` may be missing: answers are
  matched by ``Label`` and the request's own values are used.
- Extra keys are allowed.

``constrained_schema`` is the strict per-request schema for grammar-constrained decoding
(llguidance): the exact labels in order, typed results, integers 0-100, bounded strings.
Every output it admits is valid under ``RESPONSE_SCHEMA``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from inference_svc.domain.models import OutputLimits, Question
from inference_svc.domain.prompt import prompt_safe
from inference_svc.domain.vocabulary import ValueType, boolean_pair, value_type

RECOMMENDATIONS = ("Accept", "Reject", "Partial", "Retry")

# A number, or a numeric string with an optional % sign.
_NUMERIC_STRING = r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)\s*%?\s*$"

_SCORE: dict[str, Any] = {
    "description": "a number from 0 to 100",
    "anyOf": [
        {"type": "number", "minimum": 0, "maximum": 100},
        {"type": "string", "pattern": _NUMERIC_STRING},
    ],
}

_BOOLEAN_LIKE: dict[str, Any] = {
    "description": "true or false",
    "anyOf": [
        {"type": "boolean"},
        {"type": "string", "pattern": r"^\s*([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])\s*$"},
    ],
}

_SCALAR: dict[str, Any] = {"type": ["string", "number", "boolean"]}

RESPONSE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Inspection model output",
    "type": "object",
    "required": ["image_analysis", "verification_results", "pickup_confidence"],
    "properties": {
        "image_analysis": {
            "type": "object",
            "required": ["pickup_images", "vendor_image", "comparison"],
            "properties": {
                "pickup_images": {"type": "string"},
                "vendor_image": {"type": "string"},
                "comparison": {"type": "string"},
            },
        },
        "verification_results": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["Label", "Result", "Evidence", "Confidence", "isRetakeImage"],
                "properties": {
                    "Type": _SCALAR,
                    "Label": {"type": "string", "minLength": 1},
                    "IsMandatory": _SCALAR,
                    "ValueToCheck": _SCALAR,
                    "Result": _SCALAR,
                    "Evidence": {"type": "string"},
                    "Confidence": _SCORE,
                    "isRetakeImage": _BOOLEAN_LIKE,
                },
            },
        },
        "pickup_confidence": {
            "type": "object",
            "required": ["overall_score", "confidence_factors", "recommendation"],
            "properties": {
                "overall_score": _SCORE,
                "confidence_factors": {
                    "type": "object",
                    "required": ["image_quality", "attribute_visibility", "matching_confidence"],
                    "properties": {
                        "image_quality": _SCORE,
                        "attribute_visibility": _SCORE,
                        "matching_confidence": _SCORE,
                    },
                },
                "recommendation": {"enum": list(RECOMMENDATIONS)},
            },
        },
    },
}


def _result_schema(question: Question, max_chars: int) -> dict[str, Any]:
    vtype = value_type(question)
    if vtype is ValueType.BOOLEAN:
        positive, negative = boolean_pair(question.value_to_check)
        return {"type": "string", "enum": [positive, negative]}
    if vtype is ValueType.NUMERIC:
        # Digits only, or empty when the model cannot tell.
        return {"type": "string", "pattern": r"^([0-9]{1,7}(\.[0-9]{1,3})?)?$"}
    return {"type": "string", "maxLength": max_chars}


def _item_schema(
    question: Question, max_evidence_chars: int, max_result_chars: int
) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "Type": {"const": prompt_safe(question.type)},
        "Label": {"const": prompt_safe(question.label)},
        "IsMandatory": {"const": "Yes" if question.mandatory else "No"},
        "ValueToCheck": {"const": prompt_safe(question.value_to_check)},
        "Result": _result_schema(question, max_result_chars),
        "Evidence": {"type": "string", "maxLength": max_evidence_chars},
        "Confidence": {"type": "integer", "minimum": 0, "maximum": 100},
        "isRetakeImage": {"type": "boolean"},
    }
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def _score() -> dict[str, Any]:
    return {"type": "integer", "minimum": 0, "maximum": 100}


def constrained_schema(
    questions: Sequence[Question], limits: OutputLimits | None = None
) -> dict[str, Any]:
    """The strict schema of one request's output, for grammar-constrained decoding.

    ``verification_results`` has exactly one item per question, in request order, each with its
    Label (and Type, IsMandatory, ValueToCheck) fixed, so no answer can be lost or renamed.
    Strings are bounded by ``limits`` (the prompt template's; defaults when None) so a looping
    model still terminates. ``whitespace_flexible: false`` makes llguidance emit compact JSON:
    small models otherwise loop on whitespace.
    """
    if not questions:
        raise ValueError("at least one question is needed")
    limits = limits or OutputLimits()
    analysis_text = {"type": "string", "maxLength": limits.max_analysis_chars}
    items = [_item_schema(q, limits.max_evidence_chars, limits.max_result_chars) for q in questions]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "x-guidance": {"whitespace_flexible": False},
        "type": "object",
        "properties": {
            "image_analysis": {
                "type": "object",
                "properties": {
                    "pickup_images": analysis_text,
                    "vendor_image": analysis_text,
                    "comparison": analysis_text,
                },
                "required": ["pickup_images", "vendor_image", "comparison"],
                "additionalProperties": False,
            },
            "verification_results": {
                "type": "array",
                "prefixItems": items,
                "items": False,
                "minItems": len(items),
                "maxItems": len(items),
            },
            "pickup_confidence": {
                "type": "object",
                "properties": {
                    "overall_score": _score(),
                    "confidence_factors": {
                        "type": "object",
                        "properties": {
                            "image_quality": _score(),
                            "attribute_visibility": _score(),
                            "matching_confidence": _score(),
                        },
                        "required": [
                            "image_quality",
                            "attribute_visibility",
                            "matching_confidence",
                        ],
                        "additionalProperties": False,
                    },
                    "recommendation": {"type": "string", "enum": list(RECOMMENDATIONS)},
                },
                "required": ["overall_score", "confidence_factors", "recommendation"],
                "additionalProperties": False,
            },
        },
        "required": ["image_analysis", "verification_results", "pickup_confidence"],
        "additionalProperties": False,
    }


def grammar_check(schema: dict[str, Any]) -> list[str]:
    """Errors llguidance reports for ``schema`` (empty when it compiles). Import-light callers
    (tests, start-up checks) use it; the engine compiles the grammar itself."""
    import llguidance  # noqa: PLC0415 - only needed where constrained decoding is used

    grammar = llguidance.grammar_from("json_schema", json.dumps(schema))
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    return list(messages) if is_error else []
