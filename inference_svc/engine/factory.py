"""The engine for a configuration (one place that knows every engine class)."""

from __future__ import annotations

from .batched import BatchedEngine, SequentialEngine
from .config import EngineConfig
from .continuous import ContinuousEngine
from .process import ProcessEngine


def create_engine(
    config: EngineConfig, *, log_level: str = "INFO"
) -> BatchedEngine | ProcessEngine:
    if config.engine_process:
        return ProcessEngine(config, log_level=log_level)
    if config.engine_mode == "sequential":
        return SequentialEngine(config)
    if config.engine_mode == "continuous":
        return ContinuousEngine(config)
    return BatchedEngine(config)
