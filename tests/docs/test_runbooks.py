"""Every alert's runbook link points at a section that exists in docs/operations.md."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _anchors(markdown: str) -> set[str]:
    anchors = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^a-z0-9 -]", "", title).replace(" ", "-"))
    return anchors


def test_every_alert_has_a_runbook_section() -> None:
    rules = yaml.safe_load((ROOT / "deploy/observability/alerts.yaml").read_text())
    anchors = _anchors((ROOT / "docs/operations.md").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert alerts
    for rule in alerts:
        url = rule["annotations"]["runbook_url"]
        assert url.split("#", 1)[0].endswith("docs/operations.md"), url
        assert url.split("#", 1)[1] in anchors, f"{rule['alert']}: no section for {url}"
