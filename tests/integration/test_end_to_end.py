"""A request goes in through gRPC, runs the real InternVL code path (small random model), comes
back as an inspection, and is recorded in Postgres by the persistence service."""

from __future__ import annotations

import uuid

import asyncpg
import grpc
import pytest
from rpi.inspection.v1 import inspection_pb2 as pb
from rpi.inspection.v1 import inspection_pb2_grpc as pb_grpc
from rpi.persistence.v1 import persistence_pb2 as ppb
from rpi.persistence.v1 import persistence_pb2_grpc as ppb_grpc

from inference_svc.app import InferenceApp
from tests.support.e2e import QUESTIONS, ImageServer, make_request, wait_for_record
from tests.support.errors import details


async def test_inspect_unary_returns_full_inspection_and_records_it(
    inspection_stub: pb_grpc.InspectionServiceStub,
    persistence_stub: ppb_grpc.PersistenceServiceStub,
    image_server: ImageServer,
    db: asyncpg.Connection,
) -> None:
    inspection_id = str(uuid.uuid4())
    reply = await inspection_stub.Inspect(
        make_request(image_server, inspection_id=inspection_id), timeout=120
    )
    inspection = reply.inspection
    assert inspection.inspection_id == inspection_id
    assert inspection.shipping_id == "SHIP-IT-1"
    assert inspection.product_id == "SKU-1"
    assert inspection.decision in (pb.DECISION_PICK, pb.DECISION_NOT_PICK)
    assert inspection.model_recommendation != pb.RECOMMENDATION_UNSPECIFIED
    # Constrained decoding: every question is answered by the model, in order.
    assert [a.label for a in inspection.answers] == [q.label for q in QUESTIONS]
    assert all(a.source == pb.ANSWER_SOURCE_MODEL for a in inspection.answers)
    assert all(0 <= a.confidence <= 100 for a in inspection.answers)
    if inspection.decision == pb.DECISION_PICK:
        assert [a.answer for a in inspection.answers] == [q.value_to_check for q in QUESTIONS]
    assert inspection.attempts == 1
    assert inspection.model.untrained is True
    assert inspection.model.prompt_template_version
    assert inspection.model.load_path == "native"  # the demo model
    assert inspection.timings.total.ToNanoseconds() > 0
    assert inspection.timings.generate.ToNanoseconds() > 0
    assert inspection.create_time.seconds > 0

    record = await wait_for_record(persistence_stub, inspection_id, ppb.INSPECTION_STATUS_COMPLETED)
    assert record.result.decision == inspection.decision
    assert [a.label for a in record.result.answers] == [q.label for q in QUESTIONS]
    assert len(record.attempts) == 1 and record.attempts[0].valid
    assert record.attempts[0].constrained
    assert record.attempts[0].prompt_sha256 and record.attempts[0].template_sha256
    images = sorted(record.request.images, key=lambda i: (i.role, i.index))
    assert [(i.role, i.index, i.inline) for i in images] == [
        (ppb.IMAGE_ROLE_REFERENCE, 0, False),
        (ppb.IMAGE_ROLE_PICKUP, 0, False),
        (ppb.IMAGE_ROLE_PICKUP, 1, True),
    ]
    assert all(len(i.sha256) == 64 and i.size_bytes > 0 for i in images)
    assert images[1].sha256 == images[2].sha256  # same bytes by URL and inline

    # The rows themselves: no image bytes stored, one result, one attempt.
    row = await db.fetchrow(
        "SELECT status, is_latest, images::text AS images FROM inspection_requests "
        "WHERE inspection_id = $1",
        uuid.UUID(inspection_id),
    )
    assert row is not None and row["status"] == "completed" and row["is_latest"] is True
    assert "content" not in row["images"]
    assert (
        await db.fetchval(
            "SELECT count(*) FROM inspection_results WHERE inspection_id = $1",
            uuid.UUID(inspection_id),
        )
        == 1
    )
    assert (
        await db.fetchval(
            "SELECT count(*) FROM inspection_attempts WHERE inspection_id = $1",
            uuid.UUID(inspection_id),
        )
        == 1
    )


async def test_inspect_stream_event_order(
    inference_app: InferenceApp,
    inspection_stub: pb_grpc.InspectionServiceStub,
    persistence_stub: ppb_grpc.PersistenceServiceStub,
    image_server: ImageServer,
) -> None:
    kinds: list[str] = []
    messages: list[pb.InspectStreamResponse] = []
    async for message in inspection_stub.InspectStream(make_request(image_server), timeout=120):
        kinds.append(message.WhichOneof("event"))
        messages.append(message)
    assert kinds[0] == "accepted"
    assert kinds[-1] == "inspection"
    assert kinds.count("inspection") == 1
    order = [
        "accepted",
        "images_fetched",
        "preprocessing_done",
        "queued",
        "generation_progress",
        "inspection",
    ]
    firsts = [kinds.index(k) for k in order]
    assert firsts == sorted(firsts), kinds
    done = next(
        m.preprocessing_done for m in messages if m.WhichOneof("event") == "preprocessing_done"
    )
    # One tile each: a 4:3 image is closer to the 1x1 grid than to 2x1 (max 2 for pickups).
    assert done.tiles == 3
    # Image tokens per tile (64 for the demo model, 256 for InternVL2.5-1B), plus the text.
    assert done.prompt_tokens > done.tiles * inference_app.engine.loaded.tokens_per_tile
    fetched = [m.images_fetched for m in messages if m.WhichOneof("event") == "images_fetched"]
    assert [f.fetched for f in fetched] == [1, 2, 3] and all(f.total == 3 for f in fetched)
    progress = [
        m.generation_progress.tokens_generated
        for m in messages
        if m.WhichOneof("event") == "generation_progress"
    ]
    assert progress == sorted(progress) and progress[-1] > 0
    # Each answer streamed before the final message, in question order.
    answered = [m.answer_ready.label for m in messages if m.WhichOneof("event") == "answer_ready"]
    assert answered == [q.label for q in QUESTIONS]
    last_answer = max(i for i, k in enumerate(kinds) if k == "answer_ready")
    assert last_answer < len(kinds) - 1
    inspection = messages[-1].inspection
    assert messages[0].accepted.inspection_id == inspection.inspection_id
    await wait_for_record(
        persistence_stub, inspection.inspection_id, ppb.INSPECTION_STATUS_COMPLETED
    )


async def test_invalid_request_returns_field_violations(
    inspection_stub: pb_grpc.InspectionServiceStub, image_server: ImageServer
) -> None:
    request = make_request(image_server, shipping_id="", reference_images=[])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await inspection_stub.Inspect(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, fields = details(err.value)
    assert info.reason == "INVALID_ARGUMENT"
    assert {"shipping_id", "reference_images"} <= set(fields)


async def test_fetch_failure_is_reported_and_recorded(
    inspection_stub: pb_grpc.InspectionServiceStub,
    persistence_stub: ppb_grpc.PersistenceServiceStub,
    image_server: ImageServer,
) -> None:
    inspection_id = str(uuid.uuid4())
    request = make_request(
        image_server,
        inspection_id=inspection_id,
        pickup_images=[pb.Image(uri=image_server.url("missing.jpg"))],
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await inspection_stub.Inspect(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, fields = details(err.value)
    assert info.reason == "IMAGE_FETCH_FAILED"
    assert fields == ["pickup_images[0]"]
    record = await wait_for_record(persistence_stub, inspection_id, ppb.INSPECTION_STATUS_FAILED)
    assert record.failure.reason == "IMAGE_FETCH_FAILED"
    assert record.failure.stage == "fetch"


async def test_legacy_question_string_and_previous_inspection_chain(
    inspection_stub: pb_grpc.InspectionServiceStub,
    persistence_stub: ppb_grpc.PersistenceServiceStub,
    image_server: ImageServer,
) -> None:
    first = await inspection_stub.Inspect(make_request(image_server), timeout=120)
    legacy = (
        "{'Question': [{'Type': 'Colour', 'Label': 'Is the colour red?', "
        "'ValueToCheck': 'Yes', 'IsMandatory': 'Yes'}]}"
    )
    second = await inspection_stub.Inspect(
        make_request(
            image_server,
            questions=[],
            legacy_questions_json=legacy,
            previous_inspection_id=first.inspection.inspection_id,
        ),
        timeout=120,
    )
    assert [a.label for a in second.inspection.answers] == ["Is the colour red?"]
    newer = await wait_for_record(
        persistence_stub, second.inspection.inspection_id, ppb.INSPECTION_STATUS_COMPLETED
    )
    assert newer.is_latest and newer.request.legacy_questions
    older = await wait_for_record(
        persistence_stub, first.inspection.inspection_id, ppb.INSPECTION_STATUS_COMPLETED
    )
    assert not older.is_latest


async def test_health_serving_and_reflection_lists_services(inference_app: InferenceApp) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{inference_app.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "rpi.inspection.v1.InspectionService", "liveness"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        names: list[str] = []
        async for response in stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        ):
            names = [s.name for s in response.list_services_response.service]
        assert "rpi.inspection.v1.InspectionService" in names
        assert "grpc.health.v1.Health" in names
