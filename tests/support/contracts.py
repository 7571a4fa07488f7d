"""Running the import contracts of pyproject.toml (import-linter) from Python.

``check_contracts()`` checks the tree that ``root_packages`` resolve to on ``sys.path`` (in the
test process: this checkout). To prove that a contract can fail, ``check_mutations()`` copies
the packages to a scratch folder, injects one import at a time and checks each mutated copy in
a child interpreter whose ``sys.path`` starts at the copy (the test process has the real
packages imported already, so it cannot look at a copy under the same names).

Run as a script (``python contracts.py MUTATIONS_JSON``, from the copy's root), it is that child.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from importlinter import configuration
from importlinter.application import output, use_cases


@dataclass(frozen=True)
class Mutation:
    """One line appended to one module of the copied tree."""

    path: str  # relative to the tree's root
    line: str


@dataclass(frozen=True)
class ContractResult:
    id: str
    name: str
    kept: bool
    # What lint-imports prints for a broken contract (the offending import chains).
    details: str = ""


def check_contracts(config: Path) -> dict[str, ContractResult]:
    """Every contract in ``config`` (a pyproject.toml), by id, checked without a cache."""
    # What the lint-imports command sets up before it checks (readers, graph builder, the
    # built-in contract types); create_report() expects it done.
    configuration.configure()
    use_cases._register_built_in_contract_types()
    report = use_cases.create_report(use_cases.read_user_options(str(config)), cache_dir=None)
    if report.could_not_run or report.invalid_contract_options:
        raise RuntimeError(f"import-linter could not run: {report.invalid_contract_options}")
    results: dict[str, ContractResult] = {}
    for contract, check in report.get_contracts_and_checks():
        details = ""
        if not check.kept:
            with output.console.capture() as captured:
                contract.render_broken_contract(check)
            details = captured.get()
        cid = str(contract.contract_options.get("id", contract.name))
        results[cid] = ContractResult(cid, contract.name, check.kept, details)
    return results


def root_packages(config: Path) -> list[str]:
    settings = tomllib.loads(config.read_text())["tool"]["importlinter"]
    return list(settings["root_packages"])


def copy_tree(repo: Path, dest: Path) -> Path:
    """The contract's packages and pyproject.toml copied under ``dest`` (no caches)."""
    config = repo / "pyproject.toml"
    for package in root_packages(config):
        shutil.copytree(
            repo / package,
            dest / package,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "build", "node_modules"),
        )
    shutil.copy2(config, dest / "pyproject.toml")
    return dest


def check_mutations(
    tree: Path, mutations: list[Mutation], timeout_s: float = 120.0
) -> list[dict[str, ContractResult]]:
    """The contracts checked on ``tree`` as it is, then once per mutation (each one alone)."""
    payload = json.dumps([[m.path, m.line] for m in mutations])
    done = subprocess.run(
        # -P: this file's folder (test helpers) stays off the child's sys.path.
        [sys.executable, "-P", str(Path(__file__).resolve()), payload],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"contract probe failed ({done.returncode}):\n{done.stderr}")
    runs: list[dict[str, dict[str, object]]] = json.loads(done.stdout)
    return [
        {cid: ContractResult(**fields) for cid, fields in run.items()}  # type: ignore[arg-type]
        for run in runs
    ]


def _probe(mutations: list[tuple[str, str]]) -> None:
    config = Path.cwd() / "pyproject.toml"
    runs = [check_contracts(config)]
    for path, line in mutations:
        module = Path(path)
        original = module.read_text()
        module.write_text(original.rstrip("\n") + f"\n{line}\n")
        try:
            runs.append(check_contracts(config))
        finally:
            module.write_text(original)
    json.dump([{cid: dataclasses.asdict(r) for cid, r in run.items()} for run in runs], sys.stdout)


if __name__ == "__main__":
    _probe([(path, line) for path, line in json.loads(sys.argv[1])])
