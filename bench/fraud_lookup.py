"""Reused-photo lookup benchmark: ``persistence_svc.image_hashes.find_similar`` against a table
seeded with random 64-bit hashes (1,000,000 by default), as migration 0003 creates it.

    .venv/bin/python -m bench.fraud_lookup
    .venv/bin/python -m bench.fraud_lookup --rows 100000 --queries 200 --distances 6 11

Half of the queries are a stored hash with ``distance`` bits flipped (a reused photo: at least
that one is found), half are fresh random hashes (a new photo: nothing near). Each lookup is one
hash over one connection, timed from the client. A throw-away database is created on
``--database-url``'s server (default TEST_DATABASE_URL, else postgres@127.0.0.1:5432) and
dropped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench.common import LatencySummary, argument_parser, fmt, table
from persistence_svc.image_hashes import MAX_DISTANCE, find_similar
from persistence_svc.migrations import apply_migrations

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
_SEED_CHUNK = 100_000

_SEED_SQL = """
WITH parents AS (
    INSERT INTO inspection_requests (inspection_id, shipping_id, request_recorded)
    SELECT gen_random_uuid(), 'bench-' || g, true FROM generate_series($1::int, $2::int) g
    RETURNING inspection_id, shipping_id
)
INSERT INTO pickup_image_hashes (inspection_id, image_index, shipping_id, phash)
SELECT inspection_id, 0, shipping_id,
       ('x' || substr(md5(random()::text || clock_timestamp()::text), 1, 16))::bit(64)::bigint
FROM parents
"""


@dataclass(frozen=True)
class Row:
    distance: int
    reused: LatencySummary
    fresh: LatencySummary
    found_reused: int
    found_fresh: int


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


async def seed(conn: asyncpg.Connection, rows: int) -> float:
    started = time.perf_counter()
    for first in range(1, rows + 1, _SEED_CHUNK):
        await conn.execute(_SEED_SQL, first, min(rows, first + _SEED_CHUNK - 1))
    await conn.execute("ANALYZE pickup_image_hashes")
    return time.perf_counter() - started


def _flip(value: int, bits: int, rng: random.Random) -> int:
    for bit in rng.sample(range(64), bits):
        value ^= 1 << bit
    return value


async def measure(conn: asyncpg.Connection, distance: int, queries: int, rng: random.Random) -> Row:
    sample = await conn.fetch(
        "SELECT shipping_id, phash FROM pickup_image_hashes TABLESAMPLE BERNOULLI (1) LIMIT $1",
        queries,
    )
    if not sample:
        sample = await conn.fetch(
            "SELECT shipping_id, phash FROM pickup_image_hashes LIMIT $1", queries
        )
    reused: list[float] = []
    fresh: list[float] = []
    found_reused = found_fresh = 0
    for i in range(queries):
        stored = sample[i % len(sample)]
        if i % 2 == 0:
            query = _flip(int(stored["phash"]) & ((1 << 64) - 1), distance, rng)
        else:
            query = rng.getrandbits(64)
        started = time.perf_counter()
        matches = await find_similar(conn, [(0, query)], distance, "bench-client")
        elapsed = time.perf_counter() - started
        if i % 2 == 0:
            reused.append(elapsed)
            found_reused += bool(matches)
        else:
            fresh.append(elapsed)
            found_fresh += bool(matches)
    return Row(
        distance, LatencySummary.of(reused), LatencySummary.of(fresh), found_reused, found_fresh
    )


async def run(url: str, rows: int, queries: int, distances: Sequence[int]) -> str:
    name = f"rpi_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        conn = await asyncpg.connect(_with_database(url, name))
        try:
            await apply_migrations(conn)
            seconds = await seed(conn, rows)
            rng = random.Random(23)
            results = [await measure(conn, d, queries, rng) for d in distances]
            stored = await conn.fetchval("SELECT count(*) FROM pickup_image_hashes")
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    header = (
        f"{stored:,} stored hashes (seeded in {seconds:.1f}s), {queries} lookups per distance, "
        "one hash per lookup"
    )
    body = table(
        [
            "max distance",
            "reused p50 ms",
            "reused p99 ms",
            "new p50 ms",
            "new p99 ms",
            "max ms",
            "reused found",
            "new found",
        ],
        [
            [
                str(r.distance),
                fmt(r.reused.p50_ms, 2),
                fmt(r.reused.p99_ms, 2),
                fmt(r.fresh.p50_ms, 2),
                fmt(r.fresh.p99_ms, 2),
                fmt(max(r.reused.max_ms, r.fresh.max_ms), 2),
                f"{r.found_reused}/{r.reused.count}",
                f"{r.found_fresh}/{r.fresh.count}",
            ]
            for r in results
        ],
    )
    worst = max(results, key=lambda r: r.distance)
    ratios = (
        f"RATIOS lookup p99 at max distance {worst.distance}: "
        f"{max(worst.reused.p99_ms, worst.fresh.p99_ms):.2f} ms over {stored:,} hashes"
    )
    return f"{header}\n\n{body}\n\n{ratios}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argument_parser("fraud_lookup", __doc__)
    parser.add_argument(
        "--database-url", default=os.environ.get("TEST_DATABASE_URL") or DEFAULT_URL
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument(
        "--distances",
        type=int,
        nargs="+",
        default=[6, MAX_DISTANCE],
        choices=range(MAX_DISTANCE + 1),
        metavar="D",
    )
    args = parser.parse_args(argv)
    print(asyncio.run(run(args.database_url, args.rows, args.queries, args.distances)))


if __name__ == "__main__":
    main()
