"""Pickup-image perceptual hashes: storing them, and the banded lookup of near-duplicates
(migration 0003 explains the index).

Hashes are 64-bit unsigned ints at this module's boundary and signed bigints in the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import TypeAlias
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy

DbConnection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"

BANDS = 4
BAND_BITS = 16
_BAND_MASK = (1 << BAND_BITS) - 1
# Past radius 2 a band has 697+ probe values: the lookup stops being a few index probes.
MAX_DISTANCE = 3 * BANDS - 1
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class HashMatch:
    """A stored pickup image near one of the queried hashes."""

    query_index: int  # which of the queried hashes (its pickup image index)
    inspection_id: UUID
    shipping_id: str
    image_index: int
    distance: int


def to_signed(value: int) -> int:
    if not 0 <= value <= _MASK64:
        raise ValueError(f"not a 64-bit unsigned value: {value}")
    return value - (1 << 64) if value >> 63 else value


def bands(value: int) -> tuple[int, ...]:
    """The four 16-bit bands of an unsigned hash, most significant first (as the table's
    generated columns band0..band3)."""
    return tuple((value >> (BAND_BITS * (BANDS - 1 - b))) & _BAND_MASK for b in range(BANDS))


def probes(band: int, radius: int) -> list[int]:
    """Every 16-bit value within ``radius`` bits of ``band``."""
    values = [band]
    for flips in range(1, radius + 1):
        for bits in combinations(range(BAND_BITS), flips):
            mask = 0
            for bit in bits:
                mask |= 1 << bit
            values.append(band ^ mask)
    return values


async def store_pickup_hashes(
    conn: DbConnection, inspection_id: UUID, shipping_id: str, hashes: Sequence[tuple[int, int]]
) -> None:
    """Store (image index, unsigned hash) pairs; a request recorded again replaces them."""
    if not hashes:
        return
    await conn.executemany(
        """
        INSERT INTO pickup_image_hashes (inspection_id, image_index, shipping_id, phash)
        VALUES ($1, $2, $3, $4)
        ON CONFLICT (inspection_id, image_index)
        DO UPDATE SET shipping_id = EXCLUDED.shipping_id, phash = EXCLUDED.phash
        """,
        [(inspection_id, index, shipping_id, to_signed(value)) for index, value in hashes],
    )


_LOOKUP = """
SELECT inspection_id, shipping_id, image_index,
       bit_count((phash # $1)::bit(64))::integer AS distance
FROM pickup_image_hashes
WHERE (band0 = ANY($2::integer[]) OR band1 = ANY($3::integer[])
       OR band2 = ANY($4::integer[]) OR band3 = ANY($5::integer[]))
  AND shipping_id <> $6
  AND bit_count((phash # $1)::bit(64)) <= $7
ORDER BY distance, created_at DESC
LIMIT $8
"""


async def find_similar(
    conn: DbConnection,
    hashes: Sequence[tuple[int, int]],
    max_distance: int,
    exclude_shipping_id: str,
    limit: int = 5,
) -> list[HashMatch]:
    """Stored pickup images of other shipments within ``max_distance`` of each queried
    (index, unsigned hash), nearest first, at most ``limit`` per queried hash."""
    if not 0 <= max_distance <= MAX_DISTANCE:
        raise ValueError(f"max_distance must be 0-{MAX_DISTANCE}")
    radius = max_distance // BANDS
    found: list[HashMatch] = []
    for index, value in hashes:
        band_probes = [probes(b, radius) for b in bands(value)]
        rows = await conn.fetch(
            _LOOKUP,
            to_signed(value),
            *band_probes,
            exclude_shipping_id,
            max_distance,
            limit,
        )
        found.extend(
            HashMatch(
                query_index=index,
                inspection_id=row["inspection_id"],
                shipping_id=row["shipping_id"],
                image_index=row["image_index"],
                distance=row["distance"],
            )
            for row in rows
        )
    return found
