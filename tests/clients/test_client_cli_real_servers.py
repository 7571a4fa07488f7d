"""``rpi-inspect`` as a process against both real services (Postgres behind the persistence
service, the demo model behind the inference service): its exit status is the gRPC code of the
failed call, and stderr names the code, the ErrorInfo reason, domain and metadata."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from inference_svc.app import InferenceApp
from persistence_svc.app import PersistenceApp
from tests.support.e2e import ROOT, ImageServer

# Every test runs the CLI as a process.
pytestmark = pytest.mark.integration

QUESTIONS = '[{"type": "Colour", "label": "Is the mug red?", "value_to_check": "Yes"}]\n'


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


async def rpi_inspect(*argv: str) -> Run:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "gen" / "python")]),
        "COLUMNS": "200",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "clients.python.rpi_client",
        *argv,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


def inspect_argv(target: str, image_server: ImageServer, pickup: str, tmp: Path) -> list[str]:
    questions = tmp / "questions.json"
    questions.write_text(QUESTIONS, encoding="utf-8")
    return [
        "inspect", "--unary", "--timeout", "60",
        "--target", target,
        "--reference", image_server.url("ref.jpg"),
        "--pickup", pickup,
        "--questions", str(questions),
        "--product-name", "ACME mug, red",
        "--shipping-id", "SHIP-CLI",
    ]  # fmt: skip


async def test_image_host_failure_exits_14_unavailable(
    inference_app: InferenceApp, image_server: ImageServer, tmp_path: Path
) -> None:
    target = f"127.0.0.1:{inference_app.port}"
    # .invalid never resolves (RFC 6761): the image host is unavailable, not the request bad.
    run = await rpi_inspect(
        *inspect_argv(target, image_server, "http://images.invalid/p.jpg", tmp_path)
    )
    assert run.code == 14, run.err
    assert "UNAVAILABLE IMAGE_SOURCE_UNAVAILABLE pickup_images[0]" in run.err
    assert "domain inspection.rpi.v1" in run.err
    assert "fetch_error=dns" in run.err and "stage=fetch" in run.err
    assert "retry after" in run.err
    assert run.out == ""


async def test_missing_image_exits_3_invalid_argument(
    inference_app: InferenceApp, image_server: ImageServer, tmp_path: Path
) -> None:
    target = f"127.0.0.1:{inference_app.port}"
    run = await rpi_inspect(
        *inspect_argv(target, image_server, image_server.url("missing.jpg"), tmp_path)
    )
    assert run.code == 3, run.err
    assert "INVALID_ARGUMENT IMAGE_FETCH_FAILED pickup_images[0]" in run.err
    assert "violation pickup_images[0]" in run.err
    assert "fetch_error=http_4xx" in run.err
    assert "retry after" not in run.err


async def test_unknown_record_exits_5_not_found(persistence_app: PersistenceApp) -> None:
    inspection_id = str(uuid.uuid4())
    run = await rpi_inspect("get", "--persistence-target", persistence_app.target, inspection_id)
    assert run.code == 5, run.err
    assert "NOT_FOUND INSPECTION_NOT_FOUND" in run.err
    assert "domain persistence.rpi.v1" in run.err


async def test_unreachable_server_exits_14_and_says_which(
    image_server: ImageServer, tmp_path: Path
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{probe.getsockname()[1]}"
    run = await rpi_inspect(
        *inspect_argv(target, image_server, image_server.url("p.jpg"), tmp_path)
    )
    assert run.code == 14, run.err
    assert f"cannot reach {target}" in run.err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["health", "--frobnicate"], "unrecognized arguments"),
        (["get"], "the following arguments are required"),
    ],
)
async def test_bad_flags_exit_64(argv: list[str], message: str) -> None:
    run = await rpi_inspect(*argv)
    assert run.code == 64, run.err
    assert message in run.err
