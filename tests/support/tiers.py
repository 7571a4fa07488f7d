"""Test tiers: every collected test is marked ``unit`` or ``integration``, exactly one of them.

``unit`` (``make unit``): fast, in-process tests, no PostgreSQL, no service subprocess, no model
build. ``integration``: everything else (``make test`` runs both tiers, each test once).

A test's tier comes from its path, in TIERS below, and a test in a path TIERS does not name
stops the run (the guard: a new test directory must choose its tier here). A test in a unit path
is integration all the same when
- it uses (directly or through other fixtures) a PostgreSQL, a built model or a running service
  (INTEGRATION_FIXTURES), or
- it is marked ``@pytest.mark.integration`` (a slow test among fast ones, a subprocess).

Registered as a plugin by tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

UNIT = "unit"
INTEGRATION = "integration"

# Fixtures that cost seconds or an outside process: PostgreSQL (e2e's ``postgres``, persistence's
# ``pg_server``), the built demo model (the engine tests' ``model_cache``), either service.
INTEGRATION_FIXTURES = frozenset(
    {"postgres", "pg_server", "database_url", "model_cache", "persistence_app", "inference_app"}
)

# Path (relative to tests/, a directory ends with "/") -> tier. The longest matching prefix
# wins. UNIT here means "unit unless its fixtures say otherwise".
TIERS: dict[str, str] = {
    # In-process and fast.
    "domain/": UNIT,
    "imaging/": UNIT,
    "events/": UNIT,
    "clients/": UNIT,
    "deploy/": UNIT,
    "docs/": UNIT,
    "observability/": UNIT,
    "engine/": UNIT,  # pure engine parts; the model tests use model_cache
    "engine/test_engine_process.py": INTEGRATION,  # spawns engine processes
    "engine/test_vision_cache_service.py": INTEGRATION,  # the service on loopback gRPC
    "pipeline/": UNIT,
    "policy/": UNIT,  # the PostgreSQL tests use pg_server
    "protos/": UNIT,
    "security/": UNIT,  # loopback gRPC servers in-process, real certificates and keys
    "test_app_settings.py": UNIT,
    "test_layering.py": UNIT,
    "test_priority.py": UNIT,
    "test_tiers.py": UNIT,
    # Real services, PostgreSQL, subprocesses, toolchains.
    "integration/": INTEGRATION,
    "faults/": INTEGRATION,
    "hardening/": INTEGRATION,  # both live services fuzzed; a server in a subprocess
    "persistence/": INTEGRATION,
    "native_clients/": INTEGRATION,
    "operations/": INTEGRATION,  # the job queue on PostgreSQL, both services
    "bench/": INTEGRATION,
    "grpc_errors/": INTEGRATION,
    "storage/": INTEGRATION,  # moto's S3 server, azurite, PostgreSQL
    "security/test_secure_services.py": INTEGRATION,  # both services, Postgres, a model
    "docs/test_demo.py": INTEGRATION,  # the whole system as subprocesses
    "observability/test_prometheus_scrape.py": INTEGRATION,  # a Prometheus server
}

TESTS_DIR = Path(__file__).resolve().parents[1]


class TierError(Exception):
    """A test is in no tier."""


def path_tier(relative: str) -> str | None:
    """The tier TIERS gives a test file (posix path relative to tests/), or None."""
    matches = [
        prefix
        for prefix in TIERS
        if relative == prefix or (prefix.endswith("/") and relative.startswith(prefix))
    ]
    return TIERS[max(matches, key=len)] if matches else None


def tier_of(relative: str, fixtures: Iterable[str], markers: Iterable[str]) -> str:
    """The tier of one test: ``fixtures`` is its whole fixture closure (item.fixturenames)."""
    tier = path_tier(relative)
    if tier is None:
        raise TierError(f"{relative}: no tier (name its path in tests/support/tiers.py TIERS)")
    if INTEGRATION in set(markers) or INTEGRATION_FIXTURES & set(fixtures):
        return INTEGRATION
    return tier


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # tryfirst: the tier markers must be on the items before `-m unit` deselects by them.
    strays: list[str] = []
    for item in items:
        try:
            relative = item.path.resolve().relative_to(TESTS_DIR).as_posix()
        except ValueError:
            continue  # not one of ours (a pytester run, say)
        markers = [m.name for m in item.iter_markers()]
        if UNIT in markers:
            strays.append(f"{item.nodeid}: the unit marker is set by path, not by hand")
            continue
        try:
            fixtures = getattr(item, "fixturenames", ())  # a Function has them, other Items not
            item.add_marker(getattr(pytest.mark, tier_of(relative, fixtures, markers)))
        except TierError as exc:
            strays.append(str(exc))
    if strays:
        raise pytest.UsageError("tests outside the tiers:\n  " + "\n  ".join(sorted(set(strays))))
