"""deploy/observability: alert rules and the Grafana dashboard only use metrics that exist."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from inference_svc.imaging import fetch_cache_metrics
from inference_svc.storage import metrics as storage_metrics
from svc_common import grpc_metrics, inference_metrics, job_metrics, persistence_metrics

from .conftest import OBSERVABILITY_DIR

ALERTS = OBSERVABILITY_DIR / "alerts.yaml"
ALERTS_TEST = OBSERVABILITY_DIR / "alerts_test.yaml"
DASHBOARD = OBSERVABILITY_DIR / "grafana-dashboard.json"

_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("",), "gauge": ("",)}
_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "inf", "nan",
}  # fmt: skip


def _known_series() -> set[str]:
    names: set[str] = set()
    for module in (
        grpc_metrics,
        inference_metrics,
        persistence_metrics,
        job_metrics,
        storage_metrics,
        fetch_cache_metrics,
    ):
        for name, kind in module.METRIC_TYPES.items():
            names.update(name + suffix for suffix in _SUFFIXES[kind])
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (a small lexer, enough for our queries:
    label matchers, ranges, grouping clauses and function names are skipped)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "{}", text)
    text = re.sub(r"\[[^\]]*\]", "[]", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    identifier = r"(?<![\w.$:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![a-zA-Z0-9_:]|\s*\()"
    for match in re.finditer(identifier, text):
        if match.group(1).lower() not in _KEYWORDS:
            names.add(match.group(1))
    return names


def test_metric_name_lexer() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, stage) (rate(rpi_inference_stage_seconds_bucket"
        '{job=~"$job", stage!="x y"}[$__rate_interval]))) > 2e1 and on (job) up offset 5m'
    )
    assert metric_names(expr) == {"rpi_inference_stage_seconds_bucket", "up"}


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _dashboard_exprs() -> list[tuple[str, str]]:
    exprs = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                exprs.append((panel["title"], target["expr"]))
            walk(panel.get("panels", []))

    walk(_dashboard()["panels"])
    return exprs


def _alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def test_dashboard_queries_reference_only_exported_metrics() -> None:
    known = _known_series()
    exprs = _dashboard_exprs()
    assert len(exprs) >= 20
    used: set[str] = set()
    for title, expr in exprs:
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr}"
        assert names <= known, f"{title}: unknown {names - known}"
        used |= names
    for variable in _dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            (name,) = re.findall(r"label_values\((\w+),", variable["definition"])
            assert name in known, variable["name"]
    # Every metric family shows up somewhere on the dashboard.
    families = {
        name
        for module in (grpc_metrics, inference_metrics, persistence_metrics)
        for name in module.METRIC_TYPES
    }
    shown = {f for f in families if any(u == f or u.startswith(f + "_") for u in used)}
    assert families - shown <= {grpc_metrics.STARTED_TOTAL, grpc_metrics.MSG_RECEIVED_TOTAL}


def test_dashboard_panels_the_issue_asks_for() -> None:
    titles = {p["title"] for p in _dashboard()["panels"]}
    for title in (
        "Request rate by method and code", "Inspection latency (successful calls)",
        "Stage latency p95", "Queue depth and in-flight", "Batch size", "Tokens per second",
        "Time to first token", "Decisions and output retries", "Image fetch errors",
        "Event backlog", "Event delivery", "Persistence write latency",
    ):  # fmt: skip
        assert title in titles
    ids = [p["id"] for p in _dashboard()["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_queries_parse(promtool: str, tmp_path: Path) -> None:
    # promtool has no query linter; recording rules make it parse each expression.
    def concrete(expr: str) -> str:
        return re.sub(r"\$\w+", "x", expr.replace("$__rate_interval", "5m"))

    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query:{i}", "expr": concrete(expr)}
                    for i, (_, expr) in enumerate(_dashboard_exprs())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules(promtool: str) -> None:
    result = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alert_rules())} rules found" in result.stdout


def test_promtool_alert_unit_tests(promtool: str) -> None:
    result = subprocess.run(
        [promtool, "test", "rules", str(ALERTS_TEST)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_are_complete() -> None:
    rules = _alert_rules()
    assert {r["alert"] for r in rules} - set(TARGET_ALERTS) == {
        "HighErrorRate", "QueueSaturated", "LatencyP95OverObjective", "EventBacklogGrowing",
        "ModelNotReady", "PersistenceDown", "PersistenceRefusesWriter", "PolicyReloadFailing",
        "ImageFetchFailing", "AsyncQueueGrowing", "WebhookDeadLetters",
        "StorageUploadsStuck",
    }  # fmt: skip
    known = _known_series() | {"up"}  # up: Prometheus' own series per scrape target
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        assert annotations["runbook_url"].endswith(f"docs/operations.md#{name.lower()}"), name
        assert metric_names(rule["expr"]) <= known, name


# Alert name -> the expression: one per failure of the scrape itself, for both services.
TARGET_ALERTS = {
    "ScrapeTargetDown": 'up{job=~"inference|persistence"} == 0',
    "InferenceTargetsMissing": 'absent(up{job="inference"})',
    "PersistenceTargetsMissing": 'absent(up{job="persistence"})',
}


def test_scrape_target_alerts_cover_both_services() -> None:
    rules = {r["alert"]: r for r in _alert_rules()}
    for name, expr in TARGET_ALERTS.items():
        assert rules[name]["expr"].strip() == expr, name
        assert rules[name]["labels"]["severity"] == "critical", name
    # promtool's unit tests fire each of them (a rule without a firing test is untested).
    tested = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tested
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert set(TARGET_ALERTS) <= fired


def test_podmonitor_job_names_are_the_ones_the_alerts_use() -> None:
    monitoring = OBSERVABILITY_DIR.parent / "k8s" / "components" / "monitoring"
    for service in ("inference", "persistence"):
        podmonitor = yaml.safe_load((monitoring / f"{service}-podmonitor.yaml").read_text())
        # job = the pod's app.kubernetes.io/name label, not Prometheus Operator's default
        # "<namespace>/<podmonitor>", which would change with the overlay's namespace.
        assert podmonitor["spec"]["jobLabel"] == "app.kubernetes.io/name"
        assert podmonitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == service


@pytest.mark.parametrize("objective", [20])
def test_latency_alert_matches_objective_and_bucket(objective: int) -> None:
    (rule,) = [r for r in _alert_rules() if r["alert"] == "LatencyP95OverObjective"]
    assert f"> {objective}" in rule["expr"]
    # A bucket boundary at the objective keeps the p95 estimate exact where it matters.
    assert float(objective) in grpc_metrics.DEFAULT_HANDLING_BUCKETS
    assert float(objective) in inference_metrics.STAGE_BUCKETS["total"]
