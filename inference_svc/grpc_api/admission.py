"""Admission, decided before any work: is this replica serving, and how many inspections may
be in progress at once. Beyond the bound callers get OVERLOADED at once rather than a queue
they cannot see."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from inference_svc.domain.errors import ErrorKind, InspectionError, Reason, Stage


def refuse_unless_serving(serving: bool) -> None:
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
    inflight: int = 0
    _listeners: list[Callable[[int], None]] = field(default_factory=list)
    _reject_listeners: list[Callable[[str], None]] = field(default_factory=list)

    def on_change(self, callback: Callable[[int], None]) -> None:
        self._listeners.append(callback)

    def on_reject(self, callback: Callable[[str], None]) -> None:
        self._reject_listeners.append(callback)

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        if self.inflight >= self.limit:
            for cb in self._reject_listeners:
                cb(Reason.OVERLOADED.value)
            raise InspectionError(
                ErrorKind.RESOURCE_EXHAUSTED,
                Reason.OVERLOADED,
                f"{self.inflight} inspections in progress (limit {self.limit}); retry with backoff",
                stage=Stage.ADMIT,
                retry_after_seconds=1.0,
            )
        self.inflight += 1
        self._notify()
        try:
            yield
        finally:
            self.inflight -= 1
            self._notify()

    def _notify(self) -> None:
        for cb in self._listeners:
            cb(self.inflight)
