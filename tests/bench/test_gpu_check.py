"""The GPU check's dry run: every step of the script a GPU machine runs, on CPU with the demo
model, and the report it leaves (structure only, never timings)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import gpu_check

pytestmark = pytest.mark.slow


def test_the_steps_fit_in_eight_minutes() -> None:
    for dry_run in (False, True):
        assert sum(step.limit_s for step in gpu_check.steps(dry_run)) <= 480


def test_dry_run_runs_every_step_and_writes_the_report(tmp_path: Path) -> None:
    outcomes = gpu_check.main(["--dry-run", "--out", str(tmp_path)])
    names = [o.step.name for o in outcomes]
    assert names == [
        "environment",
        "CUDA tests",
        "full-size model, SDPA",
        "continuous engine, constrained",
        "workload vs seed-style",
    ]
    for outcome in outcomes:
        assert outcome.status == "ok", (outcome.step.name, outcome.output[-2000:])
    report = (tmp_path / "gpu_check.md").read_text(encoding="utf-8")
    assert "| environment | torch |" in report
    assert "| CUDA tests | pytest -m gpu |" in report
    assert "vision tower + projector, 1 tile" in report
    assert "outputs complete per the schema | 4/4 |" in report
    assert "RATIOS " in report and "GPU memory" in report
    assert "| c=4 " in report  # the workload's table made it into the report
    assert {p.name for p in tmp_path.glob("*.log")} >= {"environment.log", "cuda-tests.log"}
