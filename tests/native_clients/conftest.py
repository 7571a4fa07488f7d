"""The Go and Java example clients and grpcurl, run as subprocesses against the live
inference service of the shared end-to-end fixtures (tests/support/e2e.py).

The servers run on the test session's event loop, so every subprocess is awaited
(asyncio.create_subprocess_exec): a blocking subprocess.run would stall the server it calls.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMAND_TIMEOUT_S = 240.0

Run = Callable[..., Coroutine[Any, Any, subprocess.CompletedProcess[str]]]


async def run_command(
    *argv: str | Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = COMMAND_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """Runs a command without blocking the event loop; the timeout only guards against hangs."""
    args = [str(a) for a in argv]
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env) if env is not None else None,
        cwd=cwd,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{args[0]} did not finish within {timeout_s}s: {args}") from None
    assert proc.returncode is not None
    return subprocess.CompletedProcess(
        args, proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    )


@pytest.fixture(scope="session")
def run() -> Run:
    return run_command


def _missing(*tools: str) -> list[str]:
    return [t for t in tools if shutil.which(t) is None]


def _go_generator() -> str | None:
    """protoc-gen-go from Debian's protoc-gen-go-1-3 (the build script finds it the same way)."""
    explicit = os.environ.get("PROTOC_GEN_GO")
    if explicit:
        return explicit if shutil.which(explicit) else None
    return shutil.which("protoc-gen-go")


def _go_missing() -> str | None:
    missing = _missing("go", "protoc")
    if _go_generator() is None:
        missing.append("protoc-gen-go")
    if not missing:
        return None
    return (
        f"Go toolchain not installed ({', '.join(missing)} missing): apt-get install "
        "golang-go golang-google-grpc-dev protobuf-compiler protoc-gen-go-1-3"
    )


def _java_missing() -> str | None:
    missing = _missing("java", "javac", "protoc")
    plugin = os.environ.get("GRPC_JAVA_PLUGIN", "/usr/bin/grpc_java_plugin")
    if not os.access(plugin, os.X_OK):
        missing.append(plugin)
    if not missing:
        return None
    return (
        f"Java toolchain not installed ({', '.join(missing)} missing): apt-get install "
        "protobuf-compiler libgrpc-java protobuf-compiler-grpc-java-plugin libprotobuf-java "
        "libnetty-java libperfmark-java and a JDK"
    )


@pytest.fixture(scope="session")
def example_clients(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str] | str]:
    """Generates and builds the Go and Java example clients once per session, in parallel, with
    their own build scripts. Maps "go"/"java" to the command line that runs the client, or to
    the reason it cannot be built here (its toolchain binaries are not installed).

    Building blocks the event loop, which is harmless: no server is serving a call yet."""
    clients: dict[str, list[str] | str] = {}
    builds: dict[str, tuple[subprocess.Popen[str], Path]] = {}
    for name, missing in (("go", _go_missing()), ("java", _java_missing())):
        if missing is not None:
            clients[name] = missing
            continue
        build_dir = tmp_path_factory.mktemp(f"{name}-client")
        script = ROOT / "clients" / name / "build.sh"
        builds[name] = (
            subprocess.Popen(
                ["bash", str(script), str(build_dir)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            ),
            build_dir,
        )
    for name, (proc, build_dir) in builds.items():
        output, _ = proc.communicate(timeout=COMMAND_TIMEOUT_S)
        assert proc.returncode == 0, f"clients/{name}/build.sh failed:\n{output}"
        if name == "go":
            clients[name] = [str(build_dir / "inspect-client")]
        else:
            run_sh = ROOT / "clients" / "java" / "run.sh"
            clients[name] = ["env", f"RPI_JAVA_BUILD_DIR={build_dir}", "bash", str(run_sh)]
    return clients


@pytest.fixture(scope="session")
def grpcurl() -> Path:
    """The real grpcurl: .tools/bin/grpcurl (tools/bootstrap.sh) or one on PATH."""
    local = ROOT / ".tools" / "bin" / "grpcurl"
    if os.access(local, os.X_OK):
        return local
    found = shutil.which("grpcurl")
    if found is None:
        pytest.skip("grpcurl not installed: run tools/bootstrap.sh (it puts one in .tools/bin)")
    return Path(found)
