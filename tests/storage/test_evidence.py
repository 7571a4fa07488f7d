"""The evidence archive and the result export against moto's S3 server: each distinct image
stored once under its digest, the record linking to it, the exported JSON parsing back into the
inspection, and nothing lost while the store is down."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
from google.protobuf import json_format
from moto.server import ThreadedMotoServer
from rpi.inspection.v1 import inspection_pb2 as pb
from rpi.persistence.v1 import persistence_pb2 as ppb
from rpi.persistence.v1 import persistence_pb2_grpc as ppb_grpc

from persistence_svc.app import PersistenceApp
from tests.storage.conftest import S3, request, running_app
from tests.support.e2e import jpeg, wait_for_record
from tests.support.imaging import encode, textured
from tests.support.processes import free_port

REFERENCE = jpeg((64, 48), (20, 200, 30))
PICKUP = jpeg((64, 48), (30, 190, 45))


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_each_distinct_image_is_archived_once_and_the_result_exported(
    s3: S3,
    persistence_app: PersistenceApp,
    persistence_stub: ppb_grpc.PersistenceServiceStub,
    tmp_path: Path,
) -> None:
    client = s3.client()
    client.create_bucket(Bucket="catalogue-ev")
    client.create_bucket(Bucket="evidence")
    client.put_object(Bucket="catalogue-ev", Key="ref.jpg", Body=REFERENCE)
    async with running_app(
        tmp_path,
        persistence_app,
        allowed_buckets=["s3://catalogue-ev"],
        storage_endpoints={"s3": s3.endpoint},
        image_archive_uri="s3://evidence/images",
        result_export_uri="s3://evidence/results",
    ) as (app, stub):
        replies = []
        for _ in range(2):  # the same photos twice: still one object each
            replies.append(
                await stub.Inspect(
                    request(
                        [pb.Image(uri="s3://catalogue-ev/ref.jpg"), pb.Image(content=REFERENCE)],
                        [pb.Image(content=PICKUP), pb.Image(content=PICKUP)],
                        shipping_id="SHIP/EV 1",
                    )
                )
            )
        await app.storage.drained()

    expected = sorted(f"images/{digest(d)}" for d in (REFERENCE, PICKUP))
    assert s3.keys("evidence", "images/") == expected
    stored = client.get_object(Bucket="evidence", Key=f"images/{digest(PICKUP)}")["Body"].read()
    assert stored == PICKUP

    for reply in replies:
        inspection_id = reply.inspection.inspection_id
        record = await wait_for_record(
            persistence_stub, inspection_id, ppb.INSPECTION_STATUS_COMPLETED
        )
        assert [i.archived_uri for i in record.request.images] == [
            f"s3://evidence/images/{digest(d)}" for d in (REFERENCE, REFERENCE, PICKUP, PICKUP)
        ]
        # The shipping id is one key segment, percent-encoded.
        key = f"results/SHIP%2FEV%201/{inspection_id}.json"
        assert record.export_uri == f"s3://evidence/{key}"
        exported = client.get_object(Bucket="evidence", Key=key)["Body"].read()
        parsed = json_format.Parse(exported, pb.Inspection())
        assert parsed == reply.inspection
        assert parsed == record.result


async def test_an_archive_outage_during_50_inspections_loses_nothing(
    s3: S3,  # the environment's credentials
    persistence_app: PersistenceApp,
    persistence_stub: ppb_grpc.PersistenceServiceStub,
    tmp_path: Path,
) -> None:
    port = free_port()
    store = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    store.start()
    endpoint = f"http://127.0.0.1:{port}"
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="evidence-outage")
    store.stop()  # the archive store is down from the first inspection on

    photos = [encode(textured(64, 48, seed=i), "JPEG") for i in range(50)]
    assert len({digest(p) for p in [REFERENCE, *photos]}) == 51
    async with running_app(
        tmp_path,
        persistence_app,
        storage_endpoints={"s3": endpoint},
        image_archive_uri="s3://evidence-outage/images",
    ) as (app, stub):
        replies = []
        for start in range(0, len(photos), 10):  # ten at a time, under the in-flight limit
            replies += await asyncio.gather(
                *(
                    stub.Inspect(request([pb.Image(content=REFERENCE)], [pb.Image(content=p)]))
                    for p in photos[start : start + 10]
                )
            )
        queue, archiving = app.storage.queue, app.storage.archiving
        assert queue is not None and archiving is not None
        for reply in replies:
            await wait_for_record(
                persistence_stub, reply.inspection.inspection_id, ppb.INSPECTION_STATUS_COMPLETED
            )
        await archiving.flush()  # the spool writes run beside the answers
        assert queue.pending == 51  # 50 pickup photos and the one reference photo
        assert queue.consecutive_failures > 0
        assert app.registry.get_sample_value("rpi_inference_storage_upload_backlog") == 51

        store = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        store.start()  # back, with the bucket (moto keeps its state in the process)
        await app.storage.drained()
        samples = {
            outcome: app.registry.get_sample_value(
                "rpi_inference_storage_uploads_total", {"kind": "archive", "outcome": outcome}
            )
            for outcome in ("failed", "written", "dropped")
        }
        assert app.registry.get_sample_value("rpi_inference_storage_upload_backlog") == 0
    assert samples["failed"] and samples["failed"] > 0
    assert (samples["written"], samples["dropped"]) == (51, 0)
    try:
        keys = sorted(
            o["Key"]
            for o in client.list_objects_v2(Bucket="evidence-outage", MaxKeys=1000)["Contents"]
        )
    finally:
        store.stop()
    assert keys == sorted(f"images/{digest(d)}" for d in [REFERENCE, *photos])


@pytest.fixture(autouse=True)
def _quiet_moto_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="werkzeug")
