"""Applies the versioned SQL files of this package in order, once each.

Everything runs in one transaction that first takes a transaction-scoped advisory lock, so two
replicas starting at once apply the migrations exactly once (the second waits, then finds
nothing left to do) and a failed migration leaves no partial schema behind.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg
from asyncpg.pool import PoolConnectionProxy

logger = logging.getLogger(__name__)

# Arbitrary constant shared by every replica: the key of the advisory lock guarding migrations.
_LOCK_KEY = 0x7270695F6D696772  # "rpi_migr"
_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """The database's migration history does not match the files shipped with this build."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load() -> list[Migration]:
    """The migrations shipped in this package, in version order."""
    found: list[Migration] = []
    for entry in resources.files(__package__ or "persistence_svc.migrations").iterdir():
        match = _FILE_RE.match(entry.name)
        if match is None:
            continue
        found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions: {versions}")
    return found


async def apply_migrations(
    conn: asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record],
    migrations: list[Migration] | None = None,
) -> list[int]:
    """Applies the pending migrations; returns the versions applied by this call."""
    wanted = load() if migrations is None else migrations
    applied_now: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version    integer     PRIMARY KEY,
                name       text        NOT NULL,
                checksum   text        NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
        done = {int(r["version"]): str(r["checksum"]) for r in rows}
        known = {m.version for m in wanted}
        unknown = sorted(set(done) - known)
        if unknown:
            # A newer build migrated this database (e.g. an old pod restarting mid-rollout).
            # Migrations are written to stay compatible with the previous release, so go on.
            logger.warning("database has migrations this build does not know: %s", unknown)
        for migration in wanted:
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} was edited after "
                        "it was applied; add a new migration instead"
                    )
                continue
            logger.info("applying migration %04d_%s", migration.version, migration.name)
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
            applied_now.append(migration.version)
    return applied_now
