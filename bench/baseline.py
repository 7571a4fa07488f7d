"""Benchmark engines: the seed-style baseline and fixed-length rows.

``SequentialEngine`` is the replaced service's method (one ``generate`` call per request, one at
a time) on the same model code path, for like-for-like comparisons. ``ForcedLength`` builds an
engine whose rows all run to their max_new_tokens (unless a grammar ends them): benchmarks
compare throughput at one fixed output length. It is a picklable factory, so it also builds the
engine inside an engine process (``ProcessEngine(engine_factory=...)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from inference_svc.engine.api import Engine
from inference_svc.engine.batched import BatchedEngine, load_configured_model
from inference_svc.engine.config import EngineConfig
from inference_svc.engine.continuous import ContinuousEngine
from inference_svc.engine.process_client import ProcessEngine

from .full_size import load_full_size

EngineKind = Literal["local", "batched", "sequential"]
ModelChoice = Literal["demo", "full_size"]


class SequentialEngine(BatchedEngine):
    """Implements :class:`inference_svc.engine.api.Engine` the seed's way: batches of one."""

    def __init__(self, config: EngineConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self._max_batch = 1
        self._wait_s = 0.0


@dataclass(frozen=True)
class ForcedLength:
    """An engine factory: ``kind`` (the service's local engine, request-level batching only,
    or the sequential baseline) on ``model``, with min == max new tokens when ``forced``."""

    kind: EngineKind = "local"
    model: ModelChoice = "demo"
    forced: bool = True

    def __call__(self, config: EngineConfig) -> BatchedEngine:
        loader = load_full_size if self.model == "full_size" else load_configured_model
        cls: type[BatchedEngine] = {
            "local": ContinuousEngine,
            "batched": BatchedEngine,
            "sequential": SequentialEngine,
        }[self.kind]
        return cls(config, forced_length=self.forced, model_loader=loader)


def bench_engine(factory: ForcedLength, config: EngineConfig, log_level: str = "ERROR") -> Engine:
    """The factory's engine, in its own process when the configuration says so."""
    if config.engine_process:
        return ProcessEngine(config, log_level=log_level, engine_factory=factory)
    return factory(config)
