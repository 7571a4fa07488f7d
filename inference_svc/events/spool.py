"""A durable on-disk queue of serialized events, in SQLite, with a dead-letter table.

SQLite gives atomic, fsynced appends and deletes without a hand-written file format; one
connection is used from one dedicated thread so no call ever blocks the event loop and the
connection is never shared between threads.

Events the persistence service refuses for good (a bad payload) are moved, in one
transaction, to ``dead_letters`` in the same file: kept for operators, never dropped, and no
longer counted against the spool bound or blocking the events behind them.
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

SPOOL_FILE = "events.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   TEXT NOT NULL UNIQUE,
    payload    BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq           INTEGER PRIMARY KEY,
    event_id      TEXT NOT NULL,
    payload       BLOB NOT NULL,
    created_at    REAL NOT NULL,
    dead_at       REAL NOT NULL,
    error_code    TEXT NOT NULL,
    error_message TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class SpooledEvent:
    seq: int
    event_id: str
    payload: bytes
    created_at: float


@dataclass(frozen=True)
class DeadLetter:
    seq: int
    event_id: str
    payload: bytes
    created_at: float
    dead_at: float
    error_code: str
    error_message: str


@dataclass(frozen=True)
class SpoolStats:
    count: int
    bytes: int
    oldest_created_at: float | None
    dead_letters: int = 0
    dead_letter_bytes: int = 0


class EventSpool:
    """Async facade over the SQLite spool. ``open`` before use, ``close`` at the end.

    Counts and sizes are kept in memory (read on open, then updated by each write) so that the
    capacity check on the request path and a metrics scrape cost nothing, and no write has to
    scan the table.
    """

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self._path = Path(directory) / SPOOL_FILE
        self._max_bytes = max_bytes
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="event-spool")
        self._conn: sqlite3.Connection | None = None
        self._stats = SpoolStats(0, 0, None)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    def stats(self) -> SpoolStats:
        # One attribute holding an immutable snapshot: a reader in another thread (a metrics
        # scrape) never sees a count from one write and a size from another.
        return self._stats

    def is_full(self) -> bool:
        return self._stats.bytes >= self._max_bytes

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
        count, size = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM events"
        ).fetchone()
        dead, dead_size = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM dead_letters"
        ).fetchone()
        self._stats = SpoolStats(
            int(count), int(size), self._oldest_sync(), int(dead), int(dead_size)
        )

    def _oldest_sync(self) -> float | None:
        assert self._conn is not None
        row = self._conn.execute("SELECT created_at FROM events ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else float(row[0])

    def _update(self, d_count: int, d_bytes: int, d_dead: int = 0, d_dead_bytes: int = 0) -> None:
        s = self._stats
        self._stats = SpoolStats(
            s.count + d_count,
            s.bytes + d_bytes,
            self._oldest_sync(),
            s.dead_letters + d_dead,
            s.dead_letter_bytes + d_dead_bytes,
        )

    async def append(self, items: list[tuple[str, bytes]]) -> None:
        """Appends (event_id, payload) pairs in one transaction; a repeated id is ignored."""
        if items:
            await self._run(self._append_sync, items)

    def _append_sync(self, items: list[tuple[str, bytes]]) -> None:
        conn = self._conn
        assert conn is not None
        now = time.time()
        added = added_bytes = 0
        with _Transaction(conn):
            for event_id, payload in items:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO events (event_id, payload, created_at) VALUES (?, ?, ?)",
                    (event_id, payload, now),
                )
                if cur.rowcount == 1:
                    added += 1
                    added_bytes += len(payload)
        self._update(added, added_bytes)

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
        conn = self._conn
        assert conn is not None
        removed = removed_bytes = 0
        with _Transaction(conn):
            for seq in seqs:
                row = conn.execute(
                    "DELETE FROM events WHERE seq = ? RETURNING LENGTH(payload)", (seq,)
                ).fetchone()
                if row is not None:
                    removed += 1
                    removed_bytes += int(row[0])
        self._update(-removed, -removed_bytes)

    async def dead_letter(self, seq: int, error_code: str, error_message: str) -> bool:
        """Moves one event to the dead-letter table; False when it was no longer spooled."""
        return await self._run(self._dead_letter_sync, seq, error_code, error_message)

    def _dead_letter_sync(self, seq: int, error_code: str, error_message: str) -> bool:
        conn = self._conn
        assert conn is not None
        with _Transaction(conn):
            row = conn.execute(
                "DELETE FROM events WHERE seq = ? RETURNING event_id, payload, created_at", (seq,)
            ).fetchone()
            if row is None:
                return False
            conn.execute(
                "INSERT OR REPLACE INTO dead_letters (seq, event_id, payload, created_at, dead_at,"
                " error_code, error_message) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (seq, row[0], row[1], row[2], time.time(), error_code, error_message[:2000]),
            )
        size = len(row[1])
        self._update(-1, -size, 1, size)
        return True

    async def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        """The dead-lettered events, oldest first (for operators and tests)."""
        return await self._run(self._dead_letters_sync, limit)

    def _dead_letters_sync(self, limit: int) -> list[DeadLetter]:
        assert self._conn is not None
        rows = self._conn.execute(
            "SELECT seq, event_id, payload, created_at, dead_at, error_code, error_message"
            " FROM dead_letters ORDER BY seq LIMIT ?",
            (limit,),
        ).fetchall()
        return [
            DeadLetter(int(r[0]), str(r[1]), bytes(r[2]), float(r[3]), float(r[4]), r[5], r[6])
            for r in rows
        ]

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
