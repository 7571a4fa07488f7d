"""Decode-step benchmark: one continuous-batching step (``SlotDecoder.decode``) as the engine
runs it against the language model's own module calls, on the same model in the same run.

Variants: ``modules`` (the module calls, keys cached by position: the baseline), ``fused, keys
by row`` (q/k/v in one matrix product and gate/up in one, keys still by position), ``fused``
(the engine's step: fused, and keys cached by column so the query-key product reads them in
the layout a matrix product wants) and, with ``--compile``, ``fused, compiled``.

    .venv/bin/python -m bench.decode_step                    # demo model (see BENCHMARKS.md)
    .venv/bin/python -m bench.decode_step --compile          # adds the compiled fused step
    .venv/bin/python -m bench.decode_step --model full_size --rows 1 16 --steps 20
    .venv/bin/python -m bench.decode_step --with-prefill     # the step beside a prefill loop

Times are the calling thread's CPU time per step (``time.thread_time``), the minimum over
interleaved repetitions: CPU time does not count what the hypervisor steals from a shared VM,
and interleaving spreads the rest of the machine's noise over every variant alike. Wall time
is printed beside it.

``--with-prefill`` then times the fused step at the largest row count three ways: alone, while
another thread of the same process runs 8-tile prefills back to back (what PREFILL_OVERLAP
does), and while another process does. The gap between the last two is what sharing the
interpreter lock costs the step: the model's small operators each release and retake it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModelForImageTextToText

from bench.common import (
    MODEL_CACHE,
    add_torch_threads_flag,
    apply_torch_threads,
    argument_parser,
    fmt,
    machine,
    ratio,
    table,
)
from bench.full_size import build_full_size_model
from inference_svc.engine.model_builder import ensure_demo_model
from inference_svc.engine.pixels import PixelStaging
from inference_svc.engine.slot_decoder import SlotDecoder


@dataclass(frozen=True)
class Timing:
    variant: str
    rows: int
    cpu_ms: float
    wall_ms: float


def load(model_name: str) -> Any:
    model: Any
    if model_name == "full_size":
        model, _ = build_full_size_model(dtype=torch.float32)
    else:
        path = ensure_demo_model(MODEL_CACHE)
        auto: Any = AutoModelForImageTextToText
        model = auto.from_pretrained(str(path), dtype=torch.float32)
    model.eval()
    return model.requires_grad_(False)


def decoders(model: Any, max_rows: int, width: int, compiled: bool) -> dict[str, SlotDecoder]:
    """The baseline first: fusing rebinds the modules' weights (as views, same values)."""
    out = {
        "modules": SlotDecoder(
            model, max_rows, device="cpu", dtype=torch.float32, fuse=False, keys_by_column=False
        )
    }
    out["fused, keys by row"] = SlotDecoder(
        model, max_rows, device="cpu", dtype=torch.float32, keys_by_column=False
    )
    out["fused"] = SlotDecoder(model, max_rows, device="cpu", dtype=torch.float32)
    if compiled:
        out["fused, compiled"] = SlotDecoder(
            model, max_rows, device="cpu", dtype=torch.float32, compile_step=True
        )
    for decoder in out.values():
        decoder.reserve(width + 1)
        decoder.warm_up()
    return out


def step_inputs(rows: int, width: int) -> tuple[list[int], list[int]]:
    """Rows at staggered positions, as in a running batch; the widest sets the step's width."""
    positions = [width - 1 - (i * 7) % max(width // 4, 1) for i in range(rows)]
    return [5 + i for i in range(rows)], positions


def check_agreement(found: dict[str, SlotDecoder], rows: int, width: int) -> float:
    """The variants compute the same step: the largest logit difference from the baseline
    (every cache holds the same values, zeros and what the steps wrote)."""
    tokens, positions = step_inputs(rows, width)
    with torch.no_grad():
        logits = {name: decoder.decode(tokens, positions) for name, decoder in found.items()}
    base = logits["modules"]
    worst = max(float((other - base).abs().max()) for other in logits.values())
    if worst > 1e-3:
        raise RuntimeError(f"the step variants disagree: max |logit difference| {worst:.2e}")
    return worst


def time_steps(decoder: SlotDecoder, rows: int, width: int, steps: int) -> tuple[float, float]:
    tokens, positions = step_inputs(rows, width)
    for _ in range(3):
        decoder.decode(tokens, positions)
    cpu, wall = time.thread_time(), time.perf_counter()
    for _ in range(steps):
        decoder.decode(tokens, positions)
    return (time.thread_time() - cpu) / steps * 1e3, (time.perf_counter() - wall) / steps * 1e3


def prefill_ids(model: Any, tiles: int = 8) -> list[int]:
    """A prompt shaped like bench.engine's: text, ``tiles`` tiles of image tokens, text."""
    config = model.config
    vision = config.vision_config
    size = vision.image_size if isinstance(vision.image_size, int) else vision.image_size[0]
    patch = vision.patch_size if isinstance(vision.patch_size, int) else vision.patch_size[0]
    per_tile = int((size // patch) ** 2 * config.downsample_ratio**2)
    return [100] * 150 + [int(config.image_token_id)] * (per_tile * tiles) + [101] * 300


def prefill_pixels(tiles: int = 8) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (tiles, 3, 448, 448), dtype=torch.uint8, generator=generator)


def _prefill_forever(decoder: SlotDecoder, stop: Any, done: Any) -> None:
    ids, pixels = prefill_ids(decoder.model), prefill_pixels()
    staging = PixelStaging(decoder.device)
    with torch.no_grad():
        while not stop.is_set():
            decoder.prefill_detached(ids, pixels, staging)
            with done.get_lock():
                done.value += 1


def _prefill_process(model_name: str, torch_threads: int, stop: Any, done: Any) -> None:
    apply_torch_threads(torch_threads)
    decoder = SlotDecoder(load(model_name), 1, device="cpu", dtype=torch.float32)
    _prefill_forever(decoder, stop, done)


def contention(args: argparse.Namespace, decoder: SlotDecoder) -> list[list[str]]:
    """The step alone, beside a prefill thread, beside a prefill process."""
    rows = max(args.rows)
    steps = args.steps * 2
    body: list[list[str]] = []
    alone = min(time_steps(decoder, rows, args.width, steps) for _ in range(args.repeats))
    body.append(["alone", fmt(alone[0], 3), fmt(alone[1], 3), "1.00x", "-"])
    spawn = multiprocessing.get_context("spawn")
    for where in ("thread", "process"):
        stop, done = spawn.Event(), spawn.Value("l", 0)
        worker: threading.Thread | Any
        if where == "thread":
            worker = threading.Thread(target=_prefill_forever, args=(decoder, stop, done))
        else:
            worker = spawn.Process(
                target=_prefill_process, args=(args.model, args.torch_threads, stop, done)
            )
        worker.start()
        while done.value < 2:  # loaded and past its first (slow) prefill
            if not worker.is_alive():
                raise RuntimeError(f"the prefill {where} ended before its first prefills")
            time.sleep(0.05)
        first, started = done.value, time.perf_counter()
        with torch.no_grad():
            best = min(time_steps(decoder, rows, args.width, steps) for _ in range(args.repeats))
        rate = (done.value - first) / (time.perf_counter() - started)
        stop.set()
        worker.join()
        body.append(
            [
                f"beside a prefill {where}",
                fmt(best[0], 3),
                fmt(best[1], 3),
                f"{ratio(best[1], alone[1]):.2f}x",
                fmt(rate, 1),
            ]
        )
    return body


def run(args: argparse.Namespace) -> list[Timing]:
    apply_torch_threads(args.torch_threads)
    print(f"machine: {machine()}")
    model = load(args.model)
    found = decoders(model, max(args.rows), args.width, args.compile)
    worst = check_agreement(found, max(args.rows), args.width)
    print(
        f"model {args.model}, cache width {args.width}, {args.steps} steps x "
        f"{args.repeats} interleaved repetitions per cell, torch threads "
        f"{torch.get_num_threads()}; the variants' logits agree within {worst:.1e}",
        flush=True,
    )
    best: dict[tuple[str, int], tuple[float, float]] = {}
    with torch.no_grad():
        for _ in range(args.repeats):
            for rows in args.rows:
                for name, decoder in found.items():
                    cpu, wall = time_steps(decoder, rows, args.width, args.steps)
                    old = best.get((name, rows))
                    best[(name, rows)] = (
                        (cpu, wall) if old is None else (min(old[0], cpu), min(old[1], wall))
                    )
    timings = [Timing(n, r, *best[(n, r)]) for r in args.rows for n in found]
    body = []
    for t in timings:
        base = best[("modules", t.rows)][0]
        body.append(
            [
                str(t.rows),
                t.variant,
                fmt(t.cpu_ms, 3),
                fmt(t.wall_ms, 3),
                "1.00x" if t.variant == "modules" else f"{ratio(t.cpu_ms, base):.2f}x",
            ]
        )
    print()
    print(table(["rows", "step", "CPU ms/step", "wall ms/step", "CPU vs modules"], body))
    if args.with_prefill:
        print(f"\nFused step, {max(args.rows)} rows, beside 8-tile prefills run back to back:\n")
        print(
            table(
                ["step runs", "CPU ms/step", "wall ms/step", "wall vs alone", "prefills/s"],
                contention(args, found["fused"]),
            )
        )
    return timings


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argument_parser("decode_step", __doc__)
    p.add_argument("--model", choices=("demo", "full_size"), default="demo")
    p.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument(
        "--width",
        type=int,
        default=1792,
        help="cache positions read per step (bench.engine's prompt is 1,660 tokens with its 8 "
        "tiles, and a row reads up to 256 more as it generates)",
    )
    p.add_argument("--steps", type=int, default=200, help="steps per timed cell")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repetitions")
    p.add_argument(
        "--compile", action="store_true", help="add the fused step compiled (TORCH_COMPILE)"
    )
    p.add_argument(
        "--with-prefill",
        action="store_true",
        help="also time the step beside a prefill thread and beside a prefill process",
    )
    add_torch_threads_flag(p)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[Timing]:
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
