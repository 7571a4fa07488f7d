"""Engine-loop benchmark: the continuous engine alone, in this process (no gRPC, no server,
no engine process), with its scheduling options against each other in the same run.

    .venv/bin/python -m bench.engine_loop                      # see BENCHMARKS.md
    .venv/bin/python -m bench.engine_loop --concurrency 4 16 --requests 48 --repeats 3

``bench.engine`` measures the service end to end; on a 2-core host the server process, the
load client and the engine then share the cores, and the engine's own loop is hard to see.
Here ``--concurrency`` callers keep the engine busy with constrained requests of a forced
length (min = max new tokens, each with its own schema). By default each request is the one
the service would send for ``bench.engine``'s inspection: the service's own prompt, three
questions, 8 tiles in 4 images (1,780 prompt tokens with the demo model); ``--prompt short``
sends one image of ``--tiles`` tiles and a one-line prompt instead. Each variant is one
engine configuration:

* ``ours``: the defaults (grammar masks computed beside each step, prefills on their own
  thread);
* ``masks after step``: GRAMMAR_OVERLAP=false, the masks computed after each step;
* ``serial prefill``: PREFILL_OVERLAP=off, prefills on the step thread.

Variants run interleaved, ``--repeats`` times each; the table gives the median of each
variant's requests/s, its mean batch, and the CPU seconds of each of the engine's threads
per request (from ``/proc``: the step thread, the grammar helper, the prefill thread, and the
threads Python did not start, which are torch's and llguidance's pools).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.baseline import ForcedLength
from bench.common import (
    MODEL_CACHE,
    QUESTIONS,
    add_torch_threads_flag,
    apply_torch_threads,
    argument_parser,
    fmt,
    machine,
    quiet_logs,
    ratio,
    table,
)
from inference_svc.domain.models import OutputLimits, Question
from inference_svc.domain.output_schema import constrained_schema
from inference_svc.domain.prompt import PromptTemplate
from inference_svc.engine.api import GenerationRequest, GenerationResult, NullListener
from inference_svc.engine.config import EngineConfig
from inference_svc.engine.local import LocalEngine

VARIANTS: dict[str, dict[str, Any]] = {
    "ours": {},
    "masks after step": {"grammar_overlap": False},
    "serial prefill": {"prefill_overlap": "off"},
}
# Thread name prefixes as the engine names them; the rest is folded into "pools".
_THREADS = {"model-worker": "step", "model-grammar": "grammar", "model-prefill": "prefill"}


@dataclass
class Run:
    variant: str
    concurrency: int
    rps: float
    mean_batch: float
    cpu_per_request: dict[str, float] = field(default_factory=dict)


class _Quiet(NullListener):
    """A listener that wants no text (what the unary Inspect path sets)."""

    wants_text = False


def thread_cpu() -> dict[str, float]:
    """CPU seconds so far of this process's threads, by role."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat", encoding="ascii") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        name = names.get(int(tid), "")
        role = next((r for p, r in _THREADS.items() if name.startswith(p)), None)
        if role is None:
            role = "other python" if name else "pools"
        out[role] = out.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


# bench.engine's request: 2 reference photos of 1 tile, 2 pickup photos of 3 (2 + thumbnail).
PRODUCTION_TILES = (1, 1, 3, 3)


def production_prompt(questions: Sequence[Question]) -> str:
    """The service's own prompt (the bundled template) for bench.engine's product and photos:
    1,780 tokens with the system message and 8 tiles of the demo model."""
    return PromptTemplate.bundled().render(
        product_name="ACME ceramic mug, red",
        questions=list(questions),
        n_reference=2,
        n_pickup=2,
        retry_errors=None,
    )


def requests(count: int, tokens: int, tiles: int, prompt: str) -> list[GenerationRequest]:
    """``prompt`` "production": the service's prompt and bench.engine's 8 tiles in 4 images;
    "short": one image of ``tiles`` tiles and a one-line prompt (the decode step then reads
    a fraction of the cache, and the prefill is short)."""
    rng = np.random.default_rng(0)
    layout = PRODUCTION_TILES if prompt == "production" else (tiles,)
    total = sum(layout)
    pixels = [rng.integers(0, 255, (total, 3, 448, 448), dtype=np.uint8) for _ in range(4)]
    out = []
    for i in range(count):
        # Each request its own labels, so each row has its own grammar.
        questions = [
            Question(q.type, f"{q.label} ({i})", q.value_to_check, q.mandatory) for q in QUESTIONS
        ]
        # Strings long enough that no row's grammar can close before the forced length.
        schema = constrained_schema(
            questions,
            OutputLimits(max_evidence_chars=tokens * 16, max_analysis_chars=tokens * 16),
        )
        text = (
            production_prompt(questions) if prompt == "production" else "<image>\nInspect the item."
        )
        out.append(
            GenerationRequest(
                f"loop-{i}",
                text,
                pixels[i % len(pixels)],
                layout,
                tokens,
                json_schema=schema,
            )
        )
    return out


async def run_variant(
    variant: str, concurrency: int, args: argparse.Namespace, work: list[GenerationRequest]
) -> Run:
    config = EngineConfig(
        model_cache_dir=MODEL_CACHE,
        device="cpu",
        engine_process=False,
        max_batch_size=args.max_batch_size,
        max_new_tokens=args.tokens,
        torch_threads=args.torch_threads,
        **VARIANTS[variant],
    )
    engine = ForcedLength("local")(config)
    assert isinstance(engine, LocalEngine)
    await engine.start()
    try:
        pending = list(reversed(work))
        results: list[GenerationResult] = []

        async def caller() -> None:
            while pending:
                results.append(await engine.generate(pending.pop(), _Quiet()))

        before = thread_cpu()
        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        wall = time.perf_counter() - started
        after = thread_cpu()
    finally:
        await engine.stop()
    if any(r.completion_tokens != args.tokens for r in results):
        raise RuntimeError("a request did not produce the forced length")
    cpu = {k: (v - before.get(k, 0.0)) / len(results) for k, v in after.items()}
    return Run(
        variant,
        concurrency,
        len(results) / wall,
        statistics.fmean(r.batch_size for r in results),
        {k: v for k, v in cpu.items() if v > 0},
    )


def report(runs: list[Run], args: argparse.Namespace) -> str:
    lines = []
    roles = ("step", "grammar", "prefill", "pools", "other python")
    for c in args.concurrency:
        rows = []
        base = statistics.median(r.rps for r in runs if r.variant == "ours" and r.concurrency == c)
        for variant in args.variants:
            mine = [r for r in runs if r.variant == variant and r.concurrency == c]
            rps = statistics.median(r.rps for r in mine)
            cpu = {k: statistics.fmean(r.cpu_per_request.get(k, 0.0) for r in mine) for k in roles}
            rows.append(
                [
                    variant,
                    fmt(rps, 2),
                    " ".join(fmt(r.rps, 2) for r in mine),
                    fmt(statistics.fmean(r.mean_batch for r in mine)),
                    *(fmt(cpu[k] * 1000, 0) for k in roles),
                    f"{ratio(base, rps):.2f}x",
                ]
            )
        lines.append(f"\nConcurrency {c}:\n")
        lines.append(
            table(
                [
                    "variant",
                    "req/s (median)",
                    "runs",
                    "batch",
                    *(f"{k} CPU ms/req" for k in roles),
                    "ours vs this",
                ],
                rows,
            )
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> list[Run]:
    apply_torch_threads(args.torch_threads)
    quiet_logs()
    print(f"machine: {machine()}")
    work = requests(args.requests, args.tokens, args.tiles, args.prompt)
    tiles = sum(work[0].tiles_per_image)
    print(
        f"{args.requests} constrained requests per run, {args.prompt} prompt, {tiles} tiles "
        f"each, forced length {args.tokens} tokens; MAX_BATCH_SIZE {args.max_batch_size}; "
        f"{args.repeats} interleaved runs per variant",
        flush=True,
    )
    runs: list[Run] = []
    for c in args.concurrency:
        for _ in range(args.repeats):
            for variant in args.variants:
                result = await run_variant(variant, c, args, work)
                runs.append(result)
                print(
                    f"  {variant:18s} c={c:<3d} {result.rps:6.2f} req/s, batch "
                    f"{result.mean_batch:4.1f}",
                    flush=True,
                )
    print(report(runs, args))
    return runs


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argument_parser("engine_loop", __doc__)
    p.add_argument("--concurrency", type=int, nargs="+", default=[16])
    p.add_argument("--requests", type=int, default=48, help="requests per run")
    p.add_argument("--tokens", type=int, default=256, help="forced output length")
    p.add_argument(
        "--prompt",
        choices=("production", "short"),
        default="production",
        help="the service's prompt with bench.engine's 8 tiles, or a one-line prompt",
    )
    p.add_argument("--tiles", type=int, default=6, help="tiles per request (--prompt short)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument(
        "--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), metavar="V"
    )
    add_torch_threads_flag(p)
    args = p.parse_args(argv)
    if "ours" not in args.variants:
        args.variants.insert(0, "ours")
    return args


def main(argv: Sequence[str] | None = None) -> list[Run]:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    main()
