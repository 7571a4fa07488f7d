"""The layering rules, as import contracts (pyproject.toml, [tool.importlinter]): checked here on
this checkout, and on mutated copies to prove that each contract fails on a forbidden import."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

import pytest

from tests.support.contracts import (
    ContractResult,
    Mutation,
    check_contracts,
    check_mutations,
    copy_tree,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "pyproject.toml"

# One forbidden import per contract, appended to a real module; each must break that contract.
MUTATIONS: dict[str, Mutation] = {
    "domain": Mutation("inference_svc/domain/models.py", "import inference_svc.engine.api"),
    "engine": Mutation("inference_svc/engine/config.py", "import grpc"),
    "imaging-settings": Mutation("inference_svc/settings.py", "import inference_svc.engine.config"),
    "events": Mutation("inference_svc/events/spool.py", "import inference_svc.grpc_api.errors"),
    "services": Mutation("persistence_svc/paging.py", "import inference_svc.domain.models"),
    "svc-common": Mutation("svc_common/health.py", "import persistence_svc.settings"),
    "serving-code": Mutation("inference_svc/app.py", "import tests.support.e2e"),
    "acyclic": Mutation("inference_svc/defaults.py", "import inference_svc.settings"),
}


def _contracts() -> list[dict[str, object]]:
    return list(tomllib.loads(CONFIG.read_text())["tool"]["importlinter"]["contracts"])


def test_this_checkout_keeps_every_import_contract() -> None:
    results = check_contracts(CONFIG)
    broken = [r for r in results.values() if not r.kept]
    assert not broken, "\n\n".join(f"{r.name}:\n{r.details}" for r in broken)
    assert set(results) == {str(c["id"]) for c in _contracts()}


def test_every_contract_has_a_mutation_that_breaks_it() -> None:
    assert set(MUTATIONS) == {str(c["id"]) for c in _contracts()}


def test_every_service_module_a_contract_names_exists() -> None:
    # A contract over a module that was renamed away is silently kept: name only real ones.
    internal = ("inference_svc", "persistence_svc", "svc_common")
    named: set[str] = set()
    for contract in _contracts():
        for key in ("source_modules", "forbidden_modules", "modules", "ancestors"):
            value = contract.get(key, [])
            assert isinstance(value, list)
            named.update(str(m) for m in value)
    missing = [m for m in sorted(named) if m.startswith(internal) and not _exists(m)]
    assert not missing, f"contracts name modules that do not exist: {missing}"


def _exists(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="module")
def mutation_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ContractResult]:
    """Contract id -> that contract's result on the copy mutated for it."""
    tree = copy_tree(ROOT, tmp_path_factory.mktemp("contracts"))
    baseline, *runs = check_mutations(tree, list(MUTATIONS.values()))
    assert all(r.kept for r in baseline.values()), "the unmutated copy must keep every contract"
    return {cid: run[cid] for cid, run in zip(MUTATIONS, runs, strict=True)}


@pytest.mark.parametrize("contract", sorted(MUTATIONS))
def test_a_forbidden_import_breaks_its_contract(
    mutation_runs: dict[str, ContractResult], contract: str
) -> None:
    mutation = MUTATIONS[contract]
    result = mutation_runs[contract]
    assert not result.kept, f"{mutation} left contract {contract!r} kept"
    # Broken by the injected import, not by something else: the report names the mutated module
    # (in full for a forbidden import, relative to its package for a cycle).
    assert Path(mutation.path).stem in result.details, result.details
