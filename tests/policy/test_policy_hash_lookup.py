"""The reused-photo lookup: banded index on real PostgreSQL, exact against a brute-force scan,
excluding the shipment's own inspections, and answered from the band indexes."""

from __future__ import annotations

import random
from uuid import UUID, uuid4

import asyncpg
import pytest

from persistence_svc.image_hashes import (
    MAX_DISTANCE,
    bands,
    find_similar,
    probes,
    store_pickup_hashes,
)


async def _inspection(conn: asyncpg.Connection, shipping_id: str) -> UUID:
    inspection_id = uuid4()
    await conn.execute(
        "INSERT INTO inspection_requests (inspection_id, shipping_id, request_recorded)"
        " VALUES ($1, $2, true)",
        inspection_id,
        shipping_id,
    )
    return inspection_id


def _flip(value: int, count: int, rng: random.Random) -> int:
    for bit in rng.sample(range(64), count):
        value ^= 1 << bit
    return value


def test_bands_and_probes() -> None:
    assert bands(0x0123_4567_89AB_CDEF) == (0x0123, 0x4567, 0x89AB, 0xCDEF)
    assert probes(0, 0) == [0]
    assert len(probes(0xBEEF, 1)) == 17
    two = probes(0xBEEF, 2)
    assert len(two) == len(set(two)) == 1 + 16 + 120
    assert all((v ^ 0xBEEF).bit_count() <= 2 for v in two)


async def test_lookup_is_exact_and_skips_the_own_shipment(migrated: asyncpg.Connection) -> None:
    rng = random.Random(5)
    query = rng.getrandbits(64)
    stored: list[tuple[UUID, str, int]] = []
    # Near copies at every distance 0..14 in other shipments, plus random hashes.
    for distance in range(15):
        shipping = f"S-near-{distance}"
        inspection = await _inspection(migrated, shipping)
        value = _flip(query, distance, rng)
        await store_pickup_hashes(migrated, inspection, shipping, [(0, value)])
        stored.append((inspection, shipping, value))
    for i in range(300):
        shipping = f"S-{i}"
        inspection = await _inspection(migrated, shipping)
        pairs = [(k, rng.getrandbits(64)) for k in range(2)]
        await store_pickup_hashes(migrated, inspection, shipping, pairs)
        stored.extend((inspection, shipping, v) for _, v in pairs)
    own = await _inspection(migrated, "S-own")
    await store_pickup_hashes(migrated, own, "S-own", [(0, query)])
    # A repeated delivery of the same hashes changes nothing.
    await store_pickup_hashes(migrated, own, "S-own", [(0, query)])

    for max_distance in (0, 3, 6, 8, MAX_DISTANCE):
        found = await find_similar(migrated, [(2, query)], max_distance, "S-own", limit=100)
        expected = sorted(
            ((v ^ query).bit_count(), str(i))
            for i, _s, v in stored
            if (v ^ query).bit_count() <= max_distance
        )
        assert sorted((m.distance, str(m.inspection_id)) for m in found) == expected
        assert all(m.query_index == 2 and m.shipping_id != "S-own" for m in found)
        assert [m.distance for m in found] == sorted(m.distance for m in found)
    # The own shipment's photo is found once another shipment asks.
    mine = await find_similar(migrated, [(0, query)], 0, "S-other")
    assert {m.inspection_id for m in mine} == {own, stored[0][0]}
    assert len(await find_similar(migrated, [(0, query)], 3, "S-own", limit=1)) == 1


async def test_the_lookup_uses_the_band_indexes(migrated: asyncpg.Connection) -> None:
    await migrated.execute(
        """
        WITH parents AS (
            INSERT INTO inspection_requests (inspection_id, shipping_id, request_recorded)
            SELECT gen_random_uuid(), 'S-' || g, true FROM generate_series(1, 20000) g
            RETURNING inspection_id, shipping_id
        )
        INSERT INTO pickup_image_hashes (inspection_id, image_index, shipping_id, phash)
        SELECT inspection_id, 0, shipping_id,
               ('x' || substr(md5(random()::text), 1, 16))::bit(64)::bigint
        FROM parents
        """
    )
    await migrated.execute("ANALYZE pickup_image_hashes")
    query = 0x0123_4567_89AB_CDEF
    radius_one = [probes(b, 1) for b in bands(query)]
    plan = "\n".join(
        r[0]
        for r in await migrated.fetch(
            "EXPLAIN SELECT * FROM pickup_image_hashes WHERE band0 = ANY($1::integer[])"
            " OR band1 = ANY($2::integer[]) OR band2 = ANY($3::integer[])"
            " OR band3 = ANY($4::integer[])",
            *radius_one,
        )
    )
    for band in range(4):
        assert f"pickup_image_hashes_band{band}_idx" in plan
    assert "Seq Scan" not in plan


async def test_out_of_range_distance_is_refused(migrated: asyncpg.Connection) -> None:
    with pytest.raises(ValueError, match="max_distance"):
        await find_similar(migrated, [(0, 1)], MAX_DISTANCE + 1, "S")
