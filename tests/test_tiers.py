"""Every test is in exactly one tier (tests/support/tiers.py), chosen as documented there."""

from __future__ import annotations

import pytest

from tests.support.tiers import (
    INTEGRATION,
    TESTS_DIR,
    UNIT,
    TierError,
    path_tier,
    tier_of,
)


@pytest.mark.parametrize(
    ("relative", "tier"),
    [
        ("domain/test_domain_decision.py", UNIT),
        ("persistence/test_persistence_read.py", INTEGRATION),
        ("test_layering.py", UNIT),
        # A file rule beats its directory's.
        ("docs/test_readme.py", UNIT),
        ("docs/test_demo.py", INTEGRATION),
        ("observability/test_prometheus_scrape.py", INTEGRATION),
        # A prefix is a directory or a whole file name, never part of a name.
        ("test_layering_extra.py", None),
        ("domainx/test_a.py", None),
        ("new_dir/test_a.py", None),
    ],
)
def test_path_tier(relative: str, tier: str | None) -> None:
    assert path_tier(relative) == tier


def test_heavy_fixtures_and_the_marker_make_a_test_integration_wherever_it_is() -> None:
    assert tier_of("domain/test_a.py", ["tmp_path"], []) == UNIT
    assert tier_of("domain/test_a.py", ["tmp_path", "postgres"], []) == INTEGRATION
    assert tier_of("engine/test_a.py", ["engine_factory", "model_cache"], []) == INTEGRATION
    assert tier_of("imaging/test_a.py", [], ["parametrize", INTEGRATION]) == INTEGRATION


@pytest.mark.parametrize("fixtures", [[], ["postgres"]])
def test_a_test_outside_every_tier_is_an_error(fixtures: list[str]) -> None:
    # Even one whose fixtures would decide: every test directory chooses its tier explicitly.
    with pytest.raises(TierError, match=r"new_dir/test_a\.py"):
        tier_of("new_dir/test_a.py", fixtures, [])


def test_every_test_file_on_disk_has_a_tier() -> None:
    files = [p.relative_to(TESTS_DIR).as_posix() for p in TESTS_DIR.rglob("test_*.py")]
    assert files, "found no test files"
    assert [f for f in files if path_tier(f) is None] == []


def test_every_collected_test_has_exactly_one_tier(request: pytest.FixtureRequest) -> None:
    items = request.session.items
    assert request.node in items
    wrong = [
        item.nodeid
        for item in items
        if sum(item.get_closest_marker(tier) is not None for tier in (UNIT, INTEGRATION)) != 1
    ]
    assert wrong == []
