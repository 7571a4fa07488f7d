"""rpi-replay --rerun-model end to end: an inference service (the demo model) with the evidence
archive on moto's S3 server records a few inspections in a real persistence service; the tool
reads them back and runs the model again on their archived images, on a service that may read
the archive bucket and on one that may not."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import pytest
from rpi.inspection.v1 import inspection_pb2 as pb
from rpi.persistence.v1 import persistence_pb2 as ppb
from rpi.persistence.v1 import persistence_pb2_grpc as ppb_grpc

from persistence_svc.app import PersistenceApp
from tests.storage.conftest import QUESTIONS, S3, request, running_app
from tests.support.e2e import wait_for_record
from tests.support.imaging import encode, textured
from tools.replay import EXIT_CHANGED, main
from tools.replay_parser import EXIT_FAILED

ARCHIVE = "rerun-evidence"
INSPECTIONS = 3


def _photo(seed: int) -> bytes:
    return encode(textured(160, 120, seed), "JPEG", quality=90)


async def _record_unarchived(
    stub: ppb_grpc.PersistenceServiceStub, shipping_id: str, archived: ppb.ImageRecord
) -> str:
    """A completed inspection (recorded before the archive, say) with one image the archive
    does not hold."""
    inspection_id = str(uuid4())

    def event() -> ppb.Event:
        e = ppb.Event(event_id=str(uuid4()), inspection_id=inspection_id)
        e.occur_time.FromDatetime(datetime.now(UTC))
        return e

    received = event()
    received.request_received.CopyFrom(
        ppb.RequestReceived(
            shipping_id=shipping_id,
            product_name="ACME mug, red",
            questions=QUESTIONS,
            images=[archived, ppb.ImageRecord(role=ppb.IMAGE_ROLE_PICKUP, index=0, inline=True)],
            method="Inspect",
        )
    )
    result = event()
    result.result_recorded.CopyFrom(
        ppb.ResultRecorded(
            inspection=pb.Inspection(
                inspection_id=inspection_id, shipping_id=shipping_id, decision=pb.DECISION_PICK
            )
        )
    )
    await stub.RecordEvents(ppb.RecordEventsRequest(events=[received, result]))
    await wait_for_record(stub, inspection_id, ppb.INSPECTION_STATUS_COMPLETED)
    return inspection_id


@pytest.mark.slow
async def test_rerun_model_on_the_archived_images(
    s3: S3,
    persistence_app: PersistenceApp,
    persistence_stub: ppb_grpc.PersistenceServiceStub,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    started = time.perf_counter()
    s3.client().create_bucket(Bucket=ARCHIVE)
    s3.client().create_bucket(Bucket="rerun-catalogue")
    run = uuid4().hex[:8]
    shipments = [f"RERUN-{run}-{n}" for n in range(INSPECTIONS)]
    select = ["--persistence-target", persistence_app.target]
    for shipping_id in shipments:
        select += ["--shipping-id", shipping_id]
    storage = {"storage_endpoints": {"s3": s3.endpoint}}

    # Production: the archive on; its ALLOWED_BUCKETS name the catalogue, not the archive.
    async with running_app(
        tmp_path / "production",
        persistence_app,
        demo_model=True,
        allowed_buckets=["s3://rerun-catalogue"],
        image_archive_uri=f"s3://{ARCHIVE}/images",
        **storage,
    ) as (production, stub):
        stored: dict[str, ppb.InspectionRecord] = {}
        for n, shipping_id in enumerate(shipments):
            reply = await stub.Inspect(
                request(
                    [pb.Image(content=_photo(10 * n))],
                    [pb.Image(content=_photo(10 * n + 1)), pb.Image(content=_photo(10 * n + 2))],
                    shipping_id=shipping_id,
                )
            )
            inspection_id = reply.inspection.inspection_id
            stored[inspection_id] = await wait_for_record(
                persistence_stub, inspection_id, ppb.INSPECTION_STATUS_COMPLETED
            )
        await production.storage.drained()
        assert all(i.archived_uri for r in stored.values() for i in r.request.images)
        first = next(iter(stored.values()))
        unarchived = await _record_unarchived(
            persistence_stub, shipments[0], first.request.images[0]
        )

        # A target that may not read the archive bucket: every call fails, the run goes on.
        target = ["--inference-target", f"127.0.0.1:{production.port}"]
        code = await asyncio.to_thread(main, ["--rerun-model", *target, *select])
        printed = capsys.readouterr().out
        assert code == EXIT_FAILED, printed
        assert f": 0 re-run, 0 changed, 1 not archived, {INSPECTIONS} failed" in printed
        for inspection_id, record in stored.items():
            assert (
                f"  {inspection_id} shipment {record.shipping_id}: INVALID_ARGUMENT "
                "IMAGE_URL_FORBIDDEN" in printed
            )
        assert "  1  not archived" in printed

    # Staging: may read the archive bucket (no archive of its own), recording where the
    # production service does.
    async with running_app(
        tmp_path / "staging",
        persistence_app,
        demo_model=True,
        allowed_buckets=[f"s3://{ARCHIVE}"],
        **storage,
    ) as (staging, _):
        target = ["--inference-target", f"127.0.0.1:{staging.port}"]
        code = await asyncio.to_thread(
            main, ["--rerun-model", *target, *select, "--fail-on-change"]
        )
        printed = capsys.readouterr().out
    assert code == 0, printed
    # Greedy decoding on the same pixels: the same decisions.
    headline = f"model re-run on 127.0.0.1:{staging.port}: {INSPECTIONS} re-run, 0 changed, "
    assert headline + "1 not archived, 0 failed" in printed, printed
    old = [pb.Decision.Name(r.result.decision).removeprefix("DECISION_") for r in stored.values()]
    for decision in set(old):
        assert f"{decision:<14} {decision:<14} {old.count(decision):>7}\n" in printed + "\n"
    assert "changed:" not in printed and "failed:" not in printed

    # Each re-run is recorded as a new inspection naming the one it repeats.
    repeats: dict[str, ppb.InspectionRecord] = {}
    for _ in range(100):  # the events reach the persistence service asynchronously
        for shipping_id in shipments:
            page = await persistence_stub.ListInspections(
                ppb.ListInspectionsRequest(shipping_id=shipping_id, page_size=50)
            )
            repeats.update(
                (r.previous_inspection_id, r)
                for r in page.inspections
                if r.previous_inspection_id and r.status == ppb.INSPECTION_STATUS_COMPLETED
            )
        if len(repeats) == len(stored):
            break
        await asyncio.sleep(0.1)
    assert set(repeats) == set(stored)
    for inspection_id, again in repeats.items():
        original = stored[inspection_id]
        assert again.inspection_id not in stored and again.inspection_id != unarchived
        assert again.shipping_id == original.shipping_id
        assert again.status == ppb.INSPECTION_STATUS_COMPLETED
        assert [i.uri for i in again.request.images] == [
            i.archived_uri for i in original.request.images
        ]
        assert [(i.sha256, i.role, i.index) for i in again.request.images] == [
            (i.sha256, i.role, i.index) for i in original.request.images
        ]
        # Recorded where the stored one is, it is no longer the latest of its chain (the docs
        # say so: use a staging service with its own persistence service).
        reread = await persistence_stub.GetInspection(
            ppb.GetInspectionRequest(inspection_id=inspection_id)
        )
        assert not reread.inspection.is_latest

    # A target whose policy enforces the quality gate (the 160x120 photos are too small): every
    # decision changes. It records nothing; the staging re-runs are read back as not archived.
    strict = tmp_path / "strict.yaml"
    strict.write_text(
        "version: strict-1\n"
        "default: {quality: {mode: enforce, thresholds: {min_sharpness: 0, min_short_side: 300}}}\n"
    )
    async with running_app(
        tmp_path / "strict",
        None,
        demo_model=True,
        allowed_buckets=[f"s3://{ARCHIVE}"],
        policy_file=strict,
        **storage,
    ) as (checking, _):
        target = ["--inference-target", f"127.0.0.1:{checking.port}"]
        code = await asyncio.to_thread(
            main, ["--rerun-model", *target, *select, "--fail-on-change", "--concurrency", "1"]
        )
        printed = capsys.readouterr().out
    assert code == EXIT_CHANGED, printed
    assert f": {INSPECTIONS} re-run, {INSPECTIONS} changed, {INSPECTIONS + 1} not archived" in (
        printed
    )
    for inspection_id, record in stored.items():
        assert (
            f"  {inspection_id} shipment {record.shipping_id} [default]: "
            f"{old[list(stored).index(inspection_id)]} -> RETAKE_IMAGES\n"
            "      IMAGE_LOW_RESOLUTION (pickup_images[0]): 160x120, sharpness "
        ) in printed, printed
    assert printed.count("IMAGE_LOW_RESOLUTION (pickup_images[1]): 160x120") == INSPECTIONS
    assert "IMAGE_BLURRY" not in printed
    print(f"rerun end to end: {time.perf_counter() - started:.1f} s")
