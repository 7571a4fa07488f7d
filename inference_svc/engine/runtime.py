"""The engine for a configuration: the one constructor the service uses."""

from __future__ import annotations

from .api import Engine
from .config import EngineConfig
from .local import LocalEngine
from .process_client import ProcessEngine


def create_engine(config: EngineConfig, *, log_level: str = "INFO") -> Engine:
    """ENGINE_PROCESS: the engine in a child process; else in this one. The runner (slotted
    KV cache, or HF generate for models the slot decoder cannot drive) follows the model."""
    if config.engine_process:
        return ProcessEngine(config, log_level=log_level)
    return LocalEngine(config)
