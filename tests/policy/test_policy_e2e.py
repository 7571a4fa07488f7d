"""The decision policy end to end: both services on loopback, the real InternVL code path (the
small random demo model), a policy file with three vendors. The quality gate in enforce mode
answers RETAKE_IMAGES with no generation (the engine's token counters do not move); a photo
reused from another shipment's inspection, recorded in the persistence service, goes to
review naming that inspection."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from PIL import Image, ImageFilter
from rpi.inspection.v1 import inspection_pb2 as pb
from rpi.inspection.v1 import inspection_pb2_grpc as pb_grpc
from rpi.persistence.v1 import persistence_pb2 as ppb
from rpi.persistence.v1 import persistence_pb2_grpc as ppb_grpc

from inference_svc.app import InferenceApp
from persistence_svc.app import PersistenceApp
from tests.support.e2e import QUESTIONS, inference_settings, wait_for_record
from tests.support.imaging import textured

POLICY = """
schema: 1
version: e2e-1
vendors:
  strict:
    quality: {mode: enforce}
  watchful:
    fraud: {reused_photo: true, reused_lookup_timeout_s: 2.0}
"""


def jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


REFERENCE = jpeg(textured(896, 672, seed=21))
PICKUP = jpeg(textured(896, 672, seed=22))
BLURRED = jpeg(textured(896, 672, seed=23).filter(ImageFilter.GaussianBlur(4)))


def request(shipping_id: str, vendor_id: str, pickup: bytes) -> pb.InspectRequest:
    return pb.InspectRequest(
        shipping_id=shipping_id,
        product_name="ACME mug, red",
        reference_images=[pb.Image(content=REFERENCE)],
        pickup_images=[pb.Image(content=pickup)],
        questions=QUESTIONS,
        vendor_id=vendor_id,
    )


@pytest_asyncio.fixture(scope="module")
async def policy_app(
    persistence_app: PersistenceApp, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[InferenceApp]:
    tmp = tmp_path_factory.mktemp("policy-e2e")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    app = InferenceApp(inference_settings(tmp, persistence_app.target, policy_file=policy))
    await app.start()
    yield app
    await app.stop(5)


def tokens(app: InferenceApp) -> tuple[float, float]:
    def value(name: str) -> float:
        return app.registry.get_sample_value(name) or 0.0

    return value("rpi_inference_prompt_tokens_total"), value("rpi_inference_generated_tokens_total")


async def test_policy_outcomes_end_to_end(
    policy_app: InferenceApp, persistence_app: PersistenceApp, tmp_path: Path
) -> None:
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{policy_app.port}") as channel,
        grpc.aio.insecure_channel(persistence_app.target) as records_channel,
    ):
        stub = pb_grpc.InspectionServiceStub(channel)
        records = ppb_grpc.PersistenceServiceStub(records_channel)

        before = tokens(policy_app)
        engine_before = policy_app.engine.stats()
        retake = (await stub.Inspect(request("SHIP-P1", "strict", BLURRED), timeout=120)).inspection
        assert retake.decision == pb.DECISION_RETAKE_IMAGES
        # No generation ran: the engine's own counters and the token metrics did not move.
        engine_after = policy_app.engine.stats()
        assert (engine_after.rows, engine_after.tokens_generated, engine_after.prefills) == (
            engine_before.rows,
            engine_before.tokens_generated,
            engine_before.prefills,
        )
        assert tokens(policy_app) == before
        assert retake.attempts == 0
        (reason,) = retake.reasons
        assert (reason.code, reason.decisive, reason.image_role, reason.image_index) == (
            "IMAGE_BLURRY",
            True,
            pb.IMAGE_ROLE_PICKUP,
            0,
        )
        assert (retake.policy_version, retake.policy_name) == ("e2e-1", "strict")
        stored = await wait_for_record(
            records, retake.inspection_id, ppb.INSPECTION_STATUS_COMPLETED
        )
        assert stored.result.decision == pb.DECISION_RETAKE_IMAGES
        assert stored.request.vendor_id == "strict"

        # A sharp photo under the default policy: the model runs, its hash is recorded.
        first = (await stub.Inspect(request("SHIP-P2", "", PICKUP), timeout=120)).inspection
        assert first.decision in (pb.DECISION_PICK, pb.DECISION_NOT_PICK)
        assert tokens(policy_app)[1] > before[1]
        assert policy_app.engine.stats().rows == engine_before.rows + 1
        assert first.reasons[0].code in ("MODEL_RECOMMENDATION", "FORCED_PICK")
        assert first.policy_name == "default"
        assert all(c.HasField("perceptual_hash") for c in first.image_checks)
        recorded = await wait_for_record(
            records, first.inspection_id, ppb.INSPECTION_STATUS_COMPLETED
        )
        assert any(i.HasField("perceptual_hash") for i in recorded.request.images)

        # The same photo, another shipment, a vendor that checks: review, naming the first.
        again = (await stub.Inspect(request("SHIP-P3", "watchful", PICKUP), timeout=120)).inspection
        assert again.decision == pb.DECISION_NEEDS_REVIEW
        decisive = [r for r in again.reasons if r.decisive]
        assert [(r.code, r.related_inspection_id) for r in decisive] == [
            ("REUSED_PHOTO", first.inspection_id)
        ]

    outcomes = policy_app.registry.get_sample_value(
        "rpi_inference_policy_outcomes_total", {"vendor": "strict", "outcome": "RETAKE_IMAGES"}
    )
    assert outcomes == 1.0
