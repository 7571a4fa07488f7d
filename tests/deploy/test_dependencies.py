"""The dependency split and the image pins.

- `deploy/docker/constraints.txt` and `tools/constraints-dev.txt` are exactly what
  `python -m tools.constraints` derives from this environment (the one the tests pass in), so
  the images' pins cannot drift from it; bootstrap installs this environment under both files.
- The persistence service, svc_common and the Python client import nothing beyond the base
  `[project] dependencies`: the persistence image installs `.` without the `inference` extra
  and so without torch. Every module is scanned, lazily imported ones included.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tools import constraints

REPO = Path(__file__).resolve().parents[2]
FIRST_PARTY = {"inference_svc", "persistence_svc", "svc_common", "clients", "tools", "rpi"}
# Packages the persistence image installs: `pip install .` (no extra).
BASE_PACKAGES = ("persistence_svc", "svc_common", "clients/python")


def test_constraints_file_is_generated_from_this_environment() -> None:
    assert constraints.CONSTRAINTS.read_text(encoding="utf-8") == constraints.render(), (
        "deploy/docker/constraints.txt is stale: python -m tools.constraints --write"
    )
    assert constraints.DEV_CONSTRAINTS.read_text(encoding="utf-8") == constraints.render_dev(), (
        "tools/constraints-dev.txt is stale: python -m tools.constraints --write"
    )


def _pinned(text: str) -> set[str]:
    return {
        canonicalize_name(line.split("==")[0])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_dev_pins_complete_the_runtime_pins_without_overlap() -> None:
    runtime = _pinned(constraints.render())
    dev = _pinned(constraints.render_dev())
    assert not runtime & dev
    assert {"pytest", "mypy", "ruff", "hypothesis", "moto"} <= dev
    assert "torch" not in dev


def test_bootstrap_installs_under_both_pin_files() -> None:
    script = (REPO / "tools" / "bootstrap.sh").read_text(encoding="utf-8")
    for path in (constraints.CONSTRAINTS, constraints.DEV_CONSTRAINTS):
        assert str(path.relative_to(REPO)) in script
    assert '"${pins[@]/#/--constraint=}"' in script


def test_constraints_cover_the_inference_extra_and_leave_torch_out() -> None:
    names = _pinned(constraints.render())
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["inference"]
    wanted = {canonicalize_name(Requirement(r).name) for r in extra} - {"torch"}
    assert wanted <= names
    assert "torch" not in names
    # Dev tools are not runtime dependencies.
    assert not names & {"pytest", "mypy", "ruff", "hypothesis"}


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _base_distributions() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    roots = [Requirement(line) for line in project["dependencies"]]
    return set(constraints.closure(roots))


@pytest.mark.parametrize("package", BASE_PACKAGES)
def test_base_packages_import_only_base_dependencies(package: str) -> None:
    allowed = _base_distributions()
    assert "torch" not in allowed and "transformers" not in allowed
    by_module = metadata.packages_distributions()
    outside: dict[str, set[str]] = {}
    for path in sorted((REPO / package).rglob("*.py")):
        for name in _imported_top_levels(path):
            if name in FIRST_PARTY or name in sys.stdlib_module_names or name == "__future__":
                continue
            dists = {canonicalize_name(d) for d in by_module.get(name, [])}
            assert dists, f"{path.relative_to(REPO)}: {name} comes from no installed distribution"
            if not dists & allowed:
                outside.setdefault(name, set()).add(str(path.relative_to(REPO)))
    assert not outside, f"imports outside [project] dependencies (add them there): {outside}"
