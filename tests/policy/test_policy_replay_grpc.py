"""rpi-replay end to end: 200 inspections recorded in a real persistence service (PostgreSQL,
gRPC on loopback), read back over gRPC and decided again under a policy file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import grpc
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2
from policy_support import QUESTIONS, SEAL, item, output
from rpi.inspection.v1 import inspection_pb2
from rpi.persistence.v1 import persistence_pb2, persistence_pb2_grpc

from inference_svc.domain.decision import decide
from inference_svc.domain.models import Decision
from tests.support.persistence import running_persistence
from tests.support.postgres import PostgresForTests
from tools.replay import EXIT_CHANGED, main

EXACT = [item(q.label, q.value_to_check) for q in QUESTIONS]
AMBIGUOUS = [item(QUESTIONS[0].label, "Y"), *EXACT[1:]]
SEAL_BROKEN = [EXACT[0], item(SEAL.label, "No"), *EXACT[2:]]
CASES = [(EXACT, "Accept"), (AMBIGUOUS, "Reject"), (SEAL_BROKEN, "Accept"), (EXACT, "Partial")]
SHIPMENTS = [f"REPLAY-{n}" for n in range(4)]


def _events(index: int) -> list[persistence_pb2.Event]:
    inspection_id = str(uuid4())
    shipping_id = SHIPMENTS[index % len(SHIPMENTS)]
    results, recommendation = CASES[index % len(CASES)]
    model_output = output(results, recommendation)
    decided = decide(QUESTIONS, model_output).decision

    def event() -> persistence_pb2.Event:
        e = persistence_pb2.Event(event_id=str(uuid4()), inspection_id=inspection_id)
        e.occur_time.FromDatetime(datetime.now(UTC))
        return e

    request = event()
    request.request_received.CopyFrom(
        persistence_pb2.RequestReceived(
            shipping_id=shipping_id,
            questions=[
                inspection_pb2.Question(
                    type=q.type, label=q.label, value_to_check=q.value_to_check, mandatory=False
                )
                for q in QUESTIONS
            ],
            method="Inspect",
        )
    )
    attempt = event()
    parsed = struct_pb2.Struct()
    parsed.update(model_output)
    attempt.attempt_recorded.CopyFrom(
        persistence_pb2.AttemptRecorded(attempt_number=1, parsed_output=parsed, valid=True)
    )
    result = event()
    result.result_recorded.CopyFrom(
        persistence_pb2.ResultRecorded(
            inspection=inspection_pb2.Inspection(
                inspection_id=inspection_id,
                shipping_id=shipping_id,
                decision=inspection_pb2.DECISION_PICK
                if decided is Decision.PICK
                else inspection_pb2.DECISION_NOT_PICK,
            )
        )
    )
    return [request, attempt, result]


@pytest_asyncio.fixture
async def persistence(pg_server: PostgresForTests) -> AsyncIterator[str]:
    async with pg_server.fresh_database("rpi_replay_") as url, running_persistence(url) as app:
        async with grpc.aio.insecure_channel(app.target) as channel:
            stub = persistence_pb2_grpc.PersistenceServiceStub(channel)
            for first in range(0, 200, 20):
                events = [e for i in range(first, first + 20) for e in _events(i)]
                await stub.RecordEvents(persistence_pb2.RecordEventsRequest(events=events))
        yield app.target


async def test_replay_over_grpc_reports_the_expected_changes(
    persistence: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    unchanged = tmp_path / "same.yaml"
    unchanged.write_text("version: same-1\n")
    literal = tmp_path / "literal.yaml"
    literal.write_text("version: lit-2\ndefault: {comparison: literal}\n")
    seal = tmp_path / "seal.yaml"
    seal.write_text("version: seal-2\ndefault: {mandatory: {categories: [seal_verification]}}\n")
    target = ["--persistence-target", persistence]
    for shipping_id in SHIPMENTS:
        target += ["--shipping-id", shipping_id]

    assert (
        await asyncio.to_thread(main, ["--policy", str(unchanged), *target, "--fail-on-change"])
        == 0
    )
    assert "200 replayed, 0 would change" in capsys.readouterr().out

    # Case 1 (a "Y" for "Yes", model said Reject) is a forced Pick only under semantic rules.
    code = await asyncio.to_thread(main, ["--policy", str(literal), *target, "--fail-on-change"])
    printed = capsys.readouterr().out
    assert code == EXIT_CHANGED
    assert "200 replayed, 50 would change" in printed
    assert "PICK           NOT_PICK            50  *" in printed

    code = await asyncio.to_thread(main, ["--policy", str(seal), *target])
    printed = capsys.readouterr().out
    assert code == 0  # without --fail-on-change
    assert "200 replayed, 50 would change" in printed
    assert printed.count("MANDATORY_QUESTION_FAILED (question[1] 'Is the seal intact?')") == 50


async def test_replay_over_a_period(
    persistence: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    literal = tmp_path / "literal.yaml"
    literal.write_text("version: lit-3\ndefault: {comparison: literal}\n")
    base = ["--policy", str(literal), "--persistence-target", persistence, "--fail-on-change"]

    code = await asyncio.to_thread(main, [*base, "--since", "2000-01-01T00:00:00Z"])
    assert code == EXIT_CHANGED
    assert "200 replayed, 50 would change" in capsys.readouterr().out
    # A shipment named as well as the period: each inspection is replayed once.
    code = await asyncio.to_thread(
        main, [*base, "--since", "2000-01-01", "--shipping-id", SHIPMENTS[0]]
    )
    assert "200 replayed" in capsys.readouterr().out

    past = ["--since", "2000-01-01T00:00:00Z", "--until", "2001-01-01T00:00:00Z"]
    assert await asyncio.to_thread(main, [*base, *past]) == 0
    assert "0 replayed, 0 would change" in capsys.readouterr().out
    assert (
        await asyncio.to_thread(main, [*base, "--since", "2030-01-01", "--until", "2029-01-01"])
        == 2
    )
