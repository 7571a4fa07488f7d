"""The inspection prompt: a versioned Jinja2 data file rendered with the request's questions.

The bundled template is ``inference_svc/prompts/inspection_v1.j2``; an operator can point
``PROMPT_TEMPLATE_PATH`` at another one (a fine-tuned model must get the prompt it was trained
on). A template starts with a Jinja comment holding ``key: value`` metadata, ``version`` among
them; its version and the SHA-256 of its source are recorded with every model attempt.

The header also bounds what the model is asked to write (``max_evidence_chars``,
``max_analysis_chars``, ``max_result_chars``: the string limits of the constrained output
schema), so a prompt and the output it asks for are versioned together. A template without
them gets the ``OutputLimits`` defaults.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from inference_svc.domain.categories import categorise, is_negative_expected
from inference_svc.domain.models import OutputLimits, Question
from inference_svc.domain.vocabulary import ValueType, boolean_pair, boolean_truth, value_type
from inference_svc.model_inputs import IMAGE_PLACEHOLDER

DEFAULT_TEMPLATE = "inspection_v1.j2"

_HEADER = re.compile(r"\A\s*\{#-?(.*?)-?#\}", re.DOTALL)
_META_LINE = re.compile(r"^\s*([A-Za-z_][\w-]*)\s*:\s*(.*?)\s*$")

# Chat-format and image markers in caller text would add image slots or end the turn.
_MARKUP = re.compile(r"<\s*/?\s*(?:image|img|img_context)\s*>|<\|[^|<>]{0,40}\|>", re.IGNORECASE)


def prompt_safe(text: str) -> str:
    """Caller text as it may appear in a prompt or a forced output: model markers
    (``<image>``, ``<|im_end|>``...) defused, kept readable."""
    return _MARKUP.sub(lambda m: "[" + m.group(0).strip("<>|/ ").lower() + "]", text)


_ONES = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
)
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def number_to_word(n: int) -> str:
    """3 -> "three", 42 -> "forty-two" (as the replaced prompt wrote image counts); digits
    from 100 on."""
    if 0 <= n < 20:
        return _ONES[n]
    if 20 <= n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")
    return str(n)


@dataclass(frozen=True)
class PromptQuestion:
    """A question as the template sees it."""

    number: int
    type: str
    label: str
    value_to_check: str
    mandatory: bool
    mandatory_text: str  # "Yes"/"No", as the legacy question form wrote it
    category: str  # Category value, e.g. "brand_verification"
    value_type: str  # ValueType value
    negative_expected: bool
    positive: str  # boolean vocabulary of value_to_check ("Yes"/"No", "Y"/"N"...)
    negative: str


def prompt_question(number: int, question: Question) -> PromptQuestion:
    positive, negative = boolean_pair(question.value_to_check)
    vtype = value_type(question)
    # A damage question whose healthy answer is "Yes" ("Is it free of damage?") is an ordinary
    # boolean one.
    negative_expected = (
        vtype is ValueType.BOOLEAN
        and is_negative_expected(question)
        and boolean_truth(question.value_to_check) is not True
    )
    return PromptQuestion(
        number=number,
        type=prompt_safe(question.type),
        label=prompt_safe(question.label),
        value_to_check=prompt_safe(question.value_to_check),
        mandatory=question.mandatory,
        mandatory_text="Yes" if question.mandatory else "No",
        category=categorise(question).value,
        value_type=vtype.value,
        negative_expected=negative_expected,
        positive=positive,
        negative=negative,
    )


def _json_literal(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def _environment() -> SandboxedEnvironment:
    # Sandboxed: the template path is operator configuration, not code. No autoescape: the
    # output is a prompt, not HTML. StrictUndefined: a misspelt variable fails at load time
    # (self-check render), not as silently missing prompt text.
    env = SandboxedEnvironment(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
    )
    env.filters["number_word"] = number_to_word
    env.filters["json"] = _json_literal
    return env


def parse_metadata(source: str) -> dict[str, str]:
    """``key: value`` lines of the template's leading Jinja comment."""
    match = _HEADER.match(source)
    if not match:
        return {}
    meta: dict[str, str] = {}
    for line in match.group(1).splitlines():
        kv = _META_LINE.match(line)
        if kv:
            meta.setdefault(kv.group(1).lower(), kv.group(2))
    return meta


class PromptTemplateError(ValueError):
    """The configured template cannot be used (syntax error, unknown variable, wrong images)."""


_LIMIT_KEYS = tuple(f.name for f in fields(OutputLimits))


def output_limits(metadata: Mapping[str, str], name: str = "<string>") -> OutputLimits:
    """The output limits a template header sets; the defaults for those it does not."""
    values: dict[str, int] = {}
    for key in _LIMIT_KEYS:
        raw = metadata.get(key)
        if raw is None:
            continue
        try:
            values[key] = int(raw)
        except ValueError:
            values[key] = 0
        if values[key] < 1:
            raise PromptTemplateError(
                f"prompt template {name}: {key} must be a positive integer, not {raw!r}"
            )
    return OutputLimits(**values)


def with_output_limits(source: str, limits: OutputLimits) -> str:
    """``source`` with its header's output limits set to ``limits`` (added when missing; a
    header is created for a template without one). For a variant of a template that asks for
    shorter or longer strings."""
    lines = [f"{key}: {getattr(limits, key)}" for key in _LIMIT_KEYS]
    match = _HEADER.match(source)
    if not match:
        return "{#-\n" + "\n".join(lines) + "\n-#}\n" + source
    kept = [
        line
        for line in match.group(1).splitlines()
        if not ((kv := _META_LINE.match(line)) and kv.group(1).lower() in _LIMIT_KEYS)
    ]
    body = "\n".join([*(line for line in kept if line.strip()), *lines])
    return "{#-\n" + body + "\n-#}" + source[match.end() :]


class PromptTemplate:
    """A loaded, checked prompt template."""

    def __init__(self, source: str, name: str = "<string>") -> None:
        self.source = source
        self.name = name
        self.sha256 = hashlib.sha256(source.encode("utf-8")).hexdigest()
        self.metadata = parse_metadata(source)
        # A template without a header still gets a stable, content-derived version.
        self.version = self.metadata.get("version") or f"{Path(name).stem}-{self.sha256[:12]}"
        self.limits = output_limits(self.metadata, name)
        try:
            self._template = _environment().from_string(source)
        except TemplateError as exc:
            raise PromptTemplateError(f"prompt template {name}: {exc}") from exc
        self._self_check()

    @classmethod
    def bundled(cls, name: str = DEFAULT_TEMPLATE) -> PromptTemplate:
        return cls(cls.bundled_source(name), name)

    @staticmethod
    def bundled_source(name: str = DEFAULT_TEMPLATE) -> str:
        return resources.files("inference_svc.prompts").joinpath(name).read_text(encoding="utf-8")

    @classmethod
    def from_path(cls, path: Path) -> PromptTemplate:
        try:
            source = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise PromptTemplateError(f"prompt template {path}: {exc}") from exc
        return cls(source, str(path))

    @classmethod
    def load(cls, path: Path | None = None) -> PromptTemplate:
        """The template at ``path`` (settings.prompt_template_path), else the bundled one."""
        return cls.bundled() if path is None else cls.from_path(path)

    def render(
        self,
        product_name: str,
        questions: Sequence[Question],
        n_reference: int,
        n_pickup: int,
        retry_errors: Sequence[str] | None = None,
    ) -> str:
        """The user prompt: one ``<image>`` per image (reference images first), the questions
        and the JSON to return; with ``retry_errors``, the IMPORTANT section of a retry."""
        if n_reference < 1 or n_pickup < 1:
            raise ValueError("at least one reference and one pickup image are needed")
        n_total = n_reference + n_pickup
        images = [
            {"number": i, "role": "reference" if i <= n_reference else "pickup"}
            for i in range(1, n_total + 1)
        ]
        try:
            text = self._template.render(
                product_name=" ".join(prompt_safe(product_name).split()),
                images=images,
                n_reference=n_reference,
                n_pickup=n_pickup,
                n_total=n_total,
                image_placeholder=IMAGE_PLACEHOLDER,
                questions=[prompt_question(i, q) for i, q in enumerate(questions, start=1)],
                retry_errors=list(retry_errors or []),
            )
        except TemplateError as exc:
            raise PromptTemplateError(f"prompt template {self.name}: {exc}") from exc
        return text.strip() + "\n"

    def _self_check(self) -> None:
        sample = [
            Question("Brand", "Is the brand visible?", "Yes", True),
            Question("Colour", "What is the colour?", "Red", False),
            Question("Quantity", "How many units?", "2", False),
        ]
        text = self.render("Sample product", sample, 2, 3, retry_errors=["$: sample error"])
        found = text.count(IMAGE_PLACEHOLDER)
        if found != 5:
            raise PromptTemplateError(
                f"prompt template {self.name}: expected one {IMAGE_PLACEHOLDER} per image "
                f"(5 for 2 reference + 3 pickup images), found {found}"
            )
