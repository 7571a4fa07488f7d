"""s3://, gs:// and az:// image URIs read through the real gRPC server from real stores on
loopback (moto's S3 server, fake-gcs-server, azurite), with the https fetcher's limits and
error reasons."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest
from aiohttp import web
from rpi.inspection.v1 import inspection_pb2 as pb
from rpi.persistence.v1 import persistence_pb2 as ppb
from rpi.persistence.v1 import persistence_pb2_grpc as ppb_grpc

from persistence_svc.app import PersistenceApp
from tests.storage.conftest import S3, Azurite, FakeGcs, request, running_app, stalled_endpoint
from tests.support.e2e import jpeg, wait_for_record
from tests.support.errors import details
from tests.support.imaging import LoopbackServer

REFERENCE = jpeg((64, 48), (200, 30, 30))
PICKUP = jpeg((64, 48), (190, 40, 35))


@pytest.fixture(scope="module")
def images(s3: S3) -> str:
    client = s3.client()
    client.create_bucket(Bucket="vendor-images")
    client.create_bucket(Bucket="private-stuff")
    client.put_object(Bucket="vendor-images", Key="catalogue/ref.jpg", Body=REFERENCE)
    client.put_object(Bucket="vendor-images", Key="pickups/p1.jpg", Body=PICKUP)
    client.put_object(Bucket="vendor-images", Key="big.jpg", Body=os.urandom(300_000))
    client.put_object(Bucket="private-stuff", Key="secret.jpg", Body=REFERENCE)
    return "s3://vendor-images"


async def test_s3_reference_and_pickup_images_complete_an_inspection(
    s3: S3,
    images: str,
    persistence_app: PersistenceApp,
    persistence_stub: ppb_grpc.PersistenceServiceStub,
    tmp_path: Path,
) -> None:
    async with running_app(
        tmp_path,
        persistence_app,
        allowed_buckets=[images],
        storage_endpoints={"s3": s3.endpoint},
    ) as (_app, stub):
        reply = await stub.Inspect(
            request(
                [pb.Image(uri="s3://vendor-images/catalogue/ref.jpg")],
                [pb.Image(uri="s3://vendor-images/pickups/p1.jpg")],
            )
        )
    assert reply.inspection.decision != pb.DECISION_UNSPECIFIED
    record = await wait_for_record(
        persistence_stub, reply.inspection.inspection_id, ppb.INSPECTION_STATUS_COMPLETED
    )
    fetched = [i.fetched_uri for i in record.request.images]
    assert fetched == ["s3://vendor-images/catalogue/ref.jpg", "s3://vendor-images/pickups/p1.jpg"]
    assert [i.size_bytes for i in record.request.images] == [len(REFERENCE), len(PICKUP)]


@pytest.mark.parametrize(
    ("uri", "code", "reason", "words"),
    [
        (
            "s3://private-stuff/secret.jpg",
            grpc.StatusCode.INVALID_ARGUMENT,
            "IMAGE_URL_FORBIDDEN",
            "not in the allowlist",
        ),
        (
            "s3://vendor-images/missing.jpg",
            grpc.StatusCode.INVALID_ARGUMENT,
            "IMAGE_FETCH_FAILED",
            "does not exist",
        ),
        (
            "s3://vendor-images/big.jpg",
            grpc.StatusCode.INVALID_ARGUMENT,
            "IMAGE_TOO_LARGE",
            "over the limit of 200000 bytes",
        ),
        (
            "gs://vendor-images/ref.jpg",
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            "scheme 'gs' not allowed",
        ),
    ],
)
async def test_bucket_failures_have_their_documented_code_and_reason(
    s3: S3, images: str, tmp_path: Path, uri: str, code: grpc.StatusCode, reason: str, words: str
) -> None:
    async with running_app(
        tmp_path,
        None,
        allowed_buckets=[images],
        storage_endpoints={"s3": s3.endpoint},
        max_image_bytes=200_000,
    ) as (_app, stub):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Inspect(request([pb.Image(uri=uri)], [pb.Image(content=PICKUP)]))
    assert caught.value.code() == code
    info, fields = details(caught.value)
    assert info.reason == reason, caught.value.details()
    assert words in (caught.value.details() or "")
    assert fields == [
        "reference_images[0].uri" if reason == "INVALID_ARGUMENT" else "reference_images[0]"
    ]


async def test_a_stalled_store_gives_a_fetch_failure_within_the_fetch_deadline(
    s3: S3,  # the environment's credentials: the stall is the endpoint's, not a credential lookup
    tmp_path: Path,
) -> None:
    server, endpoint = await stalled_endpoint()
    try:
        async with running_app(
            tmp_path,
            None,
            allowed_buckets=["s3://vendor-images"],
            storage_endpoints={"s3": endpoint},
            fetch_timeout_s=1.0,
            fetch_min_bytes_per_s=0,
        ) as (_app, stub):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Inspect(
                    request(
                        [pb.Image(uri="s3://vendor-images/catalogue/ref.jpg")],
                        [pb.Image(content=PICKUP)],
                    )
                )
    finally:
        server.close()
    # The store's failure, not the caller's: retryable, as an https host's would be.
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    info, _ = details(caught.value)
    assert info.reason == "IMAGE_SOURCE_UNAVAILABLE"
    assert info.metadata["fetch_error"] == "timeout"
    assert "timed out after 1 s" in (caught.value.details() or "")


def by_uri(prefix: str) -> pb.InspectRequest:
    """The reference ``<prefix>/ref.jpg`` and the pickup ``<prefix>/p1.jpg``, both by URI."""
    return request([pb.Image(uri=f"{prefix}/ref.jpg")], [pb.Image(uri=f"{prefix}/p1.jpg")])


async def test_az_images_are_read_from_azure_blob(azurite: Azurite, tmp_path: Path) -> None:
    import obstore
    from obstore.store import AzureStore

    azurite.create_container("pickups")
    store = AzureStore("pickups", endpoint=azurite.endpoint, client_options={"allow_http": True})
    await obstore.put_async(store, "2026/ref.jpg", REFERENCE)
    await obstore.put_async(store, "2026/p1.jpg", PICKUP)
    async with running_app(
        tmp_path,
        None,
        allowed_buckets=["az://pickups"],
        storage_endpoints={"az": azurite.endpoint},
    ) as (_app, stub):
        reply = await stub.Inspect(by_uri("az://pickups/2026"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Inspect(
                request([pb.Image(uri="az://pickups/2026/none.jpg")], [pb.Image(content=PICKUP)])
            )
    assert reply.inspection.decision != pb.DECISION_UNSPECIFIED
    assert details(caught.value)[0].reason == "IMAGE_FETCH_FAILED"


@pytest.fixture(scope="module")
def gcs_images(fake_gcs: FakeGcs) -> FakeGcs:
    fake_gcs.create_bucket("gcs-pickups")
    fake_gcs.create_bucket("gcs-private")
    fake_gcs.put("gcs-pickups", "2026/ref.jpg", REFERENCE)
    fake_gcs.put("gcs-pickups", "2026/p1.jpg", PICKUP)
    fake_gcs.put("gcs-private", "secret.jpg", REFERENCE)
    return fake_gcs


async def test_gs_images_are_read_from_gcs(gcs_images: FakeGcs, tmp_path: Path) -> None:
    async with running_app(
        tmp_path,
        None,
        allowed_buckets=["gs://gcs-pickups"],
        storage_endpoints={"gs": gcs_images.endpoint},
    ) as (_app, stub):
        reply = await stub.Inspect(by_uri("gs://gcs-pickups/2026"))
    assert reply.inspection.decision != pb.DECISION_UNSPECIFIED
    # Both came from the emulator, through the XML API that obstore reads with.
    read = " ".join(gcs_images.requests_for("gcs-pickups"))
    assert "GET /gcs-pickups/2026/ref.jpg" in read
    assert "GET /gcs-pickups/2026/p1.jpg" in read


@pytest.mark.parametrize(
    ("uri", "reason", "words", "reaches_store"),
    [
        ("gs://gcs-pickups/2026/none.jpg", "IMAGE_FETCH_FAILED", "does not exist", True),
        ("gs://gcs-private/secret.jpg", "IMAGE_URL_FORBIDDEN", "not in the allowlist", False),
    ],
)
async def test_gs_failures_have_their_documented_reason(
    gcs_images: FakeGcs, tmp_path: Path, uri: str, reason: str, words: str, reaches_store: bool
) -> None:
    bucket = uri.split("/")[2]
    before = len(gcs_images.requests_for(bucket))
    async with running_app(
        tmp_path,
        None,
        allowed_buckets=["gs://gcs-pickups"],
        storage_endpoints={"gs": gcs_images.endpoint},
    ) as (_app, stub):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Inspect(request([pb.Image(uri=uri)], [pb.Image(content=PICKUP)]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, fields = details(caught.value)
    assert info.reason == reason, caught.value.details()
    assert words in (caught.value.details() or "")
    assert fields == ["reference_images[0]"]
    # A bucket outside ALLOWED_BUCKETS is refused before any request is made for it.
    assert (len(gcs_images.requests_for(bucket)) > before) is reaches_store


async def test_a_transient_store_error_is_retried_within_the_deadline(
    s3: S3,  # the environment's credentials
    tmp_path: Path,
) -> None:
    """A 503 from the store (an S3-compatible endpoint on loopback) is retried, as an https
    download's would be; FETCH_RETRIES=0 gives up on it."""
    answers: list[int] = []

    async def flaky(_request: web.Request) -> web.StreamResponse:
        answers.append(503 if not answers else 200)
        if answers[-1] == 503:
            return web.Response(status=503)
        headers = {"ETag": '"1"', "Last-Modified": "Wed, 02 Dec 2026 10:00:00 GMT"}
        return web.Response(body=REFERENCE, headers=headers)

    server = LoopbackServer()
    server.routes["/vendor-images/ref.jpg"] = flaky
    await server.start()
    try:
        for retries, expected in ((1, None), (0, "IMAGE_SOURCE_UNAVAILABLE")):
            answers.clear()
            async with running_app(
                tmp_path / str(retries),
                None,
                allowed_buckets=["s3://vendor-images"],
                storage_endpoints={"s3": f"http://127.0.0.1:{server.port}"},
                fetch_retries=retries,
            ) as (_app, stub):
                call = stub.Inspect(
                    request(
                        [pb.Image(uri="s3://vendor-images/ref.jpg")], [pb.Image(content=PICKUP)]
                    )
                )
                if expected is None:
                    reply = await call
                    assert reply.inspection.decision != pb.DECISION_UNSPECIFIED
                    assert answers == [503, 200]
                else:
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await call
                    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                    assert details(caught.value)[0].reason == expected
                    assert answers == [503]
    finally:
        await server.stop()
