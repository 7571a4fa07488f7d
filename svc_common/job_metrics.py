"""Prometheus metrics of the asynchronous inspections (docs/operations-async.md): the queue as
the persistence service sees it (``rpi_jobs_*``), and the workers in the inference pods
(``rpi_inference_jobs_*``)."""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

QUEUED: Final = "rpi_jobs_queued"
RUNNING: Final = "rpi_jobs_running"
OLDEST_QUEUED_SECONDS: Final = "rpi_jobs_oldest_queued_seconds"
CREATED_TOTAL: Final = "rpi_jobs_created_total"
CLAIMED_TOTAL: Final = "rpi_jobs_claimed_total"
LEASE_EXPIRIES_TOTAL: Final = "rpi_jobs_lease_expiries_total"
FINISHED_TOTAL: Final = "rpi_jobs_finished_total"
WEBHOOK_REPORTS_TOTAL: Final = "rpi_jobs_webhook_attempts_total"
WEBHOOK_DEAD_LETTERS: Final = "rpi_jobs_webhook_dead_letters"
WORKER_RUNNING: Final = "rpi_inference_jobs_running"
WORKER_WAIT_SECONDS: Final = "rpi_inference_jobs_wait_seconds"
WORKER_RUNS_TOTAL: Final = "rpi_inference_jobs_runs_total"
WEBHOOKS_TOTAL: Final = "rpi_inference_webhook_attempts_total"

METRIC_TYPES: Final[dict[str, str]] = {
    QUEUED: "gauge",
    RUNNING: "gauge",
    OLDEST_QUEUED_SECONDS: "gauge",
    CREATED_TOTAL: "counter",
    CLAIMED_TOTAL: "counter",
    LEASE_EXPIRIES_TOTAL: "counter",
    FINISHED_TOTAL: "counter",
    WEBHOOK_REPORTS_TOTAL: "counter",
    WEBHOOK_DEAD_LETTERS: "gauge",
    WORKER_RUNNING: "gauge",
    WORKER_WAIT_SECONDS: "histogram",
    WORKER_RUNS_TOTAL: "counter",
    WEBHOOKS_TOTAL: "counter",
}

FINISH_STATES: Final = ("succeeded", "failed", "cancelled", "retried")
WEBHOOK_STATES: Final = ("delivered", "pending", "dead_letter")
RUN_OUTCOMES: Final = ("succeeded", "failed", "retry", "cancelled", "lease_lost")

# Queue wait: sub-second when engines have room, minutes when the queue builds up.
_WAIT_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)


class JobQueueMetrics:
    """The persistence service's view: depth, age, claims, lease expiries, ends."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.queued = Gauge(
            QUEUED,
            "Asynchronous inspections waiting for an engine (last sweep).",
            registry=registry,
        )
        self.running = Gauge(
            RUNNING, "Asynchronous inspections leased to a worker (last sweep).", registry=registry
        )
        self.oldest_queued = Gauge(
            OLDEST_QUEUED_SECONDS,
            "Age of the oldest queued asynchronous inspection, in seconds (last sweep).",
            registry=registry,
        )
        self.created = Counter(CREATED_TOTAL, "Asynchronous inspections queued.", registry=registry)
        self.claimed = Counter(
            CLAIMED_TOTAL,
            "Runs started by a claim; retried and reclaimed runs included.",
            registry=registry,
        )
        self.lease_expiries = Counter(
            LEASE_EXPIRIES_TOTAL,
            "Runs whose worker's lease ran out (the replica was lost or stalled).",
            registry=registry,
        )
        self.finished = Counter(
            FINISHED_TOTAL,
            "Runs ended, by state (retried: queued again for another attempt).",
            ["state"],
            registry=registry,
        )
        for state in FINISH_STATES:
            self.finished.labels(state=state)
        self.webhook_attempts = Counter(
            WEBHOOK_REPORTS_TOTAL,
            "Webhook delivery attempts, by the delivery's state after it (delivered; pending: "
            "failed, retried later; dead_letter: gone or out of retries).",
            ["state"],
            registry=registry,
        )
        for state in WEBHOOK_STATES:
            self.webhook_attempts.labels(state=state)
        self.dead_letters = Gauge(
            WEBHOOK_DEAD_LETTERS,
            "Webhook deliveries given up on (410 Gone or every retry failed), kept until their "
            "job expires (last sweep).",
            registry=registry,
        )

    def on_webhook(self, state: str) -> None:
        if state in WEBHOOK_STATES:
            self.webhook_attempts.labels(state=state).inc()

    def on_claimed(self, claimed: int, reclaimed: int) -> None:
        self.claimed.inc(claimed)
        self.lease_expiries.inc(reclaimed)

    def set_queue(self, queued: int, running: int, oldest_queued_s: float) -> None:
        self.queued.set(queued)
        self.running.set(running)
        self.oldest_queued.set(oldest_queued_s)

    def on_finished(self, state: str) -> None:
        if state in FINISH_STATES:
            self.finished.labels(state=state).inc()


class JobWorkerMetrics:
    """An inference pod's worker: runs in progress, queue wait, run outcomes."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.running = Gauge(
            WORKER_RUNNING, "Asynchronous inspections this replica runs now.", registry=registry
        )
        self.wait_seconds = Histogram(
            WORKER_WAIT_SECONDS,
            "From submit to the start of its first run, in seconds.",
            buckets=_WAIT_BUCKETS,
            registry=registry,
        )
        self.runs = Counter(
            WORKER_RUNS_TOTAL,
            "Runs of asynchronous inspections on this replica, by outcome.",
            ["outcome"],
            registry=registry,
        )
        for outcome in RUN_OUTCOMES:
            self.runs.labels(outcome=outcome)


WEBHOOK_OUTCOMES: Final = ("delivered", "failed", "gone")


class WebhookMetrics:
    """An inference pod's webhook attempts, by outcome."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.attempts = Counter(
            WEBHOOKS_TOTAL,
            "Webhook POSTs made by this replica, by outcome (failed: any non-2xx answer but "
            "410, a redirect, a timeout or no connection; gone: 410).",
            ["outcome"],
            registry=registry,
        )
        for outcome in WEBHOOK_OUTCOMES:
            self.attempts.labels(outcome=outcome)

    def on_outcome(self, outcome: str) -> None:
        if outcome in WEBHOOK_OUTCOMES:
            self.attempts.labels(outcome=outcome).inc()
