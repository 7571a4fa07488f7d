"""The inference service's recorder fills the new enum fields beside the old strings."""

from __future__ import annotations

from typing import cast

import pytest
from rpi.persistence.v1 import persistence_pb2 as ppb

from inference_svc.domain.errors import Stage
from inference_svc.events.delivery import EventDelivery
from inference_svc.events.recorder import SpoolingRecorder


class CapturingDelivery:
    """Keeps what would be spooled, so the events can be decoded."""

    def __init__(self) -> None:
        self.events: list[ppb.Event] = []

    def is_full(self) -> bool:
        return False

    async def append(self, items: list[tuple[str, bytes]]) -> None:
        self.events += [ppb.Event.FromString(data) for _, data in items]


@pytest.mark.parametrize("stage", list(Stage))
async def test_failure_carries_the_stage_enum_and_string(stage: Stage) -> None:
    delivery = CapturingDelivery()
    recorder = SpoolingRecorder(cast(EventDelivery, delivery))
    await recorder.failure("id-1", stage, "IMAGE_FETCH_FAILED", "boom", "INVALID_ARGUMENT")
    (event,) = delivery.events
    assert event.failure_recorded.stage == stage.value
    # Every stage the pipeline records has its own enum value on the wire.
    expected = ppb.FailureStage.Value(f"FAILURE_STAGE_{stage.name}")
    assert event.failure_recorded.failure_stage == expected
