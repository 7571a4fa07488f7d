"""Run as a script by test_decode_memory: serves one request of N copies of a PNG through a real
InferenceApp in this process and prints, as JSON, the call's status, this process's peak RSS
during it (VmHWM, reset after start-up) and its RSS once the call has ended, so the figures are
the server's, not the test runner's.

usage: decode_memory_probe.py PNG COUNT MAX_REQUEST_PIXELS WORK_DIR [MMAP_THRESHOLD [PREPROCESS]]
"""

from __future__ import annotations

import asyncio
import gc
import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from PIL import Image
from rpi.inspection.v1 import inspection_pb2 as pb
from rpi.inspection.v1 import inspection_pb2_grpc as pb_grpc

from inference_svc.app import InferenceApp
from tests.support.e2e import QUESTIONS, inference_settings


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    assert match is not None, field
    return int(match.group(1))


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM starts again from the current RSS


def _reason(exc: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(exc)
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


async def _inspect(port: int, request: pb.InspectRequest) -> tuple[str, str]:
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await pb_grpc.InspectionServiceStub(channel).Inspect(request, timeout=300)
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, _reason(exc)
    return "OK", ""


async def main(
    png: bytes,
    count: int,
    max_request_pixels: int,
    work_dir: str,
    mmap_threshold: int | None,
    preprocess: str | None,
) -> None:
    overrides: dict[str, Any] = {"max_request_pixels": max_request_pixels}
    if mmap_threshold is not None:
        overrides["malloc_mmap_threshold_bytes"] = mmap_threshold
    if preprocess is not None:
        overrides["preprocess"] = preprocess
    settings = inference_settings(Path(work_dir), "", preprocess_threads=4, **overrides)
    app = InferenceApp(settings)
    await app.start()
    request = pb.InspectRequest(
        shipping_id="SHIP-RSS",
        product_name="ACME mug",
        reference_images=[pb.Image(content=png)],
        pickup_images=[pb.Image(content=png) for _ in range(count - 1)],
        questions=QUESTIONS,
    )
    # The engine's first call allocates what every later call reuses (the model's working
    # buffers): a small inspection first keeps that out of the figures.
    small = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(small, "PNG")
    warm = pb.InspectRequest()
    warm.CopyFrom(request)
    del warm.pickup_images[:]
    warm.reference_images[0].content = small.getvalue()
    warm.pickup_images.add(content=small.getvalue())
    await _inspect(app.port, warm)
    gc.collect()
    _reset_peak()
    baseline = _status_kib("VmRSS")
    try:
        code, reason = await _inspect(app.port, request)
        # An answered call has prepared all its images: what the server holds now, it keeps.
        gc.collect()
        after = _status_kib("VmRSS")
    finally:
        await app.stop(5)
        # Decodes already handed to worker threads run to their end: wait for them, so the
        # peak below includes everything the request set off.
        app.prepare_executor.shutdown(wait=True)
    result = {
        "code": code,
        "reason": reason,
        "baseline_kib": baseline,
        "peak_kib": _status_kib("VmHWM"),
        "after_kib": after,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    data = Path(sys.argv[1]).read_bytes()
    threshold = int(sys.argv[5]) if len(sys.argv) > 5 else None
    mode = sys.argv[6] if len(sys.argv) > 6 else None
    asyncio.run(main(data, int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], threshold, mode))
