"""The upload spool on its own, against moto's S3 server: what a stopped queue left behind is
written by the next start, and a full spool drops and counts instead of failing the caller."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from inference_svc.storage.stores import StoreCache, StoreConfig, parse_bucket_uri
from inference_svc.storage.uploads import UploadHooks, UploadQueue
from tests.storage.conftest import S3, running_app


def stores(endpoint: str) -> StoreCache:
    return StoreCache(StoreConfig(endpoints={"s3": endpoint}, allow_http=True))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


async def test_objects_left_in_the_spool_are_written_after_a_restart(
    s3: S3, tmp_path: Path
) -> None:
    s3.client().create_bucket(Bucket="spool-restart")
    uri = parse_bucket_uri("s3://spool-restart/images/abc")
    down = UploadQueue(tmp_path, 1 << 20, stores(f"http://127.0.0.1:{closed_port()}"))
    await down.start()
    await down.enqueue(uri, b"photo", once=True, kind="archive")
    assert await down.stop(0.5) == 1  # still pending: the store never answered

    up = UploadQueue(tmp_path, 1 << 20, stores(s3.endpoint))
    await up.start()
    assert up.pending == 1
    await up.drained()
    await up.stop(1)
    body = s3.client().get_object(Bucket="spool-restart", Key="images/abc")["Body"].read()
    assert body == b"photo"
    assert up.pending == 0
    assert await asyncio.to_thread(lambda: list(tmp_path.iterdir())) == []


async def test_a_full_spool_drops_and_counts(s3: S3, tmp_path: Path) -> None:
    outcomes: list[tuple[str, str]] = []
    queue = UploadQueue(
        tmp_path,
        100,
        stores(f"http://127.0.0.1:{closed_port()}"),
        hooks=UploadHooks(on_outcome=lambda kind, outcome: outcomes.append((kind, outcome))),
    )
    await queue.start()
    await queue.enqueue(parse_bucket_uri("s3://bucket-one/a"), b"x" * 80, once=True, kind="archive")
    await queue.enqueue(parse_bucket_uri("s3://bucket-one/b"), b"y" * 80, once=True, kind="archive")
    await queue.stop(0)
    assert queue.pending == 1
    assert ("archive", "dropped") in outcomes


async def test_the_service_does_not_start_without_a_usable_spool_directory(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "not-a-directory"
    await asyncio.to_thread(blocker.write_bytes, b"")
    with pytest.raises(OSError):
        async with running_app(
            tmp_path,
            None,
            image_archive_uri="s3://evidence/images",
            storage_spool_dir=blocker / "uploads",
        ):
            pass
