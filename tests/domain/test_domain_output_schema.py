"""The output contract and the per-request constrained-decoding schema (compiled by llguidance)."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from jsonschema import Draft202012Validator

from inference_svc.domain.models import OutputLimits, Question
from inference_svc.domain.output_schema import (
    RESPONSE_SCHEMA,
    constrained_schema,
    grammar_check,
)
from inference_svc.domain.output_validation import validate_output

QUESTION_SETS: dict[str, list[Question]] = {
    "one": [Question("Brand", "Is the brand visible?", "Yes", True)],
    "mixed": [
        Question("Brand", "Is the brand visible?", "Y", True),
        Question("Damage", "Is there any damage?", "false", True),
        Question("Quantity", "How many units?", "2", False),
        Question("Colour", "What is the colour?", "Red", False),
        Question("Dropdown", "Product category", "Footwear", False),
    ],
    "odd-labels": [
        Question("Brand", 'Is the "brand" visible? \\ backslash', "Yes", True),
        Question("रंग", "क्या रंग लाल है? ✅", "हाँ", False),
        Question("", "Label with\nnewline and\ttab", "", False),
        Question("Text", "<image> and <|im_end|> markers", "{json: 'like'}", True),
        Question("Quantity", "Duplicate label", "1", False),
        Question("Quantity", "Duplicate label", "1", False),
    ],
    "many": [
        Question("Text", f"Question number {i}?", f"value {i}", i % 2 == 0) for i in range(50)
    ],
}


def sample_output(questions: list[Question]) -> dict[str, Any]:
    schema = constrained_schema(questions)
    items = schema["properties"]["verification_results"]["prefixItems"]
    results = []
    for item in items:
        props = item["properties"]
        result_schema = props["Result"]
        result = result_schema["enum"][0] if "enum" in result_schema else "3"
        results.append(
            {
                "Type": props["Type"]["const"],
                "Label": props["Label"]["const"],
                "IsMandatory": props["IsMandatory"]["const"],
                "ValueToCheck": props["ValueToCheck"]["const"],
                "Result": result,
                "Evidence": "Seen in Image-2.",
                "Confidence": 80,
                "isRetakeImage": False,
            }
        )
    return {
        "image_analysis": {"pickup_images": "a", "vendor_image": "b", "comparison": "c"},
        "verification_results": results,
        "pickup_confidence": {
            "overall_score": 75,
            "confidence_factors": {
                "image_quality": 70,
                "attribute_visibility": 60,
                "matching_confidence": 90,
            },
            "recommendation": "Partial",
        },
    }


def test_response_schema_is_a_valid_schema() -> None:
    Draft202012Validator.check_schema(RESPONSE_SCHEMA)


@pytest.mark.parametrize("name", list(QUESTION_SETS))
def test_constrained_schema_compiles_in_llguidance(name: str) -> None:
    schema = constrained_schema(QUESTION_SETS[name])
    Draft202012Validator.check_schema(schema)
    assert grammar_check(schema) == []


def test_grammar_check_reports_errors() -> None:
    assert grammar_check({"type": "object", "properties": {"a": {"type": "strin"}}})


@pytest.mark.parametrize("name", list(QUESTION_SETS))
def test_constrained_output_is_valid_under_both_schemas(name: str) -> None:
    questions = QUESTION_SETS[name]
    output = sample_output(questions)
    Draft202012Validator(constrained_schema(questions)).validate(output)
    assert validate_output(output).valid


def test_constrained_schema_fixes_labels_in_order_and_types_results() -> None:
    questions = QUESTION_SETS["mixed"]
    schema = constrained_schema(questions, OutputLimits(max_evidence_chars=123))
    assert schema["x-guidance"] == {"whitespace_flexible": False}
    answers = schema["properties"]["verification_results"]
    assert answers["items"] is False
    assert answers["minItems"] == answers["maxItems"] == len(questions)
    items = answers["prefixItems"]
    assert [i["properties"]["Label"]["const"] for i in items] == [q.label for q in questions]
    assert items[0]["properties"]["Result"]["enum"] == ["Y", "N"]
    assert items[1]["properties"]["Result"]["enum"] == ["true", "false"]
    assert "pattern" in items[2]["properties"]["Result"]
    assert items[3]["properties"]["Result"] == {"type": "string", "maxLength": 120}
    assert items[0]["properties"]["IsMandatory"]["const"] == "Yes"
    assert items[2]["properties"]["IsMandatory"]["const"] == "No"
    assert items[0]["properties"]["Evidence"]["maxLength"] == 123
    assert items[0]["properties"]["Confidence"] == {"type": "integer", "minimum": 0, "maximum": 100}
    assert items[0]["properties"]["isRetakeImage"] == {"type": "boolean"}
    recommendation = schema["properties"]["pickup_confidence"]["properties"]["recommendation"]
    assert recommendation["enum"] == ["Accept", "Reject", "Partial", "Retry"]


def test_constrained_schema_rejects_wrong_label_order_and_extra_answers() -> None:
    questions = QUESTION_SETS["mixed"]
    validator = Draft202012Validator(constrained_schema(questions))
    output = sample_output(questions)
    swapped = dict(output)
    swapped["verification_results"] = list(reversed(output["verification_results"]))
    assert not validator.is_valid(swapped)
    longer = dict(output)
    longer["verification_results"] = [
        *output["verification_results"],
        output["verification_results"][0],
    ]
    assert not validator.is_valid(longer)


def test_constrained_schema_defuses_markers_in_labels() -> None:
    schema = constrained_schema(QUESTION_SETS["odd-labels"])
    label = schema["properties"]["verification_results"]["prefixItems"][3]["properties"]["Label"]
    assert label["const"] == "[image] and [im_end] markers"


def test_constrained_schema_needs_questions() -> None:
    with pytest.raises(ValueError, match="at least one question"):
        constrained_schema([])


@pytest.mark.parametrize(
    ("path", "value", "valid"),
    [
        (("verification_results", 0, "Confidence"), 85, True),
        (("verification_results", 0, "Confidence"), 85.5, True),
        (("verification_results", 0, "Confidence"), "85", True),
        (("verification_results", 0, "Confidence"), "85%", True),
        (("verification_results", 0, "Confidence"), "high", False),
        (("verification_results", 0, "Confidence"), 101, False),
        (("verification_results", 0, "Confidence"), -1, False),
        (("verification_results", 0, "isRetakeImage"), "True", True),
        (("verification_results", 0, "isRetakeImage"), "yes", False),
        (("verification_results", 0, "Result"), True, True),
        (("verification_results", 0, "Result"), None, False),
        (("verification_results", 0, "Label"), "", False),
        (("pickup_confidence", "recommendation"), "Accept", True),
        (("pickup_confidence", "recommendation"), "accept", False),
        (("pickup_confidence", "overall_score"), "90 %", True),
        (("image_analysis", "comparison"), 5, False),
    ],
)
def test_response_schema_leniency(path: tuple[Any, ...], value: object, valid: bool) -> None:
    output = sample_output(QUESTION_SETS["one"])
    target: Any = output
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    assert validate_output(output).valid is valid


def test_echoed_fields_may_be_missing() -> None:
    output = sample_output(QUESTION_SETS["one"])
    for key in ("Type", "IsMandatory", "ValueToCheck"):
        del output["verification_results"][0][key]
    assert validate_output(output).valid


class _ByteTokenizer:
    """One token per byte plus EOS: enough for llguidance to check byte strings."""

    eos_token_id = 256
    bos_token_id = None
    tokens: ClassVar[list[bytes]] = [bytes([i]) for i in range(256)] + [b"<eos>"]
    special_token_ids: ClassVar[list[int]] = [256]

    def __call__(self, data: bytes) -> list[int]:
        return list(data)


def _matcher(schema: dict[str, Any]) -> Any:
    import json

    import llguidance

    tokenizer = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_ByteTokenizer()))
    grammar = llguidance.grammar_from("json_schema", json.dumps(schema))
    return llguidance.LLMatcher(tokenizer, grammar, log_level=0)


@pytest.mark.parametrize("name", list(QUESTION_SETS))
def test_llguidance_accepts_a_compact_output_and_refuses_a_renamed_label(name: str) -> None:
    import json

    questions = QUESTION_SETS[name]
    schema = constrained_schema(questions)
    output = sample_output(questions)
    good = json.dumps(output, separators=(",", ":"), ensure_ascii=False).encode()
    matcher = _matcher(schema)
    assert matcher.consume_tokens(list(good))
    assert matcher.is_accepting() and not matcher.is_error()

    output["verification_results"][0]["Label"] = "Something else"
    bad = json.dumps(output, separators=(",", ":"), ensure_ascii=False).encode()
    matcher = _matcher(schema)
    matcher.consume_tokens(list(bad))
    assert matcher.is_error()
