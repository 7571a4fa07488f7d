"""Lenient JSON: scanning for balanced objects in prose, repairing Python/JS-flavoured JSON, and
the parsers tried in turn on each candidate (JSON, single quotes fixed, a Python literal, YAML),
in the replaced service's order.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from typing import Any

import yaml

# --------------------------------------------------------------------------- scanning helpers


def balanced_end(text: str, start: int) -> int | None:
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
        if ch == '"' or (ch == "'" and opens_single_quote(text, i)):
            quote = ch
        elif ch in pairs:
            stack.append(pairs[ch])
        elif ch in "}]":
            if not stack or stack.pop() != ch:
                return None
            if not stack:
                return i + 1
    return None


def opens_single_quote(text: str, i: int) -> bool:
    # A ' opens a Python-style string only where a value or key may start; elsewhere it is an
    # apostrophe in unquoted prose.
    j = i - 1
    while j >= 0 and text[j] in " \t\r\n":
        j -= 1
    return j < 0 or text[j] in "{[,:"


# Each unclosed "{" costs a scan to the end of the text; a truncated output has many.
_MAX_SCAN_ATTEMPTS = 64


def top_level_objects(text: str) -> list[str]:
    """Balanced ``{...}`` spans not nested in another one, longest first."""
    spans: list[str] = []
    i = text.find("{")
    attempts = 0
    while i != -1 and attempts < _MAX_SCAN_ATTEMPTS:
        attempts += 1
        end = balanced_end(text, i)
        if end is None:
            i = text.find("{", i + 1)
            continue
        spans.append(text[i:end])
        i = text.find("{", end)
    spans.sort(key=len, reverse=True)
    return spans


def greedy_object(text: str) -> str | None:
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
        elif ch == "'" and opens_single_quote(text, i):
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


PARSERS: tuple[tuple[str, Callable[[str], Any]], ...] = (
    ("json", _json),
    ("single-quote fix", _json_repaired),
    ("python literal", _literal),
    ("yaml", _yaml),
)

PARSE_ERRORS = (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, yaml.YAMLError)


def parse_fragment(fragment: str) -> Any:
    for _name, parse in PARSERS[:3]:
        try:
            return parse(fragment)
        except PARSE_ERRORS:
            continue
    return None
