"""Hooks the pipeline reports through (metrics, in production) and where a run stands."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from inference_svc.domain.errors import Stage
from inference_svc.domain.models import Inspection
from inference_svc.engine.api import GenerationResult


class PipelineObserver(Protocol):
    """Metrics hooks; every method must be cheap and must not raise."""

    def stage(self, name: str, seconds: float) -> None: ...

    def decision(self, decision: str) -> None: ...

    def output_retry(self) -> None: ...

    def fetch_error(self, reason: str) -> None: ...

    def generation(self, result: GenerationResult) -> None: ...

    def image_bytes(self, role: str, size: int) -> None: ...

    def rejected(self, reason: str) -> None: ...

    def policy_outcome(self, inspection: Inspection) -> None:
        """The outcome, reasons and image measures of a decided inspection (by policy name,
        a bounded set)."""


class NullObserver:
    def stage(self, name: str, seconds: float) -> None:
        pass

    def decision(self, decision: str) -> None:
        pass

    def output_retry(self) -> None:
        pass

    def fetch_error(self, reason: str) -> None:
        pass

    def generation(self, result: GenerationResult) -> None:
        pass

    def image_bytes(self, role: str, size: int) -> None:
        pass

    def rejected(self, reason: str) -> None:
        pass

    def policy_outcome(self, inspection: Inspection) -> None:
        pass


class StageTracker:
    """The stage a run is in, kept by the parts that do the work, so that a failure, a
    cancellation or the deadline is recorded against the stage it really interrupted."""

    def __init__(self, stage: Stage = Stage.VALIDATE) -> None:
        self.current = stage

    def enter(self, stage: Stage) -> None:
        self.current = stage


@contextmanager
def timed(observer: PipelineObserver, name: str) -> Iterator[None]:
    """Reports the seconds the block took as stage ``name`` (also when it raises)."""
    started = time.monotonic()
    try:
        yield
    finally:
        observer.stage(name, time.monotonic() - started)
