"""Building InspectRequests from files, URLs and question files in both forms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rpi.inspection.v1 import inspection_pb2

from clients.python.rpi_client import (
    QuestionSet,
    RequestBuildError,
    build_inspect_request,
    image_from,
    load_questions,
    parse_questions,
)

LEGACY_JSON = json.dumps(
    {
        "Question": [
            {"Type": "Colour", "Label": "Is it blue?", "ValueToCheck": "Yes", "IsMandatory": "Yes"}
        ]
    }
)


@pytest.mark.parametrize(
    "spec",
    ["https://cdn.example.com/a.jpg", "http://10.0.0.1/b.png", "HTTPS://CDN.example.com/C.JPG"],
)
def test_urls_become_uris(spec: str) -> None:
    assert image_from(spec) == inspection_pb2.Image(uri=spec)


def test_files_and_bytes_go_inline(tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0data")
    assert image_from(photo).content == b"\xff\xd8\xff\xe0data"
    assert image_from(str(photo)).content == b"\xff\xd8\xff\xe0data"
    assert image_from(b"raw").content == b"raw"
    existing = inspection_pb2.Image(uri="https://x.example/y.jpg")
    assert image_from(existing) == existing


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [("missing.jpg", None, "cannot read image"), ("empty.jpg", b"", "is empty")],
)
def test_unusable_image_files(
    tmp_path: Path, name: str, content: bytes | None, message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(RequestBuildError, match=message):
        image_from(path)


def test_typed_yaml_keeps_vendor_vocabulary() -> None:
    text = """
- type: Colour
  label: Is the mug blue?
  value_to_check: Yes
  mandatory: Yes
- type: Quantity
  label: How many mugs?
  value_to_check: 2
  mandatory: false
- label: Seal intact?
  value_to_check: true
"""
    parsed = parse_questions(text)
    assert parsed.legacy_json == ""
    assert list(parsed.questions) == [
        inspection_pb2.Question(
            type="Colour", label="Is the mug blue?", value_to_check="Yes", mandatory=True
        ),
        inspection_pb2.Question(
            type="Quantity", label="How many mugs?", value_to_check="2", mandatory=False
        ),
        inspection_pb2.Question(label="Seal intact?", value_to_check="true", mandatory=False),
    ]


def test_typed_json_accepts_proto_json_names(tmp_path: Path) -> None:
    path = tmp_path / "questions.json"
    path.write_text(
        json.dumps(
            {
                "questions": [
                    {"type": "Brand", "label": "Brand?", "valueToCheck": "Acme", "mandatory": True}
                ]
            }
        )
    )
    assert load_questions(path).questions == (
        inspection_pb2.Question(
            type="Brand", label="Brand?", value_to_check="Acme", mandatory=True
        ),
    )


def test_legacy_json_file_is_passed_through_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "legacy.json"
    path.write_text(LEGACY_JSON + "\n")
    assert load_questions(path) == QuestionSet(legacy_json=LEGACY_JSON)


def test_legacy_yaml_file_is_reencoded_as_json(tmp_path: Path) -> None:
    path = tmp_path / "legacy.yaml"
    path.write_text(
        "Question:\n  - Type: Colour\n    Label: Is it blue?\n    ValueToCheck: Yes\n"
        "    IsMandatory: Yes\n"
    )
    parsed = load_questions(path)
    assert parsed.questions == ()
    assert json.loads(parsed.legacy_json) == json.loads(LEGACY_JSON)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", "no questions"),
        ('{"foo": 1}', "expected a list"),
        ("[{label: x, colour: red}]", "unknown keys"),
        ("[{type: Colour}]", "label is required"),
        ("[{label: x, mandatory: maybe}]", "mandatory must be"),
        ("[1]", "must be a mapping"),
        ("[{label: x", "not valid YAML"),
    ],
)
def test_invalid_question_documents(text: str, message: str) -> None:
    with pytest.raises(RequestBuildError, match=message):
        parse_questions(text)


def test_invalid_json_questions_file(tmp_path: Path) -> None:
    path = tmp_path / "q.json"
    path.write_text("{'Question': []}")
    with pytest.raises(RequestBuildError, match="not valid JSON"):
        load_questions(path)


def test_build_inspect_request(tmp_path: Path) -> None:
    photo = tmp_path / "pickup.jpg"
    photo.write_bytes(b"pickup-bytes")
    request = build_inspect_request(
        shipping_id="S1",
        product_name="Blue mug",
        reference_images=["https://cdn.example.com/ref.jpg"],
        pickup_images=[photo, "https://agent.example.com/p2.jpg"],
        questions=QuestionSet(legacy_json=LEGACY_JSON),
        product_id="P1",
        inspection_id="id-1",
        previous_inspection_id="id-0",
    )
    assert request.reference_images[0].uri == "https://cdn.example.com/ref.jpg"
    assert request.pickup_images[0].content == b"pickup-bytes"
    assert request.pickup_images[1].uri == "https://agent.example.com/p2.jpg"
    assert request.legacy_questions_json == LEGACY_JSON
    assert not request.questions
    assert (request.product_id, request.inspection_id, request.previous_inspection_id) == (
        "P1",
        "id-1",
        "id-0",
    )


@pytest.mark.parametrize(
    ("references", "pickups", "questions", "message"),
    [
        ([], ["https://a/p.jpg"], [inspection_pb2.Question(label="q")], "reference image"),
        (["https://a/r.jpg"], [], [inspection_pb2.Question(label="q")], "pickup image"),
        (["https://a/r.jpg"], ["https://a/p.jpg"], [], "questions are required"),
    ],
)
def test_build_inspect_request_requires_parts(
    references: list[str],
    pickups: list[str],
    questions: list[inspection_pb2.Question],
    message: str,
) -> None:
    with pytest.raises(RequestBuildError, match=message):
        build_inspect_request(
            shipping_id="S1",
            product_name="Blue mug",
            reference_images=references,
            pickup_images=pickups,
            questions=questions,
        )
