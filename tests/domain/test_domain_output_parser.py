"""Lenient extraction on a corpus of messy model outputs, validation messages, and the
incremental answer parser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inference_svc.domain.decision import decide
from inference_svc.domain.lenient_json import repair_json
from inference_svc.domain.models import Decision, Question
from inference_svc.domain.output_parser import (
    IncrementalAnswerParser,
    extract_json,
    parse_model_output,
)
from inference_svc.domain.output_validation import validate_output

CORPUS = sorted((Path(__file__).parent / "corpus").glob("*.txt"))
QUESTIONS = [
    Question("Brand", "Is the brand Nike visible?", "Yes", True),
    Question("Colour", "What is the colour?", "Red", False),
]


def _expected(path: Path) -> str:
    return path.name.split(".")[1]


def test_corpus_is_big_enough() -> None:
    assert len(CORPUS) >= 30
    assert {_expected(p) for p in CORPUS} == {"valid", "invalid", "none"}


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_corpus(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    expected = _expected(path)
    parsed = extract_json(text)
    outcome = parse_model_output(text)
    if expected == "none":
        assert parsed is None
        assert not outcome.valid
        assert outcome.errors == ["$: no JSON object found in the model output"]
        return
    assert parsed is not None
    assert outcome.valid is (expected == "valid"), outcome.errors
    if expected == "valid":
        assert outcome.errors == []
        results = parsed["verification_results"]
        assert len(results) == 2
        assert parsed["pickup_confidence"]["recommendation"] == "Accept"
        # Every valid corpus output goes through the decision rules.
        decided = decide(QUESTIONS, parsed)
        assert decided.decision is Decision.PICK
        assert [a.answer for a in decided.answers] == ["Yes", "Red"]
    else:
        assert outcome.errors
        assert all(e.startswith("$") for e in outcome.errors)


def test_errors_carry_json_paths() -> None:
    text = (Path(__file__).parent / "corpus" / "31_confidence_word.invalid.txt").read_text()
    assert parse_model_output(text).errors == [
        "$.verification_results[0].Confidence: 'high' is not a number from 0 to 100"
    ]


def test_error_list_is_bounded() -> None:
    output = {
        "image_analysis": {},
        "verification_results": [{"Label": ""} for _ in range(30)],
        "pickup_confidence": {},
    }
    errors = validate_output(output).errors
    assert len(errors) == 21
    assert errors[-1].startswith("... and ")


def test_long_instances_are_shortened_in_messages() -> None:
    output = {"image_analysis": "x" * 5000, "verification_results": [], "pickup_confidence": {}}
    assert all(len(e) < 300 for e in validate_output(output).errors)


@pytest.mark.parametrize(
    ("raw", "fixed"),
    [
        ("{'a': 'b'}", '{"a": "b"}'),
        ("{'a': 'the product's box'}", '{"a": "the product\'s box"}'),
        ("{'a': 'say \"hi\"'}", '{"a": "say \\"hi\\""}'),
        ('{"a": True, "b": None, "c": False}', '{"a": true, "b": null, "c": false}'),
        ('{"a": "True None"}', '{"a": "True None"}'),
        ('{"a": [1, 2,], }', '{"a": [1, 2] }'),
        ('{"a": 1 // note\n}', '{"a": 1 \n}'),
        ('{"url": "http://x"}', '{"url": "http://x"}'),
    ],
)
def test_repair_json(raw: str, fixed: str) -> None:
    assert repair_json(raw) == fixed
    json.loads(repair_json(raw))


def test_prefers_the_object_with_output_sections() -> None:
    text = 'Example: {"x": 1}\nAnswer: {"pickup_confidence": {"recommendation": "Retry"}}'
    assert extract_json(text) == {"pickup_confidence": {"recommendation": "Retry"}}


def test_falls_back_to_any_object() -> None:
    assert extract_json('noise {"x": 1} noise') == {"x": 1}


# --------------------------------------------------------------------------- incremental


def _valid_text() -> str:
    return (Path(__file__).parent / "corpus" / "02_fenced_json.valid.txt").read_text()


STREAMED = {p.stem: p.read_text(encoding="utf-8") for p in CORPUS if _expected(p) == "valid"}
# YAML-ish output has no braces to scan; the answers then arrive with the final parse.
STREAMED.pop("11_yaml_ish.valid")
STREAMED.pop("16_missing_outer_braces.valid")


@pytest.mark.parametrize("name", list(STREAMED))
def test_incremental_emits_each_answer_once_in_order(name: str) -> None:
    text = STREAMED[name]
    parser = IncrementalAnswerParser()
    emitted: list[tuple[int, dict[str, object]]] = []
    for end in range(len(text) + 1):  # one character at a time: the finest "token" stream
        for item in parser.feed(text[:end]):
            emitted.append((end, item))
    full = extract_json(text)
    assert full is not None
    assert [item for _, item in emitted] == full["verification_results"]
    # Each answer is emitted as soon as its closing brace arrives, before the text ends.
    for end, item in emitted:
        assert text[:end].rstrip().endswith("}")
        assert end < len(text)
        assert item["Label"]
    assert parser.emitted == 2


def test_incremental_with_token_sized_chunks() -> None:
    text = _valid_text()
    parser = IncrementalAnswerParser()
    labels: list[object] = []
    for end in range(0, len(text) + 7, 7):
        labels.extend(item["Label"] for item in parser.feed(text[:end]))
    assert labels == ["Is the brand Nike visible?", "What is the colour?"]


def test_incremental_ignores_braces_in_strings_and_other_sections() -> None:
    text = (
        '{"image_analysis": {"comparison": "a {tricky} [text] with \\" quotes"},'
        ' "notes": [{"Label": "not an answer"}],'
        ' "verification_results": [{"Label": "a }{ b", "Result": "Yes"},'
        ' {"Label": "c", "Evidence": "x\\\\", "Result": "No"}],'
        ' "pickup_confidence": {"extra": [{"Label": "also not"}]}}'
    )
    parser = IncrementalAnswerParser()
    items = [item for i in range(len(text) + 1) for item in parser.feed(text[:i])]
    assert items == [
        {"Label": "a }{ b", "Result": "Yes"},
        {"Label": "c", "Evidence": "x\\", "Result": "No"},
    ]


def test_incremental_restarts_when_the_text_is_replaced() -> None:
    text = _valid_text()
    parser = IncrementalAnswerParser()
    assert len(parser.feed(text)) == 2
    assert parser.feed(text) == []  # same text again: nothing new
    assert len(parser.feed("Retry:\n" + text)) == 2  # a new generation


def test_incremental_handles_python_style_output() -> None:
    text = (
        Path(__file__).parent / "corpus" / "06_python_literal_apostrophes.valid.txt"
    ).read_text()
    parser = IncrementalAnswerParser()
    items = [item for i in range(len(text) + 1) for item in parser.feed(text[:i])]
    assert items[0]["Evidence"] == "The product's logo (the swoosh) is visible."


def test_incremental_scans_only_new_text() -> None:
    text = _valid_text()
    parser = IncrementalAnswerParser()
    parser.feed(text[:300])
    assert parser.scanned == 300
    parser.feed(text[:301])
    assert parser.scanned == 301
    parser.feed(text)
    assert parser.done
    stopped_at = parser.scanned
    assert stopped_at < len(text)  # nothing after the answers array is scanned
    parser.feed(text + "more text")
    assert parser.scanned == stopped_at
