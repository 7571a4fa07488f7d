"""A deterministic in-test engine, image source and recorder for the pipeline's unit tests.

The engine is tests/support/fake_engine.py's."""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inference_svc.domain.errors import Stage
from inference_svc.domain.models import (
    AttemptRecord,
    FetchedImage,
    ImageRole,
    ImageSource,
    Inspection,
    InspectionRequest,
    ModelInfo,
    PreparedImage,
    Question,
)
from inference_svc.domain.recording import ImageInfo

QUESTIONS = (
    Question("Brand", "Is the brand visible?", "Yes", True),
    Question("Colour", "What is the colour?", "Red", False),
)


def request(
    inspection_id: str = "insp-1", questions: tuple[Question, ...] = QUESTIONS
) -> InspectionRequest:
    return InspectionRequest(
        inspection_id=inspection_id,
        shipping_id="SHIP-1",
        product_name="mug",
        reference_images=(ImageSource(ImageRole.REFERENCE, 0, content=b"ref"),),
        pickup_images=(
            ImageSource(ImageRole.PICKUP, 0, content=b"pick-0"),
            ImageSource(ImageRole.PICKUP, 1, uri="https://img.example/p1.jpg?sig=secret"),
        ),
        questions=questions,
    )


def output(results: list[dict[str, Any]], recommendation: str = "Accept") -> str:
    return json.dumps(
        {
            "image_analysis": {
                "pickup_images": "a mug",
                "vendor_image": "a mug",
                "comparison": "=",
            },
            "verification_results": results,
            "pickup_confidence": {
                "overall_score": 90,
                "confidence_factors": {
                    "image_quality": 80,
                    "attribute_visibility": 70,
                    "matching_confidence": 60,
                },
                "recommendation": recommendation,
            },
        }
    )


def answer(label: str, result: Any, confidence: Any = 90, retake: Any = False) -> dict[str, Any]:
    return {
        "Label": label,
        "Result": result,
        "Evidence": f" seen: {label} ",
        "Confidence": confidence,
        "isRetakeImage": retake,
    }


VALID = output([answer("Is the brand visible?", "Yes"), answer("What is the colour?", "Red")])


@dataclass
class FakeFetcher:
    """Inline images as given; URI images as fixed bytes, after ``delay`` seconds."""

    delay: float = 0.0
    fail: BaseException | None = None

    async def fetch(self, source: ImageSource) -> FetchedImage:
        if self.fail is not None:
            raise self.fail
        if source.content is not None:
            return FetchedImage(source, source.content)
        await asyncio.sleep(self.delay)
        return FetchedImage(source, b"fetched:" + (source.uri or "").encode(), source.uri or "")


def prepare(fetched: FetchedImage, max_tiles: int) -> PreparedImage:
    tiles = np.full((max_tiles, 3, 4, 4), len(fetched.data) % 255, dtype=np.uint8)
    return PreparedImage(
        source=fetched.source,
        tiles=tiles,
        num_tiles=max_tiles,
        width=4,
        height=4,
        format="JPEG",
        size_bytes=len(fetched.data),
        sha256=hashlib.sha256(fetched.data).hexdigest(),
    )


@dataclass(frozen=True)
class Failure:
    stage: Stage
    reason: str
    message: str
    status_code: str


@dataclass
class MemoryRecorder:
    requests: list[tuple[InspectionRequest, str, list[ImageInfo]]] = field(default_factory=list)
    attempts: list[AttemptRecord] = field(default_factory=list)
    results: list[Inspection] = field(default_factory=list)
    export_uris: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    def ensure_capacity(self) -> None:
        pass

    async def request_received(
        self, request: InspectionRequest, method: str, images: list[ImageInfo]
    ) -> None:
        self.requests.append((request, method, images))

    async def attempt(self, inspection_id: str, attempt: AttemptRecord, model: ModelInfo) -> None:
        self.attempts.append(attempt)

    async def result(self, inspection: Inspection, export_uri: str = "") -> None:
        self.results.append(inspection)
        self.export_uris.append(export_uri)

    async def failure(
        self, inspection_id: str, stage: Stage, reason: str, message: str, status_code: str
    ) -> None:
        self.failures.append(Failure(stage, reason, message, status_code))
