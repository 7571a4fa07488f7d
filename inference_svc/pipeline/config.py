"""Pipeline settings, taken from InferenceSettings by the composition root."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PipelineConfig:
    reference_max_tiles: int = 1
    pickup_max_tiles: int = 2
    max_new_tokens: int = 2000
    max_output_retries: int = 1
    # Stream a GenerationProgress at most every this many tokens.
    progress_every_tokens: int = 8
