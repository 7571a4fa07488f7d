"""The engine's own configuration.

Field names equal the service settings they come from (the service copies every shared
name), and shared defaults live in :mod:`inference_svc.defaults`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from inference_svc import defaults

from .api import EngineInfo

if TYPE_CHECKING:  # devices imports torch; the configuration does not need it
    from .devices import Runtime


@dataclass(frozen=True)
class EngineConfig:
    # Checkpoint directory; None = build (once, cached) the small untrained demo model.
    model_path: Path | None = None
    model_layout: Literal["auto", "native", "original"] = "auto"
    model_cache_dir: Path = Path("var/models")
    model_revision: str = ""
    demo_config_path: Path | None = None
    # Run an original-layout checkpoint's own remote code instead of converting its weights.
    model_trust_remote_code: bool = False
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = "auto"
    torch_compile: bool = False
    # Upper bound on a request's max_new_tokens.
    max_new_tokens: int = defaults.MAX_NEW_TOKENS
    constrained_decoding: bool = True
    # Run the engine in a child process (process_client.py); in-process otherwise.
    engine_process: bool = defaults.ENGINE_PROCESS
    max_batch_size: int = defaults.MAX_BATCH_SIZE
    max_queue_size: int = defaults.MAX_QUEUE_SIZE
    # Empty: no system message.
    system_message: str = defaults.INTERNVL25_SYSTEM_MESSAGE
    warmup: bool = True
    # torch intra-op threads for the model; 0 leaves torch's default.
    torch_threads: int = 0
    # Slot runner: run prefills on a second model thread while the first runs decode steps
    # ("auto": on CPU, where the two threads use two cores; off on CUDA, where both would
    # queue on one stream).
    prefill_overlap: Literal["auto", "on", "off"] = "auto"
    # Slot runner: compute each step's grammar masks on a helper thread while the step runs
    # (they depend only on the tokens chosen before it); off = after the step.
    grammar_overlap: bool = True
    # Niceness the engine process adds to itself (bulk work yields to the server's event loop).
    worker_nice: int = defaults.WORKER_NICE
    # ENGINE_PROCESS: shared memory for request tiles on their way to the engine process
    # (pixel_slabs.py), in MiB; 0 pickles them through the pipe.
    pixel_buffer_mb: int = defaults.PIXEL_BUFFER_MB
    # Vision-feature cache (vision_cache.py) bound in bytes; 0 turns it off.
    vision_cache_bytes: int = defaults.VISION_CACHE_BYTES


class _Model(Protocol):
    """What a loaded model (in this process, or in the engine process) tells about itself."""

    @property
    def name(self) -> str: ...
    @property
    def revision(self) -> str: ...
    @property
    def untrained(self) -> bool: ...
    @property
    def runtime(self) -> Runtime: ...
    @property
    def load_path(self) -> str: ...


def engine_info(
    config: EngineConfig, model: _Model | None, runner: str, max_batch_size: int
) -> EngineInfo:
    """The engine's runtime info: the loaded model's, else what the configuration asks for."""
    return EngineInfo(
        model_name=model.name if model else "",
        model_revision=model.revision if model else config.model_revision,
        untrained=model.untrained if model else config.model_path is None,
        constrained=config.constrained_decoding,
        streams_text=True,
        device=str(model.runtime.device) if model else config.device,
        dtype=str(model.runtime.dtype).removeprefix("torch.") if model else config.dtype,
        runner=runner if model else "",
        max_batch_size=max_batch_size,
        model_load_path=model.load_path if model else "",
        # The slot runner encodes images per request; the generate runner batches them into
        # generate() and keeps nothing.
        vision_cache=config.vision_cache_bytes > 0 and runner == "slot" and model is not None,
    )
