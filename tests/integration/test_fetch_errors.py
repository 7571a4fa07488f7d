"""Image fetch failures through the real inference service: the image host's failures (a name
that does not resolve, a download that times out, a 503) are UNAVAILABLE with RetryInfo, so the
caller retries and the server-side error rate shows a CDN outage; a 404 is the caller's to fix
(INVALID_ARGUMENT). Each failure is recorded in Postgres with the code the caller got."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from aiohttp import web
from rpi.inspection.v1 import inspection_pb2 as pb
from rpi.inspection.v1 import inspection_pb2_grpc as pb_grpc
from rpi.persistence.v1 import persistence_pb2 as ppb
from rpi.persistence.v1 import persistence_pb2_grpc as ppb_grpc

from inference_svc.app import InferenceApp
from persistence_svc.app import PersistenceApp
from tests.grpc_errors.support import details
from tests.support.e2e import ImageServer, inference_settings, make_request, wait_for_record
from tests.support.imaging import LoopbackServer

FETCH_TIMEOUT_S = 1.5


@pytest_asyncio.fixture(scope="module")
async def failing_host() -> AsyncIterator[LoopbackServer]:
    """An image host whose /down answers 503 and whose /hangs never answers."""
    server = LoopbackServer()
    release = asyncio.Event()

    async def down(request: web.Request) -> web.StreamResponse:
        return web.Response(status=503, text="maintenance")

    async def hangs(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response(status=200)

    server.routes["/down.jpg"] = down
    server.routes["/hangs.jpg"] = hangs
    await server.start()
    try:
        yield server
    finally:
        release.set()
        await server.stop()


@pytest_asyncio.fixture(scope="module")
async def stub(
    persistence_app: PersistenceApp, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[pb_grpc.InspectionServiceStub]:
    # A short download deadline, so that the timeout case takes seconds, not the default 20.
    settings = inference_settings(
        Path(tmp_path_factory.mktemp("fetch-errors")),
        persistence_app.target,
        fetch_timeout_s=FETCH_TIMEOUT_S,
        fetch_retries=1,
        fetch_backoff_s=0.05,
    )
    app = InferenceApp(settings)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            yield pb_grpc.InspectionServiceStub(channel)
    finally:
        await app.stop(1)


CASES = {
    # .invalid never resolves (RFC 6761): the service's own resolver answers that it does not.
    "dns": ("http://images.invalid/p.jpg", grpc.StatusCode.UNAVAILABLE, "dns"),
    "timeout": ("/hangs.jpg", grpc.StatusCode.UNAVAILABLE, "timeout"),
    "503": ("/down.jpg", grpc.StatusCode.UNAVAILABLE, "http_5xx"),
    "404": ("/missing.jpg", grpc.StatusCode.INVALID_ARGUMENT, "http_4xx"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_fetch_failure_codes(
    case: str,
    stub: pb_grpc.InspectionServiceStub,
    persistence_stub: ppb_grpc.PersistenceServiceStub,
    image_server: ImageServer,
    failing_host: LoopbackServer,
) -> None:
    where, code, cause = CASES[case]
    uri = where if where.startswith("http:") else failing_host.url(where)
    inspection_id = str(uuid.uuid4())
    request = make_request(
        image_server, inspection_id=inspection_id, pickup_images=[pb.Image(uri=uri)]
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Inspect(request, timeout=60)
    got = details(caught.value)
    assert got.code is code, got.message
    transient = code is grpc.StatusCode.UNAVAILABLE
    reason = "IMAGE_SOURCE_UNAVAILABLE" if transient else "IMAGE_FETCH_FAILED"
    assert (got.info.domain, got.info.reason) == ("inspection.rpi.v1", reason)
    assert got.info.metadata["fetch_error"] == cause
    assert got.info.metadata["image"] == "pickup_images[0]"
    assert got.info.metadata["stage"] == "fetch"
    assert [field for field, _ in got.violations] == ["pickup_images[0]"]
    # RetryInfo exactly when the same request may succeed later.
    if transient:
        assert got.retry_delay_s is not None and got.retry_delay_s > 0
    else:
        assert got.retry_delay_s is None

    record = await wait_for_record(persistence_stub, inspection_id, ppb.INSPECTION_STATUS_FAILED)
    assert (record.failure.reason, record.failure.status_code) == (reason, code.name)
    assert record.failure.stage == "fetch"
