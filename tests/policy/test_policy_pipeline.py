"""The decision policy inside the pipeline: real intake (decode, tiling, hashes and quality on
the overview tile), the deterministic fake engine, a policy file per test. The quality gate in
enforce mode runs no generation; catalogue and reused photos go to review; a lookup that does
not answer in time is skipped, never failed."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image, ImageFilter

from inference_svc.domain.models import (
    Decision,
    ImageRole,
    ImageSource,
    InspectionRequest,
    ReasonCode,
)
from inference_svc.domain.outcome import ReuseMatch
from inference_svc.domain.policy import PolicyHolder
from inference_svc.domain.prompt import PromptTemplate
from inference_svc.imaging.tiling import prepare_image
from inference_svc.pipeline import InspectionPipeline, PipelineConfig
from tests.pipeline.fakes import QUESTIONS, VALID, FakeFetcher, MemoryRecorder
from tests.support.fake_engine import FakeEngine
from tests.support.imaging import encode, textured

PHOTO = textured(896, 672, seed=11)
OTHER = textured(896, 672, seed=12)


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    return encode(image, "JPEG", quality=quality)


def request(reference: bytes, pickups: Sequence[bytes], vendor_id: str = "") -> InspectionRequest:
    return InspectionRequest(
        inspection_id="insp-policy",
        shipping_id="SHIP-7",
        product_name="mug",
        reference_images=(ImageSource(ImageRole.REFERENCE, 0, content=reference),),
        pickup_images=tuple(
            ImageSource(ImageRole.PICKUP, i, content=data) for i, data in enumerate(pickups)
        ),
        questions=QUESTIONS,
        vendor_id=vendor_id,
    )


@dataclass
class ScriptedLookup:
    """The reused-photo lookup port, answering as a test scripts it."""

    matches: tuple[ReuseMatch, ...] = ()
    delay: float = 0.0
    fail: bool = False
    calls: list[tuple[str, list[tuple[int, int]], int]] = field(default_factory=list)

    async def find(
        self, shipping_id: str, hashes: Sequence[tuple[int, int]], max_distance: int
    ) -> tuple[ReuseMatch, ...]:
        self.calls.append((shipping_id, list(hashes), max_distance))
        await asyncio.sleep(self.delay)
        if self.fail:
            raise ConnectionError("persistence unreachable")
        return self.matches


@pytest.fixture(scope="module")
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


def pipeline(
    executor: ThreadPoolExecutor,
    engine: FakeEngine,
    recorder: MemoryRecorder,
    tmp_path: Path,
    policy_yaml: str | None = None,
    lookup: ScriptedLookup | None = None,
) -> InspectionPipeline:
    path = None
    if policy_yaml is not None:
        path = tmp_path / "policy.yaml"
        path.write_text(policy_yaml)
    return InspectionPipeline(
        fetcher=FakeFetcher(),
        prepare=functools.partial(prepare_image, max_pixels=64_000_000),
        engine=engine,
        template=PromptTemplate.load(),
        recorder=recorder,
        executor=executor,
        config=PipelineConfig(),
        policies=PolicyHolder.open(path),
        reuse_lookup=lookup,
    )


async def test_default_policy_decides_as_before_and_reports_hashes(
    executor: ThreadPoolExecutor, tmp_path: Path
) -> None:
    recorder = MemoryRecorder()
    engine = FakeEngine([VALID])
    run = pipeline(executor, engine, recorder, tmp_path)
    inspection = await run.run(request(jpeg(PHOTO), [jpeg(OTHER)]), "Inspect", lambda e: None)
    assert inspection.decision is Decision.PICK
    assert [(r.code, r.decisive) for r in inspection.reasons] == [
        (ReasonCode.MODEL_RECOMMENDATION, True)
    ]
    assert (inspection.policy_name, inspection.policy_version) == ("default", "builtin")
    assert [(s.image.role, s.image.index) for s in inspection.images] == [
        (ImageRole.REFERENCE, 0),
        (ImageRole.PICKUP, 0),
    ]
    assert all(s.phash is not None and s.quality is None for s in inspection.images)
    (received,) = recorder.requests
    assert [i.perceptual_hash for i in received[2]] == [s.phash for s in inspection.images]
    assert len(engine.requests) == 1


ENFORCE = "version: q-1\ndefault: {quality: {mode: enforce}}\n"


async def test_enforced_quality_gate_asks_for_a_retake_without_generation(
    executor: ThreadPoolExecutor, tmp_path: Path
) -> None:
    recorder = MemoryRecorder()
    engine = FakeEngine([VALID])
    run = pipeline(executor, engine, recorder, tmp_path, ENFORCE)
    blurred = jpeg(OTHER.filter(ImageFilter.GaussianBlur(4)))
    inspection = await run.run(
        request(jpeg(PHOTO), [jpeg(OTHER), blurred]), "Inspect", lambda e: None
    )
    assert inspection.decision is Decision.RETAKE_IMAGES
    assert engine.requests == []  # no generation ran
    assert recorder.attempts == []
    assert recorder.results == [inspection]
    (reason,) = inspection.reasons
    assert reason.code is ReasonCode.IMAGE_BLURRY and reason.decisive
    assert reason.image is not None and (reason.image.role, reason.image.index) == (
        ImageRole.PICKUP,
        1,
    )
    assert inspection.attempts == 0 and inspection.recommendation is None
    assert all(a.retake_image and a.answer == "" for a in inspection.answers)
    assert inspection.policy_version == "q-1"
    measured = [s for s in inspection.images if s.quality is not None]
    assert len(measured) == 3  # measured for every image, judged for pickups only

    # Sharp photos pass the same gate, and the model runs.
    engine = FakeEngine([VALID])
    run = pipeline(executor, engine, MemoryRecorder(), tmp_path, ENFORCE)
    passed = await run.run(request(jpeg(PHOTO), [jpeg(OTHER)]), "Inspect", lambda e: None)
    assert passed.decision is Decision.PICK
    assert len(engine.requests) == 1


async def test_flag_mode_reports_and_decides_as_before(
    executor: ThreadPoolExecutor, tmp_path: Path
) -> None:
    engine = FakeEngine([VALID])
    run = pipeline(
        executor,
        engine,
        MemoryRecorder(),
        tmp_path,
        "version: f\ndefault: {quality: {mode: flag}}\n",
    )
    blurred = jpeg(OTHER.filter(ImageFilter.GaussianBlur(4)))
    inspection = await run.run(request(jpeg(PHOTO), [blurred]), "Inspect", lambda e: None)
    assert inspection.decision is Decision.PICK
    assert [(r.code, r.decisive) for r in inspection.reasons] == [
        (ReasonCode.MODEL_RECOMMENDATION, True),
        (ReasonCode.IMAGE_BLURRY, False),
    ]
    assert len(engine.requests) == 1


FRAUD = (
    "version: fr-1\n"
    "vendors:\n"
    "  acme: {fraud: {catalogue_photo: true, reused_photo: true, reused_lookup_timeout_s: 0.2}}\n"
)


async def test_the_catalogue_photo_as_pickup_goes_to_review(
    executor: ThreadPoolExecutor, tmp_path: Path
) -> None:
    reference = jpeg(PHOTO)
    small = PHOTO.resize((PHOTO.width * 9 // 10, PHOTO.height * 9 // 10))
    reworked = jpeg(small, quality=60)
    run = pipeline(executor, FakeEngine([VALID]), MemoryRecorder(), tmp_path, FRAUD)
    inspection = await run.run(
        request(reference, [jpeg(OTHER), reworked], vendor_id="acme"), "Inspect", lambda e: None
    )
    assert inspection.decision is Decision.NEEDS_REVIEW
    assert inspection.policy_name == "acme"
    (reason,) = [r for r in inspection.reasons if r.decisive]
    assert reason.code is ReasonCode.CATALOGUE_PHOTO
    assert reason.image is not None and reason.image.index == 1
    # Another vendor (the default policy) does not check.
    run = pipeline(executor, FakeEngine([VALID]), MemoryRecorder(), tmp_path, FRAUD)
    plain = await run.run(request(reference, [reworked]), "Inspect", lambda e: None)
    assert plain.decision is Decision.PICK


async def test_a_reused_photo_goes_to_review_naming_the_inspection(
    executor: ThreadPoolExecutor, tmp_path: Path
) -> None:
    lookup = ScriptedLookup(matches=(ReuseMatch(0, "insp-earlier", "SHIP-1", 2),))
    run = pipeline(executor, FakeEngine([VALID]), MemoryRecorder(), tmp_path, FRAUD, lookup)
    inspection = await run.run(
        request(jpeg(PHOTO), [jpeg(OTHER)], vendor_id="acme"), "Inspect", lambda e: None
    )
    assert inspection.decision is Decision.NEEDS_REVIEW
    (reason,) = [r for r in inspection.reasons if r.decisive]
    assert reason.code is ReasonCode.REUSED_PHOTO
    assert reason.related_inspection_id == "insp-earlier"
    ((shipping_id, hashes, max_distance),) = lookup.calls
    assert shipping_id == "SHIP-7" and max_distance == 6
    assert [i for i, _ in hashes] == [0]  # pickup hashes only
    assert hashes[0][1] == inspection.images[1].phash


@pytest.mark.parametrize("lookup", [ScriptedLookup(delay=1.0), ScriptedLookup(fail=True)])
async def test_a_lookup_that_cannot_answer_is_skipped(
    executor: ThreadPoolExecutor, tmp_path: Path, lookup: ScriptedLookup
) -> None:
    run = pipeline(executor, FakeEngine([VALID]), MemoryRecorder(), tmp_path, FRAUD, lookup)
    inspection = await run.run(
        request(jpeg(PHOTO), [jpeg(OTHER)], vendor_id="acme"), "Inspect", lambda e: None
    )
    assert inspection.decision is Decision.PICK
    assert [(r.code, r.decisive) for r in inspection.reasons] == [
        (ReasonCode.MODEL_RECOMMENDATION, True),
        (ReasonCode.REUSE_CHECK_SKIPPED, False),
    ]
