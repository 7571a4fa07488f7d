"""The wheel `pip install .` builds carries every file of the packages: each module and each data
file they read at run time (the demo model's config and tokenizer corpus, the prompt template,
the SQL migrations, the type stubs and markers). It is built from a copy of the working tree's
files (those git tracks or would track), so a file only present in the checkout cannot hide a
missing package-data entry.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

import pytest

REPO = Path(__file__).resolve().parents[2]
# Where the packages come from ([tool.setuptools.packages.find]): directory -> its prefix in the
# wheel.
PACKAGE_ROOTS = {
    "inference_svc": "inference_svc",
    "persistence_svc": "persistence_svc",
    "svc_common": "svc_common",
    "clients": "clients",
    "tools": "tools",
    "gen/python/rpi": "rpi",
}
# Files under those directories that are not Python package content, and why.
NOT_IN_WHEEL = (
    ("clients/go/", "the Go example client, built by its own script"),
    ("clients/java/", "the Java example client, built by its own script"),
    ("tools/bootstrap.sh", "sets up a checkout; needs the repository around it"),
    ("tools/gen_protos.sh", "regenerates gen/ in a checkout"),
)

pytestmark = pytest.mark.integration  # a pip subprocess, seconds


def working_tree_files() -> list[str]:
    """Tracked files plus untracked ones git does not ignore (what a commit would hold)."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout.decode()
    return [name for name in out.split("\0") if name and (REPO / name).is_file()]


def expected_wheel_files(files: list[str]) -> set[str]:
    expected = set()
    for name in files:
        if any(name.startswith(prefix) for prefix, _ in NOT_IN_WHEEL):
            continue
        for directory, prefix in PACKAGE_ROOTS.items():
            if name.startswith(directory + "/"):
                expected.add(prefix + name[len(directory) :])
    return expected


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    source, out = tmp / "src", tmp / "dist"
    for name in working_tree_files():
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"),
            *("--disable-pip-version-check", "-w", str(out), str(source)),
        ],
        check=True,
        timeout=300,
    )
    (built,) = out.glob("rpi_platform-*.whl")
    return built


def test_wheel_holds_exactly_the_package_files_on_disk(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = {n for n in archive.namelist() if not n.endswith("/") and ".dist-info/" not in n}
    expected = expected_wheel_files(working_tree_files())
    assert "inference_svc/model_configs/tokenizer_corpus.txt" in expected
    missing = sorted(expected - names)
    assert not missing, f"not in the wheel (add them to [tool.setuptools.package-data]): {missing}"
    extra = sorted(n for n in names - expected if PurePosixPath(n).suffix != ".pyc")
    assert not extra, f"in the wheel but not in the working tree: {extra}"


def _smoke(pythonpath: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "MODEL_PATH"}}
    return subprocess.run(
        [sys.executable, "-m", "tools.image_smoke", "--timeout-s", "300"],
        env={**env, "PYTHONPATH": pythonpath},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_installed_wheel_builds_the_demo_model_and_answers_health(
    wheel: Path, tmp_path: Path
) -> None:
    """What the inference image's build runs (deploy/docker/inference.Dockerfile), here against
    the wheel installed into a bare directory, away from the source tree: the demo model is
    built from the wheel's own data files and the service answers SERVING."""
    target = tmp_path / "site"
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index"),
            *("--disable-pip-version-check", "--target", str(target), str(wheel)),
        ],
        check=True,
        timeout=300,
    )
    done = _smoke(str(target), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"installed at {target.resolve()}" in done.stdout
    assert "health SERVING" in done.stdout


def test_smoke_refuses_a_source_tree(tmp_path: Path) -> None:
    done = _smoke(f"{REPO}{os.pathsep}{REPO / 'gen' / 'python'}", tmp_path)
    assert done.returncode == 1
    assert "not installed from a wheel" in done.stderr or "imported from" in done.stderr
