"""Every field of our .proto files is documented for its users: a leading comment that says
Required or Optional, in agreement with its google.api.field_behavior annotation."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

PROTOS = Path(__file__).resolve().parents[2] / "protos" / "rpi"
_FIELD = re.compile(
    r"^(?:repeated\s+|optional\s+)?(?:map<[^>]+>|[A-Za-z_][\w.]*)\s+([a-z_]\w*)\s*=\s*\d+"
)
_BLOCK = re.compile(r"^(message|enum|oneof|service)\s+\w+\s*\{")
_BEHAVIOR = re.compile(r"\(google\.api\.field_behavior\)\s*=\s*([A-Z_]+)")


@dataclass(frozen=True)
class Field:
    file: str
    line: int
    name: str
    comment: str
    behavior: str | None


def fields_of(path: Path) -> list[Field]:
    """The fields of messages (oneof members included) with their leading comments."""
    found: list[Field] = []
    stack: list[str] = []
    comment: list[str] = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if line.startswith("//"):
            comment.append(line[2:].strip())
            continue
        if (block := _BLOCK.match(line)) is not None:
            stack.append(block.group(1))
        elif line.endswith("{"):  # an rpc's options, an option's message literal
            stack.append("other")
        elif line.startswith("}"):
            stack.pop()
        elif stack and stack[-1] in ("message", "oneof") and (field := _FIELD.match(line)):
            behavior = _BEHAVIOR.search(line)
            found.append(
                Field(
                    path.name,
                    number,
                    field.group(1),
                    " ".join(comment),
                    behavior.group(1) if behavior else None,
                )
            )
        comment = []
    return found


FILES = sorted(PROTOS.rglob("*.proto"))


def test_the_parser_finds_fields() -> None:
    # Guards the test itself: a parser that finds nothing would pass everything.
    names = {f.name for path in FILES for f in fields_of(path)}
    assert {"shipping_id", "pickup_images", "uri", "failure_stage", "event_id"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_field_says_required_or_optional(path: Path) -> None:
    missing = [
        f"{f.file}:{f.line} {f.name}"
        for f in fields_of(path)
        if not re.search(r"\b(Required|Optional)\b", f.comment)
    ]
    assert missing == [], "fields without a Required/Optional leading comment: " + ", ".join(
        missing
    )


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_field_behavior_agrees_with_the_comment(path: Path) -> None:
    wrong = [
        f"{f.file}:{f.line} {f.name} is {f.behavior} but says {f.comment[:40]!r}"
        for f in fields_of(path)
        if f.behavior in ("REQUIRED", "OPTIONAL")
        and not f.comment.startswith(f.behavior.capitalize())
    ]
    assert wrong == []
