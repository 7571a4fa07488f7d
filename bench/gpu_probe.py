"""In-process measurements for ``bench.gpu_check``: the model on the device, then the
continuous engine with constrained decoding. Each prints Markdown table rows.

    .venv/bin/python -m bench.gpu_probe model --attn sdpa          # full size, bf16, CUDA
    .venv/bin/python -m bench.gpu_probe engine --rows 15
    .venv/bin/python -m bench.gpu_probe model --dry-run            # demo model on CPU

``model``: InternVL2.5-1B's shapes with random weights (``bench.full_size``) in bf16 with the
given attention; times the vision tower on one tile, the prefill of a production-shaped prompt
(8 tiles, about 2,300 tokens) and the continuous engine's decode step at 1 and 15 rows.
``engine``: the local engine (slot runner, constrained decoding to the schema's end) serving
``--rows`` concurrent requests. Both report torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from bench.common import MODEL_CACHE, argument_parser
from bench.full_size import build_full_size_model, load_full_size
from inference_svc.engine.api import GenerationRequest, NullListener
from inference_svc.engine.config import EngineConfig
from inference_svc.engine.devices import detect_runtime
from inference_svc.engine.local import LocalEngine, load_configured_model
from inference_svc.engine.slot_decoder import SlotDecoder

SCHEMA = {
    "type": "object",
    "properties": {
        "answers": {
            "type": "array",
            "items": {"type": "string", "maxLength": 24},
            "minItems": 3,
            "maxItems": 3,
        },
        "ok": {"type": "boolean"},
    },
    "required": ["answers", "ok"],
    "additionalProperties": False,
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device, repeats: int = 3) -> float:
    """Milliseconds of ``fn``, the best of ``repeats`` after one untimed call."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - started)
    return best * 1000


def memory_row(label: str) -> str:
    if not torch.cuda.is_available():
        return f"| {label} | GPU memory | - (CPU) |"
    peak = torch.cuda.max_memory_allocated() / 2**30
    return f"| {label} | GPU memory, max allocated | {peak:.2f} GiB |"


@torch.no_grad()
def probe_model(attn: str, dry_run: bool) -> list[str]:
    if dry_run:
        torch.set_num_threads(1)  # 2-thread regions stall on a shared CPU (BENCHMARKS.md)
    runtime = detect_runtime("cpu" if dry_run else "auto", "auto", attn)
    device = torch.device(runtime.device)
    if dry_run:
        loaded = load_configured_model(EngineConfig(model_cache_dir=MODEL_CACHE), runtime)
        model, tokenizer, label = loaded.model, loaded.tokenizer, "demo model"
    else:
        model, tokenizer = build_full_size_model(
            device=device, dtype=runtime.dtype, attn_implementation=runtime.attn_implementation
        )
        label = "full size"
    label = f"{label}, {str(runtime.dtype).removeprefix('torch.')}, {runtime.attn_implementation}"
    configured = model.config.vision_config.image_size
    size = int(configured[0] if isinstance(configured, list | tuple) else configured)
    tile = torch.randn(1, 3, size, size, device=device, dtype=runtime.dtype)
    eight = tile.repeat(8, 1, 1, 1)
    per_tile = int(model.config.image_seq_length)
    image_id = int(model.config.image_token_id)
    text = tokenizer("Inspect the product. " * 40, add_special_tokens=False)["input_ids"]
    ids = [image_id] * (8 * per_tile) + list(text)
    decoder = SlotDecoder(model, 15, device=str(device), dtype=runtime.dtype)

    def prefill() -> object:
        return decoder.prefill_detached(ids, eight)

    vision_ms = _timed(lambda: model.model.get_image_features(pixel_values=tile), device)
    prefill_ms = _timed(prefill, device)
    for slot in range(15):
        decoder.install(slot, decoder.prefill_detached(ids, eight))
    width = len(ids)
    decoder.reserve(width + 16)
    step: dict[int, float] = {}
    for rows in (1, 15):
        tokens, positions = [5] * rows, [width] * rows
        step[rows] = _timed(lambda: decoder.decode(tokens, positions), device)  # noqa: B023
    return [
        f"| {label} | vision tower + projector, 1 tile | {vision_ms:.1f} ms |",
        f"| {label} | prefill, 8 tiles + text ({len(ids)} tokens) | {prefill_ms:.1f} ms |",
        f"| {label} | decode step, 1 row at {width} | {step[1]:.2f} ms |",
        f"| {label} | decode step, 15 rows at {width} | {step[15]:.2f} ms |",
        memory_row(label),
    ]


async def probe_engine(rows: int, tokens: int, dry_run: bool) -> list[str]:
    config = EngineConfig(
        model_cache_dir=Path(MODEL_CACHE),
        device="cpu" if dry_run else "auto",
        max_batch_size=max(rows, 1),
        max_new_tokens=tokens,
        engine_process=False,
    )
    loader = load_configured_model if dry_run else load_full_size
    engine = LocalEngine(config, model_loader=loader)
    await engine.start()
    try:
        size = engine.loaded.image_size
        rng = np.random.default_rng(0)
        requests = [
            GenerationRequest(
                request_id=f"probe-{i}",
                prompt="Reference: <image>\nPickup: <image>\nAnswer the three questions.",
                pixel_values=rng.integers(0, 256, (3, 3, size, size), dtype=np.uint8),
                tiles_per_image=(1, 2),
                max_new_tokens=tokens,
                json_schema=SCHEMA,
            )
            for i in range(rows)
        ]
        started = time.perf_counter()
        results = await asyncio.gather(*(engine.generate(r, NullListener()) for r in requests))
        wall = time.perf_counter() - started
    finally:
        await engine.stop()
    generated = sum(r.completion_tokens for r in results)
    complete = sum(1 for r in results if r.schema_complete)
    label = f"continuous engine, {'demo' if dry_run else 'full size'}, {rows} rows, constrained"
    return [
        f"| {label} | wall for {rows} requests | {wall:.2f} s |",
        f"| {label} | generated tokens/s | {generated / wall:.0f} |",
        f"| {label} | outputs complete per the schema | {complete}/{rows} |",
        f"| {label} | mean batch | {results[0].batch_size} |",
        memory_row(label),
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argument_parser("gpu_probe", __doc__)
    p.add_argument("what", choices=["model", "engine"])
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "flash_attention_2", "eager"])
    p.add_argument("--rows", type=int, default=15)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--dry-run", action="store_true", help="the demo model on CPU")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[str]:
    args = parse_args(argv)
    if args.what == "model":
        rows = probe_model(args.attn, args.dry_run)
    else:
        rows = asyncio.run(probe_engine(args.rows, args.tokens, args.dry_run))
    print("\n".join(rows), flush=True)
    return rows


if __name__ == "__main__":
    main()
