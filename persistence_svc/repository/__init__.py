"""The persistence service's database access (asyncpg): every SQL statement lives in this package.

Repository is the service's one entry point: it runs each piece of work in a transaction on a
pooled connection, retrying on conflicts and lost connections (connection.py says which errors
are which). writes.py applies RecordEvents batches, reads.py answers GetInspection and
ListInspections, and sql.py holds the statement text both run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar
from uuid import UUID

import asyncpg

from persistence_svc import image_hashes, paging
from persistence_svc.errors import DatabaseUnavailableError, FieldViolation, InvalidArgumentError
from persistence_svc.records import (
    EventKind,
    EventRecord,
    InspectionDetail,
    InspectionPage,
    RecordOutcome,
)
from persistence_svc.repository.connection import CONFLICT_ERRORS, DbConnection, is_connection_error
from persistence_svc.repository.reads import (
    build_page,
    fetch_detail,
    fetch_page_records,
    fetch_window_records,
)
from persistence_svc.repository.writes import EventRejectedError, apply_batch

__all__ = ["Repository", "WriteObserver"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
WriteObserver = Callable[[float], None]


class Repository:
    """Reads and writes inspections. Raises DatabaseUnavailableError when the database cannot be
    reached, InvalidArgumentError when the database refuses an event or a page token is bad."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        transaction_retries: int = 2,
        acquire_timeout_s: float = 30.0,
        on_write: WriteObserver | None = None,
    ) -> None:
        self._pool = pool
        self._retries = transaction_retries
        self._acquire_timeout_s = acquire_timeout_s
        self._on_write = on_write

    # --- plumbing

    async def _run(
        self,
        work: Callable[[DbConnection], Awaitable[_T]],
        *,
        readonly: bool = False,
    ) -> _T:
        attempt = 0
        while True:
            try:
                async with (
                    self._pool.acquire(timeout=self._acquire_timeout_s) as conn,
                    conn.transaction(
                        isolation="repeatable_read" if readonly else "read_committed",
                        readonly=readonly,
                    ),
                ):
                    return await work(conn)
            except CONFLICT_ERRORS as exc:
                if attempt >= self._retries:
                    raise DatabaseUnavailableError(f"transaction kept conflicting: {exc}") from exc
                logger.info("transaction conflict, retrying: %s", exc)
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                if attempt >= self._retries:
                    raise DatabaseUnavailableError(f"database unavailable: {exc}") from exc
                logger.warning("database connection lost, retrying on a new one: %s", exc)
                # A server restart or pg_terminate_backend kills every pooled connection at once.
                await self._pool.expire_connections()
                await asyncio.sleep(0.05 * 2**attempt)
            attempt += 1

    async def transact(
        self, work: Callable[[DbConnection], Awaitable[_T]], *, readonly: bool = False
    ) -> _T:
        """Runs ``work`` in one transaction with the retries of every call here (the job
        queue's statements are in repository/jobs.py)."""
        return await self._run(work, readonly=readonly)

    # --- writes

    async def record_events(self, events: list[EventRecord]) -> RecordOutcome:
        """Applies the events not applied before, all in one transaction."""
        if not events:
            return RecordOutcome(applied=0, duplicates=0)
        started = time.perf_counter()
        try:
            applied_ids = await self._run(lambda conn: apply_batch(conn, events))
        except EventRejectedError as exc:
            raise InvalidArgumentError(
                f"event {exc.index} was refused by the database: {exc.cause}",
                [FieldViolation(f"events[{exc.index}]", str(exc.cause))],
            ) from exc.cause
        if self._on_write is not None:
            self._on_write(time.perf_counter() - started)
        applied_by_kind: Counter[EventKind] = Counter()
        duplicates_by_kind: Counter[EventKind] = Counter()
        for event in events:
            if event.event_id in applied_ids:
                applied_by_kind[event.kind] += 1
                # A repeat of the same id later in the batch is a duplicate.
                applied_ids.discard(event.event_id)
            else:
                duplicates_by_kind[event.kind] += 1
        applied = sum(applied_by_kind.values())
        return RecordOutcome(
            applied=applied,
            duplicates=len(events) - applied,
            applied_by_kind=dict(applied_by_kind),
            duplicates_by_kind=dict(duplicates_by_kind),
        )

    # --- reads

    async def get_inspection(self, inspection_id: UUID) -> InspectionDetail | None:
        return await self._run(lambda conn: fetch_detail(conn, inspection_id), readonly=True)

    async def list_inspections(
        self, shipping_id: str, page_size: int, page_token: str = ""
    ) -> InspectionPage:
        """One page of a shipment's inspections, newest first. ``page_token`` must come from a
        previous page of the same shipping_id (InvalidArgumentError otherwise)."""
        fingerprint = paging.filter_fingerprint(shipping_id)
        cursor = paging.decode_page_token(page_token, fingerprint) if page_token else None
        records: list[asyncpg.Record] = await self._run(
            lambda conn: fetch_page_records(conn, shipping_id, page_size, cursor), readonly=True
        )
        return build_page(records, page_size, fingerprint)

    async def list_inspections_between(
        self, start: datetime, end: datetime, page_size: int, page_token: str = ""
    ) -> InspectionPage:
        """One page of the inspections created in [start, end), newest first."""
        fingerprint = paging.filter_fingerprint(f"window\x00{start.isoformat()}/{end.isoformat()}")
        cursor = paging.decode_page_token(page_token, fingerprint) if page_token else None
        records: list[asyncpg.Record] = await self._run(
            lambda conn: fetch_window_records(conn, start, end, page_size, cursor), readonly=True
        )
        return build_page(records, page_size, fingerprint)

    async def find_similar_pickup_images(
        self,
        hashes: list[tuple[int, int]],
        max_distance: int,
        shipping_id: str,
        limit: int,
    ) -> list[image_hashes.HashMatch]:
        """Stored pickup images of other shipments near each (index, hash) (the banded index
        of migration 0003)."""
        return await self._run(
            lambda conn: image_hashes.find_similar(conn, hashes, max_distance, shipping_id, limit),
            readonly=True,
        )

    async def ping(self) -> None:
        """Raises DatabaseUnavailableError unless a query round-trips."""
        await self._run(lambda conn: conn.fetchval("SELECT 1"), readonly=True)
