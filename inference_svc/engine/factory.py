"""The engine for a configuration (one place that knows every engine class)."""

from __future__ import annotations

from .batched import BatchedEngine, SequentialEngine
from .config import EngineConfig
from .continuous import ContinuousEngine


def create_engine(config: EngineConfig) -> BatchedEngine:
    if config.engine_mode == "sequential":
        return SequentialEngine(config)
    if config.engine_mode == "continuous":
        return ContinuousEngine(config)
    return BatchedEngine(config)
