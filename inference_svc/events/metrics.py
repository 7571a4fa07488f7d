"""Metrics of event delivery that the shared InferenceMetrics does not define (dead letters,
link state), and the binding of the backlog gauges to live spool figures.

The backlog gauges are computed at scrape time (``set_function``) from the spool's in-memory
figures: a gauge set only on writes would freeze the oldest-event age exactly while the link
is down and nothing is delivered, which is when it matters.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge

from inference_svc.events.delivery import EventDelivery, LinkState
from svc_common.inference_metrics import InferenceMetrics

EVENT_DEAD_LETTERS_TOTAL: Final = "rpi_inference_event_dead_letters_total"
EVENT_DEAD_LETTERS: Final = "rpi_inference_event_dead_letter_backlog"
PERSISTENCE_LINK_UP: Final = "rpi_inference_persistence_link_up"

METRIC_TYPES: Final[dict[str, str]] = {
    EVENT_DEAD_LETTERS_TOTAL: "counter",
    EVENT_DEAD_LETTERS: "gauge",
    PERSISTENCE_LINK_UP: "gauge",
}

_LINK_VALUE: Final[dict[LinkState, float]] = {
    LinkState.UP: 1.0,
    LinkState.DOWN: 0.0,
    # Not known yet, or no persistence configured: neither up nor down.
    LinkState.UNKNOWN: -1.0,
    LinkState.DISABLED: -1.0,
}


class DeliveryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.dead_letters_total = Counter(
            EVENT_DEAD_LETTERS_TOTAL.removesuffix("_total"),
            "Events the persistence service refused for good, moved to the spool's dead-letter "
            "table, by gRPC code.",
            ["grpc_code"],
            registry=registry,
        )
        self.dead_letters = Gauge(
            EVENT_DEAD_LETTERS,
            "Events held in the spool's dead-letter table (an operator must look at them).",
            registry=registry,
        )
        self.link_up = Gauge(
            PERSISTENCE_LINK_UP,
            "Persistence link: 1 up, 0 down (events are being spooled), -1 unknown or disabled.",
            registry=registry,
        )
        self.link_up.set(-1)

    def on_dead_letter(self, event_id: str, code: str) -> None:
        self.dead_letters_total.labels(grpc_code=code).inc()

    def on_link_state(self, state: LinkState) -> None:
        self.link_up.set(_LINK_VALUE[state])

    def bind(self, delivery: EventDelivery, shared: InferenceMetrics) -> None:
        """Makes the backlog gauges read the live figures at every scrape."""
        shared.event_backlog.set_function(lambda: float(delivery.backlog()))
        shared.event_spool_bytes.set_function(lambda: float(delivery.spool.stats().bytes))
        shared.event_oldest_age_seconds.set_function(delivery.oldest_age_s)
        self.dead_letters.set_function(lambda: float(delivery.spool.stats().dead_letters))
