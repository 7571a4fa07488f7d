"""The reused-photo lookup benchmark, run tiny: it seeds, looks up and reports every column
(figures are for BENCHMARKS.md; only the structure and the hit counts are asserted)."""

from __future__ import annotations

from bench import fraud_lookup
from tests.support.postgres import PostgresForTests


async def test_the_benchmark_reports_reused_hits_and_no_new_ones(
    pg_server: PostgresForTests,
) -> None:
    report = await fraud_lookup.run(pg_server.admin_url, rows=3000, queries=20, distances=[3, 11])
    lines = report.splitlines()
    assert lines[0].startswith("3,000 stored hashes")
    assert lines[-1].startswith("RATIOS lookup p99 at max distance 11: ")
    rows = [line for line in lines if line.startswith("| 3 ") or line.startswith("| 11 ")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[6] == "10/10"  # every planted near-copy is found
        assert float(cells[2]) > 0
