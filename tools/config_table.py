"""Prints the README's configuration tables from the settings classes.

`python -m tools.config_table` prints them; `--check README.md` fails when the README is out of
date (a test runs the check), so the documented defaults can never drift from the code.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import BaseModel
from pydantic_settings import BaseSettings

from inference_svc.settings import InferenceSettings
from persistence_svc.settings import PersistenceSettings

BEGIN = "<!-- config-table:begin -->"
END = "<!-- config-table:end -->"


def _default(value: object) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, (list, dict)):
        return json.dumps(value) if value else "(empty)"
    if isinstance(value, bool):
        return str(value).lower()
    text = str(value)
    return text if text else "(empty)"


def table(title: str, settings: type[BaseSettings]) -> str:
    lines = [f"### {title}", "", "| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for name, field in settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            default = default.model_dump()
        description = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{name.upper()}` | `{_default(default)}` | {description} |")
    return "\n".join(lines)


def render() -> str:
    body = "\n\n".join(
        [table("inference_svc", InferenceSettings), table("persistence_svc", PersistenceSettings)]
    )
    return f"{BEGIN}\n{body}\n{END}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", type=Path, help="fail if this file's tables are stale")
    parser.add_argument("--write", type=Path, help="replace the tables in this file")
    args = parser.parse_args(argv)
    rendered = render()
    for path in (args.check, args.write):
        if path is None:
            continue
        text = path.read_text()
        start, end = text.find(BEGIN), text.find(END)
        if start < 0 or end < 0:
            print(f"{path}: markers {BEGIN} ... {END} not found", file=sys.stderr)
            return 1
        current = text[start : end + len(END)]
        if path is args.check and current != rendered:
            print(
                f"{path}: configuration tables are stale; run "
                f"`python -m tools.config_table --write {path}`",
                file=sys.stderr,
            )
            return 1
        if path is args.write:
            path.write_text(text[:start] + rendered + text[end + len(END) :])
    if args.check is None and args.write is None:
        print(rendered)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
