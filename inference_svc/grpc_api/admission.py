"""Admission, decided before any work: is this replica serving, and how many inspections may
be in progress at once. Beyond the bound callers get OVERLOADED at once rather than a queue
they cannot see."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from inference_svc.domain.errors import ErrorKind, InspectionError, Reason, Stage


def refuse_unless_serving(serving: bool, draining: bool = False) -> None:
    if draining:
        # Shutting down: health still answers (readiness NOT_SERVING) for the pre-stop period,
        # so callers see a clear, retryable refusal rather than a closed port.
        raise InspectionError(
            ErrorKind.UNAVAILABLE,
            Reason.DRAINING,
            "the replica is shutting down; retry another replica",
            stage=Stage.ADMIT,
            retry_after_seconds=1.0,
        )
    if not serving:
        raise InspectionError(
            ErrorKind.UNAVAILABLE,
            Reason.MODEL_NOT_READY,
            "the service is not serving (model loading or draining); retry another replica",
            stage=Stage.ADMIT,
            retry_after_seconds=1.0,
        )


@dataclass
class Admission:
    limit: int
    # Requests the engine holds at once (running rows plus its queue). Every inspection in
    # progress needs one engine place at a time, so beyond this many the engine would refuse
    # it, but only after its images were fetched and decoded: refused here instead, at once.
    engine_capacity: int | None = None
    inflight: int = 0
    _listeners: list[Callable[[int], None]] = field(default_factory=list)
    _reject_listeners: list[Callable[[str], None]] = field(default_factory=list)
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._idle.set()

    def on_change(self, callback: Callable[[int], None]) -> None:
        self._listeners.append(callback)

    def on_reject(self, callback: Callable[[str], None]) -> None:
        self._reject_listeners.append(callback)

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        if self.inflight >= self.limit:
            self._refuse(
                f"{self.inflight} inspections in progress (limit {self.limit}); retry with backoff"
            )
        if self.engine_capacity is not None and self.inflight >= self.engine_capacity:
            self._refuse(
                f"the model's queue is full ({self.engine_capacity} requests); retry with backoff"
            )
        self.inflight += 1
        self._idle.clear()
        self._notify()
        try:
            yield
        finally:
            self.inflight -= 1
            if self.inflight == 0:
                self._idle.set()
            self._notify()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Waits until no inspection is in progress, at most ``timeout_s``; True if none is."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def _refuse(self, message: str) -> None:
        for cb in self._reject_listeners:
            cb(Reason.OVERLOADED.value)
        raise InspectionError(
            ErrorKind.RESOURCE_EXHAUSTED,
            Reason.OVERLOADED,
            message,
            stage=Stage.ADMIT,
            retry_after_seconds=1.0,
        )

    def _notify(self) -> None:
        for cb in self._listeners:
            cb(self.inflight)
