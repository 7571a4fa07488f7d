"""The README's first command works: `python -m tools.demo` brings the system up on embedded
Postgres and the local demo model, runs one streamed inspection, reads the record back and
shuts both services down cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_runs_end_to_end_and_shuts_down_cleanly() -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "MODEL_PATH"}}
    result = subprocess.run(
        [sys.executable, "-m", "tools.demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, (out + result.stderr)[-4000:]
    assert "embedded PostgreSQL" in out
    assert "UNTRAINED" in out
    assert '"inspectionId"' in out
    assert "INSPECTION_STATUS_COMPLETED" in out
    assert "inference_svc exited with code 0" in out
    assert "persistence_svc exited with code 0" in out
