"""Catalogue-image reuse through the real gRPC service: the same answers with the vision
cache on and off, hits and evictions in the Prometheus metrics, and a reference image the
engine evicted meanwhile sent again as pixels."""

from __future__ import annotations

import contextlib

import grpc
import pytest
from prometheus_client import CollectorRegistry
from rpi.inspection.v1 import inspection_pb2 as pb
from rpi.inspection.v1 import inspection_pb2_grpc as pb_grpc

from bench.common import make_request, running_app
from bench.photos import photo_jpeg
from inference_svc.app import InferenceApp
from inference_svc.domain.models import OutputLimits
from svc_common.inference_metrics import (
    VISION_CACHE_BYTES,
    VISION_CACHE_EVICTIONS_TOTAL,
    VISION_CACHE_LOOKUPS_TOTAL,
)

pytestmark = pytest.mark.slow

# The random model fills every string to its bound: short bounds end the answer early.
SHORT = OutputLimits(max_evidence_chars=24, max_analysis_chars=32, max_result_chars=16)
# The demo model's features of one 1-tile image are 64 tokens x 64 floats: room for one.
ONE_IMAGE = 64 * 64 * 4


def _images(*seeds: int) -> list[pb.Image]:
    return [pb.Image(content=photo_jpeg((512, 512), seed=s, quality=90)) for s in seeds]


PICKUP = [pb.Image(content=photo_jpeg((1280, 960), seed=99, quality=90))]


def _app(cache_bytes: int) -> contextlib.AbstractAsyncContextManager[InferenceApp]:
    return running_app(
        output_limits=SHORT,
        max_new_tokens=800,
        engine_process=False,
        torch_threads=1,
        vision_cache_bytes=cache_bytes,
    )


async def _answers(app: InferenceApp, requests: list[pb.InspectRequest]) -> list[bytes]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.InspectionServiceStub(channel)
        out = []
        for request in requests:
            reply = await stub.Inspect(request, timeout=300)
            inspection = reply.inspection
            parts = (*inspection.answers, inspection.analysis)
            out.append(b"".join(m.SerializeToString() for m in parts))
        return out


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_answers_are_the_same_with_the_cache_on_and_off() -> None:
    first = make_request(_images(1, 2), PICKUP, shipping_id="SHIP-A")
    other = make_request(_images(3), PICKUP, shipping_id="SHIP-B")
    requests = [first, first, other, first]
    async with _app(0) as off:
        expected = await _answers(off, requests)
        assert not off.engine.info.vision_cache
        assert _sample(off.registry, VISION_CACHE_LOOKUPS_TOTAL, result="hit") == 0
    async with _app(64 << 20) as on:
        assert on.engine.info.vision_cache
        assert await _answers(on, requests) == expected
        registry = on.registry
        # Requests 2 and 4 found both catalogue images of request 1.
        assert _sample(registry, VISION_CACHE_LOOKUPS_TOTAL, result="hit") == 4
        assert _sample(registry, VISION_CACHE_LOOKUPS_TOTAL, result="miss") == 3
        assert _sample(registry, VISION_CACHE_BYTES) == 3 * ONE_IMAGE
        assert _sample(registry, VISION_CACHE_EVICTIONS_TOTAL) == 0


async def test_an_evicted_reference_is_sent_again_as_pixels() -> None:
    a = make_request(_images(1), PICKUP, shipping_id="SHIP-A")
    b = make_request(_images(2), PICKUP, shipping_id="SHIP-B")
    requests = [a, b, a]
    async with _app(0) as off:
        expected = await _answers(off, requests)
    async with _app(ONE_IMAGE) as on:
        # The third request sends request 1's catalogue image by reference; the engine evicted
        # it for request 2's, refuses it, and the service sends its pixels: same answers.
        assert await _answers(on, requests) == expected
        registry = on.registry
        assert _sample(registry, VISION_CACHE_EVICTIONS_TOTAL) == 2
        assert _sample(registry, VISION_CACHE_LOOKUPS_TOTAL, result="hit") == 0
        # a, b, a by reference (refused), a as pixels.
        assert _sample(registry, VISION_CACHE_LOOKUPS_TOTAL, result="miss") == 4
