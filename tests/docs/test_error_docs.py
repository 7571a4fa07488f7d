"""docs/errors.md lists every reason each service can emit, with the code and RetryInfo the
services' error tables give it (the tables are the source; the document must follow)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from inference_svc.grpc_api.errors import ERROR_TABLE as INSPECTION_TABLE
from persistence_svc.errors import ERROR_TABLE as PERSISTENCE_TABLE
from svc_common.grpc_errors import INTERNAL, INVALID_ARGUMENT, ErrorTable, Rule

DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"


def documented(block: str) -> dict[str, tuple[str, bool]]:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(f"<!-- {block}:begin -->(.*)<!-- {block}:end -->", text, re.S)
    assert match, f"docs/errors.md has no {block} block"
    rows: dict[str, tuple[str, bool]] = {}
    for line in match.group(1).strip().splitlines()[2:]:
        reason, code, retry = (cell.strip().strip("`") for cell in line.strip("|").split("|")[:3])
        rows[reason] = (code, {"yes": True, "no": False}[retry])
    return rows


def emitted(table: ErrorTable) -> dict[str, tuple[str, bool]]:
    rules: list[Rule] = []
    for entry in table.rules.values():
        rules += [entry] if isinstance(entry, Rule) else list(entry.values())
    found = {r.reason: (r.code.name, r.retryable) for r in rules}
    # The interceptor's own: undecodable requests and unexpected exceptions.
    found.setdefault(INVALID_ARGUMENT, ("INVALID_ARGUMENT", False))
    found.setdefault(INTERNAL, ("INTERNAL", False))
    return found


@pytest.mark.parametrize(
    ("block", "table"),
    [("inspection-reasons", INSPECTION_TABLE), ("persistence-reasons", PERSISTENCE_TABLE)],
)
def test_documented_reasons_match_the_error_table(block: str, table: ErrorTable) -> None:
    assert documented(block) == emitted(table)
