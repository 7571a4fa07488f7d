"""Writes the configuration documents from the settings classes.

Two generated blocks, both from the fields' own defaults, descriptions, groups and tiers
(`svc_common.settings_fields.setting`):

- README.md, between the config-summary markers: the operator-facing settings of each service,
  one line per group;
- docs/configuration.md, between the config-table markers: every setting, grouped, the advanced
  ones in their own section.

`python -m tools.config_table` prints both; `--check` fails when either file is stale (a test
runs it), so the documented defaults can never drift from the code; `--write` rewrites them.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from inference_svc.settings import InferenceSettings
from persistence_svc.settings import PersistenceSettings
from svc_common.settings_fields import GROUPS, Group, group_of, is_advanced

ROOT = Path(__file__).resolve().parents[1]

SERVICES: tuple[tuple[str, type[BaseSettings]], ...] = (
    ("inference_svc", InferenceSettings),
    ("persistence_svc", PersistenceSettings),
)


@dataclass(frozen=True)
class Block:
    """A generated part of a document (path relative to the repository), between markers."""

    path: str
    name: str

    @property
    def begin(self) -> str:
        return f"<!-- {self.name}:begin -->"

    @property
    def end(self) -> str:
        return f"<!-- {self.name}:end -->"

    def wrap(self, body: str) -> str:
        return f"{self.begin}\n{body}\n{self.end}"


SUMMARY = Block("README.md", "config-summary")
TABLE = Block("docs/configuration.md", "config-table")


def _default(value: object) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, (list, dict)):
        return json.dumps(value) if value else "(empty)"
    if isinstance(value, bool):
        return str(value).lower()
    text = str(value)
    return text if text else "(empty)"


def _default_of(field: FieldInfo) -> str:
    default = field.get_default(call_default_factory=True)
    if isinstance(default, BaseModel):
        default = default.model_dump()
    return _default(default)


def _code(text: str) -> str:
    """A default as Markdown: code, or the placeholders in italics (*unset*, *empty*)."""
    if text in {"(unset)", "(empty)"}:
        return f"*{text[1:-1]}*"
    return "`" + text.replace("|", "\\|") + "`"


def _fields(
    settings: type[BaseSettings], *, advanced: bool
) -> dict[Group, list[tuple[str, FieldInfo]]]:
    """The settings of one tier, by group, in the documents' group order."""
    grouped: dict[Group, list[tuple[str, FieldInfo]]] = {group: [] for group in GROUPS}
    for name, field in settings.model_fields.items():
        try:
            group = group_of(field)
        except ValueError as exc:
            raise ValueError(f"{settings.__name__}.{name}: {exc}") from exc
        if is_advanced(field) == advanced:
            grouped[group].append((name, field))
    return {group: fields for group, fields in grouped.items() if fields}


def operator_facing(settings: type[BaseSettings]) -> list[str]:
    """The operator-facing settings' env var names."""
    return [
        name.upper() for fields in _fields(settings, advanced=False).values() for name, _ in fields
    ]


def summary() -> str:
    """The README's block: each service's operator-facing settings, one row per group."""
    parts: list[str] = []
    for service, settings in SERVICES:
        lines = [f"`{service}`:", "", "| Group | Settings (default) |", "| --- | --- |"]
        for group, fields in _fields(settings, advanced=False).items():
            cells = ", ".join(f"`{name.upper()}` ({_code(_default_of(f))})" for name, f in fields)
            lines.append(f"| {group} | {cells} |")
        parts.append("\n".join(lines))
    return SUMMARY.wrap("\n\n".join(parts))


def _table(heading: str, fields: list[tuple[str, FieldInfo]]) -> str:
    lines = [heading, "", "| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for name, field in fields:
        description = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{name.upper()}` | {_code(_default_of(field))} | {description} |")
    return "\n".join(lines)


def full_table() -> str:
    """docs/configuration.md's block: every setting of each service, grouped, advanced last."""
    parts: list[str] = []
    for service, settings in SERVICES:
        parts.append(f"## {service}")
        for group, fields in _fields(settings, advanced=False).items():
            parts.append(_table(f"### {service}: {group}", fields))
        parts.append(f"### {service}: advanced")
        parts.append("Tuning knobs and test switches; the defaults suit production.")
        for group, fields in _fields(settings, advanced=True).items():
            parts.append(_table(f"#### {service}, advanced: {group}", fields))
    return TABLE.wrap("\n\n".join(parts))


def _rendered() -> dict[Block, str]:
    return {SUMMARY: summary(), TABLE: full_table()}


def _replace(text: str, block: Block, rendered: str) -> str | None:
    start, end = text.find(block.begin), text.find(block.end)
    if start < 0 or end < start:
        return None
    return text[:start] + rendered + text[end + len(block.end) :]


def stale(root: Path = ROOT) -> list[str]:
    """Why the documents under `root` are out of date (empty when they are current)."""
    problems: list[str] = []
    for block, rendered in _rendered().items():
        text = (root / block.path).read_text(encoding="utf-8")
        updated = _replace(text, block, rendered)
        if updated is None:
            problems.append(f"{block.path}: markers {block.begin} ... {block.end} not found")
        elif updated != text:
            problems.append(f"{block.path}: the {block.name} block is stale")
    return problems


def write(root: Path = ROOT) -> list[str]:
    """Rewrites both blocks under `root`; returns the files whose markers are missing."""
    missing: list[str] = []
    for block, rendered in _rendered().items():
        path = root / block.path
        text = path.read_text(encoding="utf-8")
        updated = _replace(text, block, rendered)
        if updated is None:
            missing.append(f"{block.path}: markers {block.begin} ... {block.end} not found")
        elif updated != text:
            path.write_text(updated, encoding="utf-8")
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.config_table",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true", help="fail if either file is stale")
    action.add_argument("--write", action="store_true", help="rewrite both files' blocks")
    args = parser.parse_args(argv)
    if args.check:
        problems = stale()
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("run `python -m tools.config_table --write`", file=sys.stderr)
            return 1
        return 0
    if args.write:
        missing = write()
        for problem in missing:
            print(problem, file=sys.stderr)
        return 1 if missing else 0
    print(summary())
    print()
    print(full_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
