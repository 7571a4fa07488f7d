"""The retention sweeper: removes what is older than its kind's retention, in bounded batches.

Kinds (docs/storage.md): ``attempt_payloads`` empties the prompts and raw/parsed model outputs
of attempts (RETENTION_ATTEMPT_PAYLOAD_DAYS), the bulk of the database, while the decision
record stays; ``records`` deletes whole inspections (RETENTION_RECORD_DAYS); ``event_keys``
deletes old idempotency keys of recorded events (RETENTION_EVENT_KEY_DAYS). 0 keeps a kind
forever, the default. Archived images and exported results live in buckets, whose lifecycle
rules (deploy/storage/) expire them.

Every replica may run the sweeper: batches skip rows another sweeper holds (repository.
retention), so nothing is removed twice and the removal counter adds up across replicas.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import asyncpg
from prometheus_client import CollectorRegistry, Counter

from persistence_svc.repository import retention as sql
from persistence_svc.repository.connection import DbConnection

log = logging.getLogger(__name__)

RETENTION_REMOVED_TOTAL: Final = "rpi_persistence_retention_removed_total"
RETENTION_SWEEPS_TOTAL: Final = "rpi_persistence_retention_sweeps_total"
KINDS: Final = ("attempt_payloads", "records", "event_keys")

Batch = Callable[[DbConnection, datetime, int], Awaitable[int]]
_BATCHES: Final[dict[str, Batch]] = {
    "attempt_payloads": sql.purge_attempt_payloads,
    "records": sql.delete_records,
    "event_keys": sql.delete_event_keys,
}


@dataclass(frozen=True)
class RetentionPolicy:
    attempt_payload_days: float = 0.0  # 0 = keep forever
    record_days: float = 0.0
    event_key_days: float = 0.0
    batch_size: int = 500
    # A sweep stops after this many batches per kind, so one sweep never holds a connection
    # for long; the next sweep continues.
    max_batches: int = 100

    def cutoffs(self, now: datetime) -> dict[str, datetime]:
        days = {
            "attempt_payloads": self.attempt_payload_days,
            "records": self.record_days,
            "event_keys": self.event_key_days,
        }
        return {kind: now - timedelta(days=d) for kind, d in days.items() if d > 0}

    @property
    def enabled(self) -> bool:
        return bool(self.cutoffs(datetime.now(UTC)))


class RetentionMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.removed = Counter(
            RETENTION_REMOVED_TOTAL.removesuffix("_total"),
            "Rows the retention sweeper removed, by kind (attempt_payloads: attempts whose "
            "prompt and outputs were emptied; records: inspections deleted).",
            ["kind"],
            registry=registry,
        )
        for kind in KINDS:
            self.removed.labels(kind=kind)
        self.sweeps = Counter(
            RETENTION_SWEEPS_TOTAL.removesuffix("_total"),
            "Retention sweeps by outcome (ok, failed).",
            ["outcome"],
            registry=registry,
        )


class RetentionSweeper:
    def __init__(
        self, pool: asyncpg.Pool, policy: RetentionPolicy, metrics: RetentionMetrics
    ) -> None:
        self._pool = pool
        self._policy = policy
        self._metrics = metrics

    async def sweep(self, now: datetime | None = None) -> dict[str, int]:
        """One sweep over every kind with a retention; returns the rows removed per kind."""
        removed: dict[str, int] = {}
        for kind, cutoff in self._policy.cutoffs(now or datetime.now(UTC)).items():
            total = 0
            for _ in range(self._policy.max_batches):
                # One short transaction per batch: locks are held for one batch only.
                async with self._pool.acquire() as conn:
                    n = await _BATCHES[kind](conn, cutoff, self._policy.batch_size)
                total += n
                self._metrics.removed.labels(kind=kind).inc(n)
                if n < self._policy.batch_size:
                    break
            removed[kind] = total
        if any(removed.values()):
            log.info("retention sweep", extra={"removed": removed})
        return removed

    async def run(self, interval_s: float) -> None:
        """Sweeps every ``interval_s`` until cancelled; a failed sweep is retried next time."""
        while True:
            try:
                await self.sweep()
                self._metrics.sweeps.labels(outcome="ok").inc()
            except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError):
                self._metrics.sweeps.labels(outcome="failed").inc()
                log.exception("retention sweep failed; retrying at the next interval")
            await asyncio.sleep(interval_s)
