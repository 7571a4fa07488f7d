"""Metrics of the object-storage upload queue (evidence archive, result export).

The backlog gauges are read from the queue at scrape time, so they keep moving while a store
is down and nothing is written, which is when the alert needs them.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge

from inference_svc.storage.uploads import UploadQueue

STORAGE_UPLOADS_TOTAL: Final = "rpi_inference_storage_uploads_total"
STORAGE_UPLOAD_BACKLOG: Final = "rpi_inference_storage_upload_backlog"
STORAGE_UPLOAD_BACKLOG_BYTES: Final = "rpi_inference_storage_upload_backlog_bytes"
STORAGE_UPLOAD_OLDEST_AGE: Final = "rpi_inference_storage_upload_oldest_age_seconds"

METRIC_TYPES: Final[dict[str, str]] = {
    STORAGE_UPLOADS_TOTAL: "counter",
    STORAGE_UPLOAD_BACKLOG: "gauge",
    STORAGE_UPLOAD_BACKLOG_BYTES: "gauge",
    STORAGE_UPLOAD_OLDEST_AGE: "gauge",
}

UPLOAD_KINDS: Final = ("archive", "export")
UPLOAD_OUTCOMES: Final = ("written", "present", "failed", "dropped")


class StorageMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.uploads = Counter(
            STORAGE_UPLOADS_TOTAL.removesuffix("_total"),
            "Object-store uploads by kind and outcome: written, present (an identical archived "
            "image was already there), failed (retried later), dropped (spool full or unwritable).",
            ["kind", "outcome"],
            registry=registry,
        )
        for kind in UPLOAD_KINDS:
            for outcome in UPLOAD_OUTCOMES:
                self.uploads.labels(kind=kind, outcome=outcome)
        self.backlog = Gauge(
            STORAGE_UPLOAD_BACKLOG, "Objects waiting in the upload spool.", registry=registry
        )
        self.backlog_bytes = Gauge(
            STORAGE_UPLOAD_BACKLOG_BYTES, "Bytes waiting in the upload spool.", registry=registry
        )
        self.oldest_age = Gauge(
            STORAGE_UPLOAD_OLDEST_AGE,
            "Age of the oldest object waiting in the upload spool (0 when empty).",
            registry=registry,
        )

    def on_outcome(self, kind: str, outcome: str) -> None:
        self.uploads.labels(kind=kind, outcome=outcome).inc()

    def bind(self, queue: UploadQueue) -> None:
        self.backlog.set_function(lambda: float(queue.pending))
        self.backlog_bytes.set_function(lambda: float(queue.pending_bytes))
        self.oldest_age.set_function(queue.oldest_age_s)
