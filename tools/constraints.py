"""Writes deploy/docker/constraints.txt from the environment the tests run in.

The container builds install the project under these pins (`pip install --constraint`), so an
image gets the versions the test suite passed with. They are the installed versions of the
project's runtime dependency closure: `[project] dependencies` plus the `inference` extra, each
followed through its installed distribution's own requirements (markers evaluated, requested
extras included). Development tools (the `dev` extra) are not in it. torch is pinned by each
Dockerfile (its build differs per image: CUDA or none) and is neither listed nor followed, so
its own dependencies come with the build the Dockerfile picks.

`python -m tools.constraints` prints the file; `--write` rewrites it; `--check` fails when it is
stale (tests/deploy/test_constraints.py runs the comparison).
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
# The extras the images install (the inference image: `.[inference]`; persistence: `.`).
RUNTIME_EXTRAS = ("inference",)
# Pinned and installed by the Dockerfiles themselves.
LEFT_TO_DOCKERFILES = frozenset({"torch"})
PROJECT = "rpi-platform"

HEADER = """\
# Versions the container builds install (pip install --constraint): the installed versions of
# the project's runtime dependency closure in the environment the test suite passed with.
# Generated, do not edit: python -m tools.constraints --write (tests/deploy checks it is current).
# torch is pinned in the Dockerfiles (its build differs per image).
"""


class MissingDistributionError(RuntimeError):
    """A runtime dependency is not installed in this environment."""


def project_requirements(pyproject: Path = PYPROJECT) -> list[Requirement]:
    """The runtime roots: [project] dependencies and the RUNTIME_EXTRAS, without self-references."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    raw: list[str] = list(project["dependencies"])
    for extra in RUNTIME_EXTRAS:
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


def render(pyproject: Path = PYPROJECT) -> str:
    dists = closure(project_requirements(pyproject))
    pins = (f"{dists[name].metadata['Name']}=={dists[name].version}" for name in sorted(dists))
    return HEADER + "".join(f"{pin}\n" for pin in pins)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"rewrite {CONSTRAINTS.name}")
    mode.add_argument("--check", action="store_true", help="exit 1 when the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        CONSTRAINTS.write_text(text, encoding="utf-8")
        return 0
    if args.check:
        if CONSTRAINTS.read_text(encoding="utf-8") != text:
            print(
                f"{CONSTRAINTS.relative_to(ROOT)} is stale: python -m tools.constraints --write",
                file=sys.stderr,
            )
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
