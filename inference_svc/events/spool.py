"""A durable on-disk queue of serialized events, in SQLite.

SQLite gives atomic, fsynced appends and deletes without a hand-written file format; one
connection is used from one dedicated thread so no call ever blocks the event loop and the
connection is never shared between threads.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   TEXT NOT NULL UNIQUE,
    payload    BLOB NOT NULL,
    created_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class SpooledEvent:
    seq: int
    event_id: str
    payload: bytes
    created_at: float


@dataclass(frozen=True)
class SpoolStats:
    count: int
    bytes: int
    oldest_created_at: float | None


class EventSpool:
    """Async facade over the SQLite spool. ``open`` before use, ``close`` at the end."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self._path = Path(directory) / "events.sqlite3"
        self._max_bytes = max_bytes
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="event-spool")
        self._conn: sqlite3.Connection | None = None
        # Kept in memory so the capacity check on the request path costs nothing.
        self._bytes = 0
        self._count = 0
        self._oldest: float | None = None

    @property
    def path(self) -> Path:
        return self._path

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    def stats(self) -> SpoolStats:
        return SpoolStats(self._count, self._bytes, self._oldest)

    def is_full(self) -> bool:
        return self._bytes >= self._max_bytes

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def open(self) -> SpoolStats:
        await self._run(self._open_sync)
        return self.stats()

    def _open_sync(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        # WAL + synchronous=FULL: a committed append survives power loss and SIGKILL.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(_SCHEMA)
        self._conn = conn
        self._refresh_stats_sync()

    def _refresh_stats_sync(self) -> None:
        assert self._conn is not None
        row = self._conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0), MIN(created_at) FROM events"
        ).fetchone()
        self._count, self._bytes, self._oldest = int(row[0]), int(row[1]), row[2]

    async def append(self, items: list[tuple[str, bytes]]) -> None:
        """Appends (event_id, payload) pairs in one transaction; a repeated id is ignored."""
        if items:
            await self._run(self._append_sync, items)

    def _append_sync(self, items: list[tuple[str, bytes]]) -> None:
        assert self._conn is not None
        now = time.time()
        with _Transaction(self._conn):
            self._conn.executemany(
                "INSERT OR IGNORE INTO events (event_id, payload, created_at) VALUES (?, ?, ?)",
                [(event_id, payload, now) for event_id, payload in items],
            )
        self._refresh_stats_sync()

    async def peek(self, limit: int) -> list[SpooledEvent]:
        return await self._run(self._peek_sync, limit)

    def _peek_sync(self, limit: int) -> list[SpooledEvent]:
        assert self._conn is not None
        rows = self._conn.execute(
            "SELECT seq, event_id, payload, created_at FROM events ORDER BY seq LIMIT ?", (limit,)
        ).fetchall()
        return [SpooledEvent(int(r[0]), str(r[1]), bytes(r[2]), float(r[3])) for r in rows]

    async def delete(self, seqs: list[int]) -> None:
        if seqs:
            await self._run(self._delete_sync, seqs)

    def _delete_sync(self, seqs: list[int]) -> None:
        assert self._conn is not None
        with _Transaction(self._conn):
            self._conn.executemany("DELETE FROM events WHERE seq = ?", [(s,) for s in seqs])
        self._refresh_stats_sync()

    async def close(self) -> None:
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)


class _Transaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
