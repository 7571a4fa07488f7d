"""The servicer hands the pipeline one deadline and says why a call was cancelled."""

from __future__ import annotations

import time
from typing import Any

import pytest

from inference_svc.domain.errors import ErrorKind
from inference_svc.grpc_api import servicer


class _Context:
    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining


def _servicer(request_timeout_s: float) -> Any:
    return servicer.InspectionServicer(
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        request_timeout_s,
        lambda: True,
    )


@pytest.mark.parametrize(
    ("remaining", "cause"),
    [
        (None, ErrorKind.CANCELLED),  # no deadline: the client went away
        (12.0, ErrorKind.CANCELLED),
        (1.0, ErrorKind.CANCELLED),
        # The client's own deadline fired a moment before the server's: the deadline.
        (0.1, ErrorKind.DEADLINE_EXCEEDED),
        (0.0, ErrorKind.DEADLINE_EXCEEDED),
        (-0.2, ErrorKind.DEADLINE_EXCEEDED),
    ],
)
def test_cancel_cause_comes_from_the_calls_own_deadline(
    remaining: float | None, cause: ErrorKind
) -> None:
    assert servicer._cancel_cause(_Context(remaining)) is cause  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("remaining", "budget"), [(None, 30.0), (5.0, 5.0), (300.0, 30.0), (-1.0, 0.0)]
)
def test_deadline_is_the_callers_capped_by_the_request_timeout(
    remaining: float | None, budget: float
) -> None:
    before = time.monotonic()
    deadline = _servicer(30.0)._deadline(_Context(remaining))
    assert before + budget <= deadline <= time.monotonic() + budget
