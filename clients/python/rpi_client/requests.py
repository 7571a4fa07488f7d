"""Builds an ``InspectRequest`` from local files (sent inline), URLs and a questions file.

Questions files are YAML or JSON, in one of two forms:

* typed: a list (or ``{"questions": [...]}``) of ``{type, label, value_to_check, mandatory}``
  (``valueToCheck`` is accepted too, as ``MessageToJson`` writes it);
* legacy: the replaced API's ``{"Question": [{"Type", "Label", "ValueToCheck",
  "IsMandatory"}]}``, passed through unchanged as ``legacy_questions_json`` so the server parses
  it exactly as it parses an existing caller's string.

YAML is read with YAML 1.2 booleans (only true/false): under YAML 1.1 an unquoted ``Yes`` in
``value_to_check: Yes`` would become a boolean and lose the vendor's vocabulary.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rpi.inspection.v1 import inspection_pb2

ImageSpec = str | Path | bytes | inspection_pb2.Image

_URL_PREFIXES = ("https://", "http://")
_TRUE_WORDS = frozenset({"true", "yes", "y", "1"})
_FALSE_WORDS = frozenset({"false", "no", "n", "0", ""})
_TYPED_KEYS = {
    "type": "type",
    "label": "label",
    "value_to_check": "value_to_check",
    "valuetocheck": "value_to_check",
    "mandatory": "mandatory",
}


class RequestBuildError(ValueError):
    """The local input (an image file, a questions file) cannot make a valid request."""


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader whose booleans are YAML 1.2's: ``Yes``/``No``/``on``/``off`` stay strings."""


_BOOL_TAG = "tag:yaml.org,2002:bool"
_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def is_url(spec: str) -> bool:
    return spec.lower().startswith(_URL_PREFIXES)


def image_from(spec: ImageSpec) -> inspection_pb2.Image:
    """An http(s) URL becomes ``Image.uri``; a path's bytes (or raw bytes) go inline."""
    if isinstance(spec, inspection_pb2.Image):
        image = inspection_pb2.Image()
        image.CopyFrom(spec)
        return image
    if isinstance(spec, bytes):
        if not spec:
            raise RequestBuildError("inline image is empty")
        return inspection_pb2.Image(content=spec)
    if isinstance(spec, str) and is_url(spec):
        return inspection_pb2.Image(uri=spec)
    path = Path(spec)
    try:
        content = path.read_bytes()
    except OSError as error:
        raise RequestBuildError(f"cannot read image {path}: {error.strerror or error}") from error
    if not content:
        raise RequestBuildError(f"image file {path} is empty")
    return inspection_pb2.Image(content=content)


def images_from(specs: Iterable[ImageSpec]) -> list[inspection_pb2.Image]:
    return [image_from(spec) for spec in specs]


@dataclass(frozen=True)
class QuestionSet:
    """Questions for a request: a typed list, or the legacy JSON string (exactly one is set)."""

    questions: tuple[inspection_pb2.Question, ...] = ()
    legacy_json: str = ""

    def apply_to(self, request: inspection_pb2.InspectRequest) -> None:
        del request.questions[:]
        request.questions.extend(self.questions)
        request.legacy_questions_json = self.legacy_json


def _as_bool(value: object, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise RequestBuildError(f"{where}: mandatory must be true/false or Yes/No, got {value!r}")


def _as_text(value: object, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise RequestBuildError(f"{where} must be text, got {type(value).__name__}")


def typed_question(item: object, index: int) -> inspection_pb2.Question:
    """One ``{type, label, value_to_check, mandatory}`` mapping as a Question."""
    where = f"questions[{index}]"
    if not isinstance(item, Mapping):
        raise RequestBuildError(f"{where} must be a mapping, got {type(item).__name__}")
    fields: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in item.items():
        name = _TYPED_KEYS.get(str(key).lower())
        if name is None:
            unknown.append(str(key))
        else:
            fields[name] = value
    if unknown:
        raise RequestBuildError(
            f"{where}: unknown keys {sorted(unknown)} (expected type, label, value_to_check, "
            "mandatory)"
        )
    label = _as_text(fields.get("label"), f"{where}.label").strip()
    if not label:
        raise RequestBuildError(f"{where}.label is required")
    return inspection_pb2.Question(
        type=_as_text(fields.get("type"), f"{where}.type"),
        label=label,
        value_to_check=_as_text(fields.get("value_to_check"), f"{where}.value_to_check"),
        mandatory=_as_bool(fields.get("mandatory", False), f"{where}.mandatory"),
    )


def _is_legacy(data: object) -> bool:
    return isinstance(data, Mapping) and "Question" in data


def parse_questions(text: str, *, source: str = "questions", as_json: bool = False) -> QuestionSet:
    """Parses a questions document (YAML, or JSON when ``as_json``); see the module docstring."""
    try:
        # _Yaml12Loader derives from SafeLoader: no arbitrary objects are constructed.
        data = json.loads(text) if as_json else yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        kind = "JSON" if as_json else "YAML"
        raise RequestBuildError(f"{source}: not valid {kind}: {error}") from error
    if _is_legacy(data):
        try:
            json.loads(text)
        except json.JSONDecodeError:
            # The legacy field carries JSON; a YAML file is re-encoded, nothing else changes.
            return QuestionSet(legacy_json=json.dumps(data, ensure_ascii=False))
        return QuestionSet(legacy_json=text.strip())
    if isinstance(data, Mapping) and "questions" in data:
        data = data["questions"]
    if not isinstance(data, list):
        raise RequestBuildError(
            f'{source}: expected a list of questions, {{"questions": [...]}} or the legacy '
            '{"Question": [...]} form'
        )
    if not data:
        raise RequestBuildError(f"{source}: no questions")
    try:
        return QuestionSet(questions=tuple(typed_question(q, i) for i, q in enumerate(data)))
    except RequestBuildError as error:
        raise RequestBuildError(f"{source}: {error}") from error


def load_questions(path: str | Path) -> QuestionSet:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise RequestBuildError(f"cannot read questions file {path}: {error}") from error
    return parse_questions(text, source=str(path), as_json=path.suffix.lower() == ".json")


def build_inspect_request(
    *,
    shipping_id: str,
    product_name: str,
    reference_images: Sequence[ImageSpec],
    pickup_images: Sequence[ImageSpec],
    questions: QuestionSet | Sequence[inspection_pb2.Question],
    product_id: str = "",
    inspection_id: str = "",
    previous_inspection_id: str = "",
) -> inspection_pb2.InspectRequest:
    """An InspectRequest; the server does the full validation (limits, sizes, hosts)."""
    if not reference_images:
        raise RequestBuildError("at least one reference image is required")
    if not pickup_images:
        raise RequestBuildError("at least one pickup image is required")
    request = inspection_pb2.InspectRequest(
        inspection_id=inspection_id,
        previous_inspection_id=previous_inspection_id,
        shipping_id=shipping_id,
        product_id=product_id,
        product_name=product_name,
        reference_images=images_from(reference_images),
        pickup_images=images_from(pickup_images),
    )
    question_set = (
        questions if isinstance(questions, QuestionSet) else QuestionSet(tuple(questions))
    )
    if not question_set.questions and not question_set.legacy_json:
        raise RequestBuildError("questions are required")
    question_set.apply_to(request)
    return request


def request_from_args(
    args: argparse.Namespace, *, previous_inspection_id: str = ""
) -> inspection_pb2.InspectRequest:
    """The request that ``rpi-inspect inspect`` and ``submit`` send: both take the same
    inspection flags (``--reference``, ``--pickup``, ``--questions``, ...)."""
    return build_inspect_request(
        shipping_id=args.shipping_id,
        product_name=args.product_name,
        reference_images=args.reference,
        pickup_images=args.pickup,
        questions=load_questions(args.questions),
        product_id=args.product_id,
        inspection_id=args.inspection_id,
        previous_inspection_id=previous_inspection_id,
    )
