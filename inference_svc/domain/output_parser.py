"""Getting the model's JSON out of its text, validating it, and streaming answers early.

``extract_json`` follows the replaced service's leniency, in its order: fenced ```json blocks,
the whole text as JSON, the outermost balanced ``{...}``, single quotes fixed, a Python literal
(True/False/None), YAML, and finally regex recovery of the three top-level sections.
"""

from __future__ import annotations

import ast
import json
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from inference_svc.domain.models import ValidationOutcome
from inference_svc.domain.output_schema import RESPONSE_SCHEMA

logger = logging.getLogger(__name__)

TOP_LEVEL_KEYS = ("image_analysis", "verification_results", "pickup_confidence")
MAX_REPORTED_ERRORS = 20

_FENCE = re.compile(
    r"```[ \t]*(?:json|JSON|javascript|js|python|yaml)?[ \t]*\n?(.*?)```", re.DOTALL
)
_UNCLOSED_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n(.*)\Z", re.DOTALL)


# --------------------------------------------------------------------------- scanning helpers


def _balanced_end(text: str, start: int) -> int | None:
    """Index just past the bracket that closes the one at ``start``; None when unclosed.
    Aware of double- and single-quoted strings and backslash escapes."""
    stack: list[str] = []
    quote = ""
    escaped = False
    pairs = {"{": "}", "[": "]"}
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
            continue
        if ch == '"' or (ch == "'" and _opens_single_quote(text, i)):
            quote = ch
        elif ch in pairs:
            stack.append(pairs[ch])
        elif ch in "}]":
            if not stack or stack.pop() != ch:
                return None
            if not stack:
                return i + 1
    return None


def _opens_single_quote(text: str, i: int) -> bool:
    # A ' opens a Python-style string only where a value or key may start; elsewhere it is an
    # apostrophe in unquoted prose.
    j = i - 1
    while j >= 0 and text[j] in " \t\r\n":
        j -= 1
    return j < 0 or text[j] in "{[,:"


# Each unclosed "{" costs a scan to the end of the text; a truncated output has many.
_MAX_SCAN_ATTEMPTS = 64


def _top_level_objects(text: str) -> list[str]:
    """Balanced ``{...}`` spans not nested in another one, longest first."""
    spans: list[str] = []
    i = text.find("{")
    attempts = 0
    while i != -1 and attempts < _MAX_SCAN_ATTEMPTS:
        attempts += 1
        end = _balanced_end(text, i)
        if end is None:
            i = text.find("{", i + 1)
            continue
        spans.append(text[i:end])
        i = text.find("{", end)
    spans.sort(key=len, reverse=True)
    return spans


def _greedy_object(text: str) -> str | None:
    # The replaced service's r"\{.*\}" with DOTALL: first { to last }.
    first, last = text.find("{"), text.rfind("}")
    return text[first : last + 1] if 0 <= first < last else None


# --------------------------------------------------------------------------- repairs


_PY_LITERALS = {"True": "true", "False": "false", "None": "null"}


def repair_json(text: str) -> str:
    """Python/JS-flavoured JSON made strict: single-quoted strings to double-quoted, True/False/
    None to JSON literals, trailing commas dropped, // comments removed. Double-quoted strings
    are copied untouched."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            end = _string_end(text, i, '"')
            out.append(text[i:end])
            i = end
        elif ch == "'" and _opens_single_quote(text, i):
            end = _single_quoted_end(text, i)
            inner = text[i + 1 : end - 1] if end - 1 > i else text[i + 1 : end]
            inner = inner.replace("\\'", "'").replace('"', '\\"')
            out.append('"' + inner + '"')
            i = end
        elif ch == "/" and text.startswith("//", i):
            newline = text.find("\n", i)
            i = n if newline == -1 else newline
        elif ch == ",":
            j = i + 1
            while j < n and text[j] in " \t\r\n":
                j += 1
            if j < n and text[j] in "}]":
                i += 1  # trailing comma
                continue
            out.append(ch)
            i += 1
        elif ch.isalpha() or ch == "_":
            j = i
            while j < n and (text[j].isalnum() or text[j] == "_"):
                j += 1
            word = text[i:j]
            out.append(_PY_LITERALS.get(word, word))
            i = j
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _string_end(text: str, start: int, quote: str) -> int:
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == quote:
            return i + 1
        i += 1
    return len(text)


def _single_quoted_end(text: str, start: int) -> int:
    """End of a single-quoted string, treating a ' not followed by a delimiter as an
    apostrophe ('the product's box')."""
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == "'":
            j = i + 1
            while j < len(text) and text[j] in " \t\r\n":
                j += 1
            if j >= len(text) or text[j] in ",:}]":
                return i + 1
        i += 1
    return len(text)


# --------------------------------------------------------------------------- parsers


def _json(text: str) -> Any:
    return json.loads(text)


def _json_repaired(text: str) -> Any:
    return json.loads(repair_json(text))


def _literal(text: str) -> Any:
    return ast.literal_eval(text)


def _yaml(text: str) -> Any:
    return yaml.safe_load(text)


_PARSERS: tuple[tuple[str, Callable[[str], Any]], ...] = (
    ("json", _json),
    ("single-quote fix", _json_repaired),
    ("python literal", _literal),
    ("yaml", _yaml),
)

_PARSE_ERRORS = (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, yaml.YAMLError)


def _candidates(text: str) -> list[str]:
    stripped = text.strip()
    found: list[str] = [m.group(1).strip() for m in _FENCE.finditer(stripped)]
    unclosed = _UNCLOSED_FENCE.search(stripped)
    if not found and unclosed:
        found.append(unclosed.group(1).strip())
    found.append(stripped)
    found.extend(_top_level_objects(stripped))
    greedy = _greedy_object(stripped)
    if greedy is not None:
        found.append(greedy)
    unique: list[str] = []
    for cand in found:
        if cand and cand not in unique:
            unique.append(cand)
    return unique


def _parsed_dicts(text: str) -> Iterator[dict[str, Any]]:
    candidates = _candidates(text)
    for _name, parse in _PARSERS:
        for cand in candidates:
            try:
                value = parse(cand)
            except _PARSE_ERRORS:
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


def _parse_fragment(fragment: str) -> Any:
    for _name, parse in _PARSERS[:3]:
        try:
            return parse(fragment)
        except _PARSE_ERRORS:
            continue
    return None


def recover_sections(text: str) -> dict[str, Any]:
    """Regex recovery: each top-level section parsed on its own, so one broken section (or a
    missing outer brace) does not lose the others. An unterminated verification_results array
    gives its complete items."""
    found: dict[str, Any] = {}
    for match in _SECTION_KEY.finditer(text):
        key, start = match.group(1), match.end()
        if key in found or start >= len(text) or text[start] not in "{[":
            continue
        end = _balanced_end(text, start)
        if end is not None:
            value = _parse_fragment(text[start:end])
            if value is not None:
                found[key] = value
        elif key == "verification_results" and text[start] == "[":
            parser = IncrementalAnswerParser()
            items = parser.feed('{"verification_results": ' + text[start:])
            if items:
                found[key] = items
    return found


# --------------------------------------------------------------------------- validation

_VALIDATOR = Draft202012Validator(RESPONSE_SCHEMA)


def json_path(error: ValidationError) -> str:
    path = "$"
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def validate_output(obj: object) -> ValidationOutcome:
    """Check a parsed output against RESPONSE_SCHEMA; errors read "$.path: message"."""
    if not isinstance(obj, dict):
        return ValidationOutcome(
            parsed=None, valid=False, errors=["$: no JSON object found in the model output"]
        )
    errors = sorted(_VALIDATOR.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path])
    messages = [f"{json_path(e)}: {_short(_message(e))}" for e in errors]
    if len(messages) > MAX_REPORTED_ERRORS:
        extra = len(messages) - MAX_REPORTED_ERRORS
        messages = [*messages[:MAX_REPORTED_ERRORS], f"... and {extra} more error(s)"]
    return ValidationOutcome(parsed=obj, valid=not messages, errors=messages)


def _message(error: ValidationError) -> str:
    # "is not valid under any of the given schemas" tells a model nothing; say what is wanted.
    description = error.schema.get("description") if isinstance(error.schema, dict) else None
    if error.validator == "anyOf" and isinstance(description, str):
        return f"{error.instance!r} is not {description}"
    return error.message


def _short(message: str, limit: int = 200) -> str:
    # jsonschema quotes the whole offending instance; a long Evidence would flood the retry.
    return message if len(message) <= limit else message[: limit - 3] + "..."


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
            if ch == '"' or (ch == "'" and _opens_single_quote(text, i)):
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
    value = _parse_fragment(fragment)
    if isinstance(value, dict):
        return value
    logger.debug("unparseable answer fragment of %d chars", len(fragment))
    return None
