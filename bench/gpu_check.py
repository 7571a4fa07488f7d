"""The GPU check: everything a machine with one NVIDIA GPU should measure, in one command that
needs nothing from the network and fits in 8 minutes.

    .venv/bin/python -m bench.gpu_check              # on the GPU machine
    .venv/bin/python -m bench.gpu_check --dry-run    # the same steps on CPU, demo model (~1-2 min)

Steps, each a subprocess with its own time limit (a step that fails or runs out of time is
reported and the next one runs):

1. environment: torch, CUDA, the device, flash-attention;
2. the CUDA tests (``pytest -m gpu``);
3. the full-size random model (InternVL2.5-1B's shapes) in bf16 with SDPA, and with
   flash-attention when it is installed: vision tower, prefill, decode step, GPU memory;
4. the continuous engine with constrained decoding, 15 concurrent requests;
5. the workload benchmark (``bench.workload``) at concurrency 1, 4 and 15 against the
   seed-style baseline, every output forced to 900 tokens, engines in the server process so the
   GPU memory peak is the benchmark's own. The seed-style row is measured at concurrency 1
   only: it serves one request at a time, so its requests/s is the same at any concurrency,
   and at 15 it would need 15 of its ~900-token generates (minutes) per measurement.

Every figure is printed as a Markdown table row for BENCHMARKS.md; with ``$OUT`` set (or
``--out``) the report and each step's log are written there too.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import ROOT, argument_parser


@dataclass(frozen=True)
class Step:
    name: str
    command: list[str]
    limit_s: int


@dataclass
class Outcome:
    step: Step
    code: int | None  # None: ran out of time
    seconds: float
    output: str

    @property
    def status(self) -> str:
        if self.code is None:
            return f"timed out after {self.step.limit_s} s"
        return "ok" if self.code == 0 else f"failed (exit {self.code})"


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


ENVIRONMENT = """
import importlib.util, torch
cuda = torch.cuda.is_available()
rows = [("torch", torch.__version__), ("CUDA runtime", torch.version.cuda or "-"),
        ("device", torch.cuda.get_device_name(0) if cuda else "CPU"),
        ("bf16 supported", str(cuda and torch.cuda.is_bf16_supported())),
        ("flash-attention installed", str(importlib.util.find_spec("flash_attn") is not None))]
print("\\n".join(f"| environment | {k} | {v} |" for k, v in rows))
"""


def steps(dry_run: bool) -> list[Step]:
    dry = ["--dry-run"] if dry_run else []
    out = [
        Step("environment", _python("-c", ENVIRONMENT), 30),
        Step(
            "CUDA tests",
            _python(
                "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "-o", "addopts=",
                "tests/engine/test_engine_gpu.py", "tests/engine/test_vision_cache.py",
            ),
            90,
        ),
        Step("full-size model, SDPA", _python("-m", "bench.gpu_probe", "model", *dry), 60),
    ]  # fmt: skip
    if not dry_run and importlib.util.find_spec("flash_attn") is not None:
        out.append(
            Step(
                "full-size model, flash-attention",
                _python("-m", "bench.gpu_probe", "model", "--attn", "flash_attention_2"),
                60,
            )
        )
    rows, tokens = ("4", "128") if dry_run else ("15", "256")
    out.append(
        Step(
            "continuous engine, constrained",
            _python("-m", "bench.gpu_probe", "engine", "--rows", rows, "--tokens", tokens, *dry),
            60,
        )
    )
    workload = [
        "-m", "bench.workload", "--in-process", "--no-cache-off", "--rate", "0",
        "--seed-levels", "1", "--torch-threads", "0",
    ]  # fmt: skip
    if dry_run:
        workload += ["--concurrency", "1", "4", "--requests", "2", "--rounds", "1"]
        workload += ["--tokens", "16", "--warmup", "2", "--products", "10"]
    else:
        workload += ["--model", "full_size", "--tokens", "900", "--concurrency", "1", "4", "15"]
        workload += ["--requests", "2", "--rounds", "1", "--warmup", "2"]
    # The limits add up to 8 minutes (480 s).
    out.append(Step("workload vs seed-style", _python(*workload), 180))
    return out


def run_step(step: Step, log_dir: Path | None) -> Outcome:
    print(f"== {step.name} (limit {step.limit_s} s): {' '.join(step.command[1:])}", flush=True)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen' / 'python'}"}
    started = time.perf_counter()
    try:
        done = subprocess.run(
            step.command,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=step.limit_s,
            check=False,
        )
        code: int | None = done.returncode
        output = done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        code = None
        output = _text(exc.stdout) + _text(exc.stderr)
    outcome = Outcome(step, code, time.perf_counter() - started, output)
    if log_dir is not None:
        name = "".join(c if c.isalnum() else "-" for c in step.name.lower())
        (log_dir / f"{name}.log").write_text(output, encoding="utf-8")
    print(f"   {outcome.status} in {outcome.seconds:.0f} s", flush=True)
    return outcome


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def figures(outcome: Outcome) -> list[str]:
    """The Markdown the step printed: table rows, plus the workload's summary lines."""
    lines = outcome.output.splitlines()
    if outcome.step.name == "CUDA tests":
        summary = [ln for ln in lines if " passed" in ln or " skipped" in ln or " failed" in ln]
        return [f"| CUDA tests | pytest -m gpu | {summary[-1].strip() if summary else '-'} |"]
    keep = [ln for ln in lines if ln.startswith("|") or ln.startswith(("RATIOS", "GPU memory"))]
    return keep


def report(outcomes: Sequence[Outcome], dry_run: bool) -> str:
    head = "GPU check" + (" (dry run: CPU, demo model)" if dry_run else "")
    status = ["| step | status | seconds |", "| --- | --- | --- |"]
    status += [f"| {o.step.name} | {o.status} | {o.seconds:.0f} |" for o in outcomes]
    body = [f"# {head}", "", *status, "", "| step | figure | value |", "| --- | --- | --- |"]
    for outcome in outcomes:
        rows = figures(outcome)
        body += [r for r in rows if r.count("|") == 4]
    body += ["", "Workload benchmark tables:", ""]
    for outcome in outcomes:
        if outcome.step.name.startswith("workload"):
            body += [r for r in figures(outcome) if r.count("|") != 4]
    return "\n".join(body)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argument_parser("gpu_check", __doc__)
    p.add_argument("--dry-run", action="store_true", help="CPU and the demo model")
    p.add_argument("--out", type=Path, default=None, help="results folder (default: $OUT)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[Outcome]:
    args = parse_args(argv)
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    outcomes = [run_step(step, out) for step in steps(args.dry_run)]
    text = report(outcomes, args.dry_run)
    text += f"\n\nTotal: {time.perf_counter() - started:.0f} s\n"
    print(text, flush=True)
    if out is not None:
        (out / "gpu_check.md").write_text(text, encoding="utf-8")
    return outcomes


if __name__ == "__main__":
    main()
