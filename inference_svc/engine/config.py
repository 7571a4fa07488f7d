"""The engine's own configuration (the service maps its settings onto it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from inference_svc.model_inputs import INTERNVL25_SYSTEM_MESSAGE


@dataclass(frozen=True)
class EngineConfig:
    # Checkpoint directory; None = build (once, cached) the small untrained demo model.
    model_path: Path | None = None
    model_layout: Literal["auto", "native", "original"] = "auto"
    model_cache_dir: Path = Path("var/models")
    model_revision: str = ""
    # Without model_path: "demo" (tiny, cached on disk) or "full_size" (InternVL2.5-1B shapes,
    # random weights, built in memory; for benchmarks).
    random_model: Literal["demo", "full_size"] = "demo"
    demo_config_path: Path | None = None
    # Run an original-layout checkpoint's own remote code instead of converting its weights.
    trust_remote_code: bool = False
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = "auto"
    torch_compile: bool = False
    # Upper bound on a request's max_new_tokens, and a floor for its min_new_tokens.
    max_new_tokens: int = 2000
    min_new_tokens: int = 0
    constrained_decoding: bool = True
    # continuous: rows join and leave between tokens (falls back to batched for models the
    # slot decoder cannot drive); batched: one generate per batch; sequential: the seed's way.
    engine_mode: Literal["continuous", "batched", "sequential"] = "continuous"
    # Run the engine in a child process (see process.py); in-process otherwise.
    engine_process: bool = False
    max_batch_size: int = 16
    batch_wait_ms: float = 10.0
    max_queue_size: int = 64
    system_message: str | None = INTERNVL25_SYSTEM_MESSAGE
    # Progress callbacks (and the text decode behind them) every this many tokens per row.
    progress_every_tokens: int = 8
    warmup: bool = True
    # KV cache of the native model: "static" (preallocated per batch), "dynamic" (grown by
    # concatenation), "auto" (static on CPU, dynamic elsewhere).
    kv_cache: Literal["auto", "dynamic", "static"] = "auto"
    # torch intra-op threads for the model; 0 leaves torch's default.
    torch_threads: int = 0
    # Continuous engine: run prefills on a second model thread while the first runs decode
    # steps ("auto": on CPU, where the two threads use two cores; off on CUDA, where both
    # would queue on one stream).
    prefill_overlap: Literal["auto", "on", "off"] = "auto"
    # Continuous engine: compute each step's grammar masks on a helper thread while the step
    # runs (they depend only on the tokens chosen before it); off = after the step.
    grammar_overlap: bool = True
    # Niceness the engine process adds to itself (bulk work yields to the server's event loop).
    process_nice: int = 0
    # ENGINE_PROCESS: shared memory for request tiles on their way to the engine process
    # (pixel_slabs.py), in MiB; 0 pickles them through the pipe.
    pixel_buffer_mb: int = 128
