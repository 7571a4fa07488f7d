"""Builds the storage components from the settings (called by the composition root)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from inference_svc.domain.recording import Recorder
from inference_svc.settings import InferenceSettings
from inference_svc.storage.evidence import ArchivingFetcher, ImageSourceFetcher, StorageRecorder
from inference_svc.storage.exports import ExportTargets
from inference_svc.storage.metrics import StorageMetrics
from inference_svc.storage.stores import (
    BUCKET_SCHEMES,
    BucketUri,
    StoreCache,
    StoreConfig,
    parse_bucket_uri,
    scheme_of,
)
from inference_svc.storage.uploads import UploadHooks, UploadQueue


@dataclass
class Storage:
    stores: StoreCache
    queue: UploadQueue | None
    archive: BucketUri | None
    export: BucketUri | None
    export_targets: ExportTargets
    archiving: ArchivingFetcher | None = None

    @classmethod
    def from_settings(cls, s: InferenceSettings, registry: CollectorRegistry) -> Storage:
        unknown = set(s.storage_endpoints) - set(BUCKET_SCHEMES)
        if unknown:
            raise ValueError(f"STORAGE_ENDPOINTS: unknown schemes {sorted(unknown)}")
        stores = StoreCache(
            StoreConfig(
                endpoints=dict(s.storage_endpoints),
                allow_http=s.storage_allow_http,
                connect_timeout_s=s.fetch_connect_timeout_s,
                # The fetch deadline is the caller's bound; the client's own is a backstop.
                request_timeout_s=s.fetch_timeout_s + 5.0,
            )
        )
        # Bad prefixes stop the start (BadBucketUri, a ValueError), not the first upload.
        archive = parse_bucket_uri(s.image_archive_uri) if s.image_archive_uri else None
        export = parse_bucket_uri(s.result_export_uri) if s.result_export_uri else None
        targets = ExportTargets(export, tuple(s.allowed_export_buckets))
        queue = None
        if archive is not None or export is not None or s.allowed_export_buckets:
            metrics = StorageMetrics(registry)
            queue = UploadQueue(
                s.storage_spool_dir,
                s.storage_spool_max_bytes,
                stores,
                hooks=UploadHooks(on_outcome=metrics.on_outcome),
            )
            metrics.bind(queue)
        return cls(stores, queue, archive, export, targets)

    @staticmethod
    def bucket_schemes(s: InferenceSettings) -> tuple[str, ...]:
        """The URI schemes requests may use for images besides https."""
        return tuple(sorted({scheme_of(entry) for entry in s.allowed_buckets}))

    def fetcher(self, inner: ImageSourceFetcher) -> ImageSourceFetcher:
        if self.archive is None or self.queue is None:
            return inner
        self.archiving = ArchivingFetcher(inner, self.archive, self.queue)
        return self.archiving

    def recorder(self, inner: Recorder) -> Recorder:
        if self.queue is None:
            return inner
        return StorageRecorder(inner, self.queue, self.archive, self.export)

    async def start(self) -> None:
        if self.queue is not None:
            await self.queue.start()

    async def drained(self) -> None:
        """Returns once every object queued so far is in its store."""
        if self.archiving is not None:
            await self.archiving.flush()
        if self.queue is not None:
            await self.queue.drained()

    async def stop(self, timeout_s: float) -> None:
        if self.archiving is not None:
            await self.archiving.flush()
        if self.queue is not None:
            await self.queue.stop(timeout_s)
