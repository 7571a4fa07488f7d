"""Admission beside the servicer: a bounded number of inspections in progress."""

from __future__ import annotations

import pytest

from inference_svc.domain.errors import ErrorKind, InspectionError, Reason, Stage
from inference_svc.grpc_api.admission import Admission, refuse_unless_serving


def test_slots_up_to_the_limit_then_overloaded() -> None:
    admission = Admission(limit=2)
    changes: list[int] = []
    rejects: list[str] = []
    admission.on_change(changes.append)
    admission.on_reject(rejects.append)
    with admission.slot(), admission.slot():
        assert admission.inflight == 2
        with pytest.raises(InspectionError) as err, admission.slot():
            pass
        assert (err.value.kind, err.value.reason, err.value.stage) == (
            ErrorKind.RESOURCE_EXHAUSTED,
            Reason.OVERLOADED,
            Stage.ADMIT,
        )
        assert err.value.retry_after_seconds == 1.0
    assert admission.inflight == 0
    assert changes == [1, 2, 1, 0]
    assert rejects == ["OVERLOADED"]


def test_a_failing_inspection_gives_its_slot_back() -> None:
    admission = Admission(limit=1)
    with pytest.raises(RuntimeError), admission.slot():
        raise RuntimeError("inspection failed")
    assert admission.inflight == 0
    with admission.slot():
        assert admission.inflight == 1


def test_a_replica_that_is_not_serving_refuses_with_retry_elsewhere() -> None:
    refuse_unless_serving(True)
    with pytest.raises(InspectionError) as err:
        refuse_unless_serving(False)
    assert (err.value.kind, err.value.reason, err.value.stage) == (
        ErrorKind.UNAVAILABLE,
        Reason.MODEL_NOT_READY,
        Stage.ADMIT,
    )
