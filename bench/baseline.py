"""Benchmark engines: the seed-style baseline and fixed-length rows.

``sequential_engine`` builds the replaced service's method (one ``generate`` call per request,
one at a time) on the same model code path, for like-for-like comparisons. ``ForcedLength`` builds
an engine whose rows all run to their max_new_tokens (unless a grammar ends them): benchmarks
compare throughput at one fixed output length. It is a picklable factory, so it also builds the
engine inside an engine process (``ProcessEngine(engine_factory=...)``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from inference_svc.engine.api import Engine
from inference_svc.engine.config import EngineConfig
from inference_svc.engine.local import LocalEngine, RunnerChoice, load_configured_model
from inference_svc.engine.process_client import ProcessEngine

from .full_size import load_full_size

EngineKind = Literal["local", "batched", "sequential"]
ModelChoice = Literal["demo", "full_size"]


def sequential_engine(config: EngineConfig, **kwargs: Any) -> LocalEngine:
    """An engine the seed's way: the generate runner, batches of one, no batching window."""
    one = dataclasses.replace(config, max_batch_size=1)
    return LocalEngine(one, runner="generate", batch_wait_s=0.0, **kwargs)


@dataclass(frozen=True)
class ForcedLength:
    """An engine factory: ``kind`` (the service's local engine, the generate runner only
    ("batched"), or the sequential baseline) on ``model``, with min == max new tokens when
    ``forced``."""

    kind: EngineKind = "local"
    model: ModelChoice = "demo"
    forced: bool = True

    def __call__(self, config: EngineConfig) -> LocalEngine:
        loader = load_full_size if self.model == "full_size" else load_configured_model
        if self.kind == "sequential":
            return sequential_engine(config, forced_length=self.forced, model_loader=loader)
        runner: RunnerChoice = "generate" if self.kind == "batched" else "auto"
        return LocalEngine(config, forced_length=self.forced, model_loader=loader, runner=runner)


def bench_engine(factory: ForcedLength, config: EngineConfig, log_level: str = "ERROR") -> Engine:
    """The factory's engine, in its own process when the configuration says so."""
    if config.engine_process:
        return ProcessEngine(config, log_level=log_level, engine_factory=factory)
    return factory(config)
