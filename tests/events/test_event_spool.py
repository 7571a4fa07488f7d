"""The SQLite spool: durable appends, idempotent ids, figures kept without scans, dead letters."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from inference_svc.events.spool import SPOOL_FILE, EventSpool


async def test_appends_survive_reopen_and_repeated_ids_are_ignored(tmp_path: Path) -> None:
    spool = EventSpool(tmp_path, max_bytes=1 << 20)
    await spool.open()
    await spool.append([("a", b"1234"), ("b", b"56")])
    await spool.append([("a", b"1234"), ("c", b"789")])
    stats = spool.stats()
    assert (stats.count, stats.bytes) == (3, 9)
    assert stats.oldest_created_at is not None
    await spool.close()

    reopened = EventSpool(tmp_path, max_bytes=1 << 20)
    stats = await reopened.open()
    assert (stats.count, stats.bytes) == (3, 9)
    events = await reopened.peek(10)
    assert [e.event_id for e in events] == ["a", "b", "c"]
    assert [e.payload for e in events] == [b"1234", b"56", b"789"]
    await reopened.close()


async def test_delete_updates_figures_and_bound(tmp_path: Path) -> None:
    spool = EventSpool(tmp_path, max_bytes=10)
    await spool.open()
    await spool.append([("a", b"x" * 6), ("b", b"y" * 5)])
    assert spool.is_full()
    first, second = await spool.peek(10)
    await spool.delete([first.seq, first.seq])
    stats = spool.stats()
    assert (stats.count, stats.bytes) == (1, 5)
    assert stats.oldest_created_at == second.created_at
    assert not spool.is_full()
    await spool.delete([second.seq])
    stats = spool.stats()
    assert (stats.count, stats.bytes, stats.oldest_created_at) == (0, 0, None)
    await spool.close()


async def test_dead_letter_moves_the_event_and_keeps_it(tmp_path: Path) -> None:
    spool = EventSpool(tmp_path, max_bytes=1 << 20)
    await spool.open()
    await spool.append([("good", b"ok"), ("bad", b"broken")])
    _, bad = await spool.peek(10)
    assert await spool.dead_letter(bad.seq, "INVALID_ARGUMENT", "events[0].kind: is required")
    assert not await spool.dead_letter(bad.seq, "INVALID_ARGUMENT", "again")
    stats = spool.stats()
    assert (stats.count, stats.bytes, stats.dead_letters, stats.dead_letter_bytes) == (1, 2, 1, 6)
    await spool.close()

    reopened = EventSpool(tmp_path, max_bytes=1 << 20)
    stats = await reopened.open()
    assert (stats.count, stats.dead_letters) == (1, 1)
    (letter,) = await reopened.dead_letters()
    assert (letter.event_id, letter.payload, letter.error_code) == (
        "bad",
        b"broken",
        "INVALID_ARGUMENT",
    )
    assert "is required" in letter.error_message
    assert [e.event_id for e in await reopened.peek(10)] == ["good"]
    await reopened.close()
    # Operators read dead letters with plain sqlite3.
    with sqlite3.connect(tmp_path / SPOOL_FILE) as conn:
        assert conn.execute("SELECT event_id FROM dead_letters").fetchall() == [("bad",)]
