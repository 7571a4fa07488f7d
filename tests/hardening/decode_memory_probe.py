"""Run as a script by test_decode_memory: serves one request of N copies of a PNG through a real
InferenceApp in this process and prints, as JSON, the call's status and this process's peak RSS
during it (VmHWM, reset after start-up), so the figure is the server's, not the test runner's.

usage: decode_memory_probe.py PNG_PATH COUNT MAX_REQUEST_PIXELS WORK_DIR
"""

from __future__ import annotations

import asyncio
import gc
import json
import re
import sys
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
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


async def main(png: bytes, count: int, max_request_pixels: int, work_dir: str) -> None:
    settings = inference_settings(
        Path(work_dir), "", max_request_pixels=max_request_pixels, preprocess_threads=4
    )
    app = InferenceApp(settings)
    await app.start()
    request = pb.InspectRequest(
        shipping_id="SHIP-RSS",
        product_name="ACME mug",
        reference_images=[pb.Image(content=png)],
        pickup_images=[pb.Image(content=png) for _ in range(count - 1)],
        questions=QUESTIONS,
    )
    gc.collect()
    _reset_peak()
    baseline = _status_kib("VmRSS")
    code, reason = "OK", ""
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            await pb_grpc.InspectionServiceStub(channel).Inspect(request, timeout=300)
    except grpc.aio.AioRpcError as exc:
        code, reason = exc.code().name, _reason(exc)
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
    }
    print(json.dumps(result))


if __name__ == "__main__":
    data = Path(sys.argv[1]).read_bytes()
    asyncio.run(main(data, int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
