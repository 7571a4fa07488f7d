"""The evidence archive and the result export, as decorators of the fetcher and the recorder.

Archive (IMAGE_ARCHIVE_URI): every image an inspection obtained, inline or fetched, goes to
``<prefix>/<sha256>``, the digest the record already holds, so the same photo sent twice is
stored once and the record's ``archived_uri`` is known before the upload happens.
Export (RESULT_EXPORT_URI): the final inspection, as the proto's canonical JSON mapping, goes to
``<prefix>/<shipping_id>/<inspection_id>.json`` and the result record carries that URI; an
asynchronous job's own target (storage.exports, fixed at submit) replaces the setting's.
Both only enqueue on the durable upload queue: no inspection waits on a store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import urllib.parse
from collections import OrderedDict
from typing import Protocol

from google.protobuf import json_format

from inference_svc.domain.errors import Stage
from inference_svc.domain.models import (
    AttemptRecord,
    FetchedImage,
    ImageSource,
    Inspection,
    InspectionRequest,
    ModelInfo,
)
from inference_svc.domain.recording import ImageInfo, Recorder
from inference_svc.proto_convert import inspection_to_proto
from inference_svc.storage.stores import BucketUri, parse_bucket_uri
from inference_svc.storage.uploads import UploadQueue

# Digests enqueued recently: a photo seen again is not spooled again (put-if-not-exists at the
# store makes a repeat harmless anyway; this only saves the local write).
_RECENT_DIGESTS = 4096


class ImageSourceFetcher(Protocol):
    """The pipeline's image port (pipeline.images), restated: storage sits below the pipeline."""

    async def fetch(self, source: ImageSource) -> FetchedImage: ...


def archive_uri(prefix: BucketUri, sha256: str) -> BucketUri:
    return prefix.child(sha256)


def export_target(prefix: BucketUri, shipping_id: str, inspection_id: str) -> BucketUri:
    # The shipping id is the caller's text: percent-encoded, it stays one key segment.
    return prefix.child(urllib.parse.quote(shipping_id, safe=""), f"{inspection_id}.json")


def inspection_json(inspection: Inspection) -> bytes:
    return json_format.MessageToJson(inspection_to_proto(inspection), indent=2).encode()


class ArchivingFetcher:
    """Fetches through ``inner``, hashes each image in a worker thread (the digest then rides
    on the FetchedImage, so tiling does not hash it again) and queues it for the archive."""

    def __init__(self, inner: ImageSourceFetcher, prefix: BucketUri, queue: UploadQueue) -> None:
        self._inner = inner
        self._prefix = prefix
        self._queue = queue
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    async def fetch(self, source: ImageSource) -> FetchedImage:
        fetched = await self._inner.fetch(source)
        digest = fetched.sha256 or await asyncio.to_thread(_sha256, fetched.data)
        if digest not in self._recent:
            self._recent[digest] = None
            if len(self._recent) > _RECENT_DIGESTS:
                self._recent.popitem(last=False)
            task = asyncio.create_task(
                self._queue.enqueue(
                    archive_uri(self._prefix, digest), fetched.data, once=True, kind="archive"
                )
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._recent.move_to_end(digest)
        return dataclasses.replace(fetched, sha256=digest)

    async def flush(self) -> None:
        """Waits for the spool writes in flight (before a stop)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class StorageRecorder:
    """A Recorder that adds the archive links to image records and exports each result."""

    def __init__(
        self,
        inner: Recorder,
        queue: UploadQueue,
        archive: BucketUri | None,
        export: BucketUri | None,
    ) -> None:
        self._inner = inner
        self._queue = queue
        self._archive = archive
        self._export = export

    def ensure_capacity(self) -> None:
        self._inner.ensure_capacity()

    async def request_received(
        self, request: InspectionRequest, method: str, images: list[ImageInfo]
    ) -> None:
        if self._archive is not None:
            prefix = self._archive
            images = [
                dataclasses.replace(i, archived_uri=archive_uri(prefix, i.sha256).geturl())
                if i.sha256
                else i
                for i in images
            ]
        await self._inner.request_received(request, method, images)

    async def attempt(self, inspection_id: str, attempt: AttemptRecord, model: ModelInfo) -> None:
        await self._inner.attempt(inspection_id, attempt, model)

    async def result(self, inspection: Inspection, export_uri: str = "") -> None:
        # ``export_uri``: an async job's own target (checked at submit) wins over the setting's.
        target = parse_bucket_uri(export_uri) if export_uri else None
        if target is None and self._export is not None:
            target = export_target(self._export, inspection.shipping_id, inspection.inspection_id)
        if target is not None:
            await self._queue.enqueue(
                target, inspection_json(inspection), once=False, kind="export"
            )
            export_uri = target.geturl()
        await self._inner.result(inspection, export_uri)

    async def failure(
        self, inspection_id: str, stage: Stage, reason: str, message: str, status_code: str
    ) -> None:
        await self._inner.failure(inspection_id, stage, reason, message, status_code)
