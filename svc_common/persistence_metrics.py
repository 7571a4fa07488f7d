"""Prometheus metrics of persistence_svc (besides the gRPC server ones), prefixed
``rpi_persistence_``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from svc_common._labels import bounded

WRITE_SECONDS: Final = "rpi_persistence_write_seconds"
EVENTS_TOTAL: Final = "rpi_persistence_events_total"
BATCH_SIZE: Final = "rpi_persistence_batch_size"
DB_UP: Final = "rpi_persistence_db_up"

METRIC_TYPES: Final[dict[str, str]] = {
    WRITE_SECONDS: "histogram",
    EVENTS_TOTAL: "counter",
    BATCH_SIZE: "histogram",
    DB_UP: "gauge",
}

# The payload cases of rpi.persistence.v1.Event.
EVENT_KINDS: Final = ("request_received", "attempt_recorded", "result_recorded", "failure_recorded")
OUTCOMES: Final = ("applied", "duplicate")

# One transaction: a few ms on a healthy database; seconds mean lock waits or a sick disk.
_WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _batch_buckets(max_batch_size: int) -> tuple[float, ...]:
    powers = [float(2**k) for k in range(max_batch_size.bit_length()) if 2**k < max_batch_size]
    return (*powers, float(max_batch_size))


class PersistenceMetrics:
    def __init__(self, registry: CollectorRegistry, max_batch_size: int = 256) -> None:
        self.registry = registry
        self.write_seconds = Histogram(
            WRITE_SECONDS,
            "Time to write one RecordEvents batch (one transaction), in seconds.",
            buckets=_WRITE_BUCKETS,
            registry=registry,
        )
        self.events = Counter(
            EVENTS_TOTAL,
            "Events received, by payload kind and outcome (applied, or duplicate of an event "
            "already applied).",
            ["kind", "outcome"],
            registry=registry,
        )
        self.batch_size = Histogram(
            BATCH_SIZE,
            "Events per RecordEvents call.",
            buckets=_batch_buckets(max_batch_size),
            registry=registry,
        )
        self.db_up = Gauge(
            DB_UP, "1 when the last database check or write succeeded, else 0.", registry=registry
        )
        for kind in EVENT_KINDS:
            for outcome in OUTCOMES:
                self.events.labels(kind=kind, outcome=outcome)

    @contextmanager
    def time_write(self) -> Iterator[None]:
        with self.write_seconds.time():
            yield

    def record_event(self, kind: str, outcome: str) -> None:
        """``kind``: the Event payload case (``event.WhichOneof("payload")``);
        ``outcome``: "applied" or "duplicate"."""
        self.events.labels(
            kind=bounded(kind, EVENT_KINDS), outcome=bounded(outcome, OUTCOMES)
        ).inc()
