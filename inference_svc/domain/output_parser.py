"""Getting the model's JSON out of its text, validating it, and streaming answers early.

``extract_json`` follows the replaced service's leniency, in its order: fenced ```json blocks,
the whole text as JSON, the outermost balanced ``{...}``, single quotes fixed, a Python literal
(True/False/None), YAML, and finally regex recovery of the three top-level sections. The
scanning and repairs are in lenient_json.py, the schema check in output_validation.py.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

from inference_svc.domain.lenient_json import (
    PARSE_ERRORS,
    PARSERS,
    balanced_end,
    greedy_object,
    opens_single_quote,
    parse_fragment,
    top_level_objects,
)
from inference_svc.domain.models import ValidationOutcome
from inference_svc.domain.output_validation import validate_output

logger = logging.getLogger(__name__)

TOP_LEVEL_KEYS = ("image_analysis", "verification_results", "pickup_confidence")

_FENCE = re.compile(
    r"```[ \t]*(?:json|JSON|javascript|js|python|yaml)?[ \t]*\n?(.*?)```", re.DOTALL
)
_UNCLOSED_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n(.*)\Z", re.DOTALL)


def _candidates(text: str) -> list[str]:
    stripped = text.strip()
    found: list[str] = [m.group(1).strip() for m in _FENCE.finditer(stripped)]
    unclosed = _UNCLOSED_FENCE.search(stripped)
    if not found and unclosed:
        found.append(unclosed.group(1).strip())
    found.append(stripped)
    found.extend(top_level_objects(stripped))
    greedy = greedy_object(stripped)
    if greedy is not None:
        found.append(greedy)
    unique: list[str] = []
    for cand in found:
        if cand and cand not in unique:
            unique.append(cand)
    return unique


def _parsed_dicts(text: str) -> Iterator[dict[str, Any]]:
    candidates = _candidates(text)
    for _name, parse in PARSERS:
        for cand in candidates:
            try:
                value = parse(cand)
            except PARSE_ERRORS:
                continue
            if isinstance(value, dict):
                yield value


def _looks_like_output(value: dict[str, Any]) -> bool:
    return any(key in value for key in TOP_LEVEL_KEYS)


def extract_json(text: str) -> dict[str, Any] | None:
    """The model's output object, found as leniently as the replaced service did; None when no
    object can be found. A dict with none of the three top-level sections is returned only
    when nothing better turns up (validation then explains what is missing)."""
    fallback: dict[str, Any] | None = None
    for value in _parsed_dicts(text):
        if _looks_like_output(value):
            return value
        if fallback is None:
            fallback = value
    recovered = recover_sections(text)
    if recovered:
        return recovered
    return fallback


_SECTION_KEY = re.compile(
    r"""["']?(image_analysis|verification_results|pickup_confidence)["']?\s*:\s*"""
)


def recover_sections(text: str) -> dict[str, Any]:
    """Regex recovery: each top-level section parsed on its own, so one broken section (or a
    missing outer brace) does not lose the others. An unterminated verification_results array
    gives its complete items."""
    found: dict[str, Any] = {}
    for match in _SECTION_KEY.finditer(text):
        key, start = match.group(1), match.end()
        if key in found or start >= len(text) or text[start] not in "{[":
            continue
        end = balanced_end(text, start)
        if end is not None:
            value = parse_fragment(text[start:end])
            if value is not None:
                found[key] = value
        elif key == "verification_results" and text[start] == "[":
            parser = IncrementalAnswerParser()
            items = parser.feed('{"verification_results": ' + text[start:])
            if items:
                found[key] = items
    return found


def parse_model_output(text: str) -> ValidationOutcome:
    """extract_json + validate_output. CPU-bound on big outputs: call it from a thread."""
    return validate_output(extract_json(text))


# --------------------------------------------------------------------------- streaming


class IncrementalAnswerParser:
    """Finds each complete ``verification_results`` item in growing generated text.

    ``feed`` takes the whole text generated so far and returns the items completed since the
    last call, each once and in order. Only the new characters are scanned (the state of the
    bracket/string scanner is kept), so a call costs O(new text). One parser per attempt; if
    the text does not extend the previous one, the parser starts over.
    """

    _KEY = "verification_results"

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._pos = 0
        self._stack: list[str] = []
        self._quote = ""
        self._escaped = False
        self._string_start = 0
        self._last_string: str | None = None
        self._key: str | None = None
        self._array_depth: int | None = None  # stack depth inside the answers array
        self._item_start: int | None = None
        self._done = False
        self._prefix_probe = ""
        self.emitted = 0

    @property
    def scanned(self) -> int:
        """Characters of the text scanned so far (work done is proportional to it)."""
        return self._pos

    @property
    def done(self) -> bool:
        """The answers array has closed; later text is not scanned."""
        return self._done

    def feed(self, text_so_far: str) -> list[dict[str, Any]]:
        if len(text_so_far) < self._pos or not text_so_far.startswith(self._prefix_probe):
            self._reset()
        new_items: list[dict[str, Any]] = []
        text = text_so_far
        i = self._pos
        n = len(text)
        while i < n and not self._done:
            ch = text[i]
            if self._quote:
                if self._escaped:
                    self._escaped = False
                elif ch == "\\":
                    self._escaped = True
                elif ch == self._quote:
                    self._quote = ""
                    self._last_string = text[self._string_start + 1 : i]
                i += 1
                continue
            if not self._stack:
                if ch == "{":
                    self._stack.append("}")
                i += 1
                continue
            if ch == '"' or (ch == "'" and opens_single_quote(text, i)):
                self._quote = ch
                self._string_start = i
            elif ch == ":":
                self._key = self._last_string
            elif ch == ",":
                self._key = None
                self._last_string = None
            elif ch in "{[":
                self._open(ch, i)
            elif ch in "}]":
                item = self._close(text, i)
                if item is not None:
                    new_items.append(item)
            i += 1
        self._pos = i
        # A short probe of the scanned text detects a restarted generation cheaply.
        self._prefix_probe = text[: min(self._pos, 64)]
        self.emitted += len(new_items)
        return new_items

    def _open(self, ch: str, i: int) -> None:
        depth = len(self._stack)
        if ch == "[" and depth == 1 and self._key == self._KEY and self._array_depth is None:
            self._array_depth = depth + 1
        elif ch == "{" and self._array_depth is not None and depth == self._array_depth:
            self._item_start = i
        self._stack.append("}" if ch == "{" else "]")
        self._key = None
        self._last_string = None

    def _close(self, text: str, i: int) -> dict[str, Any] | None:
        self._stack.pop()
        depth = len(self._stack)
        item: dict[str, Any] | None = None
        if self._array_depth is not None:
            if depth == self._array_depth and self._item_start is not None:
                item = _parse_item(text[self._item_start : i + 1])
                self._item_start = None
            elif depth == self._array_depth - 1:
                self._done = True  # the answers array is closed
        self._last_string = None
        return item


def _parse_item(fragment: str) -> dict[str, Any] | None:
    value = parse_fragment(fragment)
    if isinstance(value, dict):
        return value
    logger.debug("unparseable answer fragment of %d chars", len(fragment))
    return None
