"""Writes the two pin files from the environment the tests run in.

- `deploy/docker/constraints.txt`: the container builds install the project under these pins
  (`pip install --constraint`). They are the installed versions of the project's runtime
  dependency closure: `[project] dependencies` plus the `inference` extra, each followed through
  its installed distribution's own requirements (markers evaluated, requested extras included).
- `tools/constraints-dev.txt`: the rest of the `dev` extra's closure (test and lint tools).

`tools/bootstrap.sh` installs the test environment under both files, so the suite, CI and the
images see the same versions whatever the registry has published since; the pins move only
when someone moves them (`make upgrade-deps`: upgrade, then `--write`). torch is pinned by each
Dockerfile and by bootstrap (its build differs: CUDA or CPU) and is neither listed nor followed,
so its own dependencies come with the build picked.

`python -m tools.constraints` prints both; `--write` rewrites them; `--check` fails when one is
stale (tests/deploy/test_dependencies.py runs the comparison).
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
CONSTRAINTS = ROOT / "deploy" / "docker" / "constraints.txt"
DEV_CONSTRAINTS = ROOT / "tools" / "constraints-dev.txt"
# The extras the images install (the inference image: `.[inference]`; persistence: `.`).
RUNTIME_EXTRAS = ("inference",)
DEV_EXTRAS = ("dev",)
# Pinned and installed by the Dockerfiles themselves.
LEFT_TO_DOCKERFILES = frozenset({"torch"})
PROJECT = "rpi-platform"

HEADER = """\
# Versions the container builds install (pip install --constraint): the installed versions of
# the project's runtime dependency closure in the environment the test suite passed with.
# Generated, do not edit: python -m tools.constraints --write (tests/deploy checks it is current).
# torch is pinned in the Dockerfiles (its build differs per image).
"""
DEV_HEADER = """\
# Versions of the test and lint tools (the `dev` extra's closure less the runtime pins in
# deploy/docker/constraints.txt) that tools/bootstrap.sh installs alongside those pins.
# Generated, do not edit: python -m tools.constraints --write (tests/deploy checks it is current).
"""


class MissingDistributionError(RuntimeError):
    """A runtime dependency is not installed in this environment."""


def project_requirements(
    pyproject: Path = PYPROJECT, extras: Iterable[str] = RUNTIME_EXTRAS
) -> list[Requirement]:
    """The roots: [project] dependencies and the given extras, without self-references."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    raw: list[str] = list(project["dependencies"])
    for extra in extras:
        raw.extend(project["optional-dependencies"][extra])
    requirements = [Requirement(line) for line in raw]
    return [r for r in requirements if canonicalize_name(r.name) != PROJECT]


def _applies(requirement: Requirement, extras: Iterable[str]) -> bool:
    if requirement.marker is None:
        return True
    # "" stands for "no extra requested": plain markers (python_version...) still apply.
    return any(requirement.marker.evaluate({"extra": extra}) for extra in ("", *extras))


def closure(roots: Iterable[Requirement]) -> dict[str, metadata.Distribution]:
    """Canonical name -> installed distribution, for every requirement reachable from roots."""
    found: dict[str, metadata.Distribution] = {}
    extras_seen: dict[str, set[str]] = {}
    pending: list[tuple[Requirement, frozenset[str]]] = [(r, frozenset()) for r in roots]
    while pending:
        requirement, parent_extras = pending.pop()
        if not _applies(requirement, parent_extras):
            continue
        name = canonicalize_name(requirement.name)
        if name in LEFT_TO_DOCKERFILES:
            continue
        wanted = set(requirement.extras)
        if name in found and wanted <= extras_seen[name]:
            continue
        try:
            dist = found.get(name) or metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError as exc:
            raise MissingDistributionError(
                f"{requirement.name} is required but not installed in {sys.prefix}"
            ) from exc
        found[name] = dist
        extras_seen.setdefault(name, set()).update(wanted)
        for line in dist.requires or []:
            pending.append((Requirement(line), frozenset(extras_seen[name])))
    return found


def _pins(dists: dict[str, metadata.Distribution], names: Iterable[str]) -> str:
    return "".join(f"{dists[n].metadata['Name']}=={dists[n].version}\n" for n in sorted(names))


def render(pyproject: Path = PYPROJECT) -> str:
    """deploy/docker/constraints.txt: the runtime closure."""
    dists = closure(project_requirements(pyproject))
    return HEADER + _pins(dists, dists)


def render_dev(pyproject: Path = PYPROJECT) -> str:
    """tools/constraints-dev.txt: what the dev extra adds to the runtime closure."""
    runtime = closure(project_requirements(pyproject))
    dev = closure(project_requirements(pyproject, (*RUNTIME_EXTRAS, *DEV_EXTRAS)))
    return DEV_HEADER + _pins(dev, dev.keys() - runtime.keys())


def _files(pyproject: Path = PYPROJECT) -> dict[Path, str]:
    return {CONSTRAINTS: render(pyproject), DEV_CONSTRAINTS: render_dev(pyproject)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite both files")
    mode.add_argument("--check", action="store_true", help="exit 1 when a file is stale")
    args = parser.parse_args(argv)
    files = _files()
    if args.write:
        for path, text in files.items():
            path.write_text(text, encoding="utf-8")
        return 0
    if args.check:
        stale = [p for p, text in files.items() if p.read_text(encoding="utf-8") != text]
        for path in stale:
            print(
                f"{path.relative_to(ROOT)} is stale: python -m tools.constraints --write",
                file=sys.stderr,
            )
        return 1 if stale else 0
    for path, text in files.items():
        sys.stdout.write(f"# --- {path.relative_to(ROOT)}\n{text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
