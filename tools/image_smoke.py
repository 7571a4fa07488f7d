"""Smoke check of an installed inference service: the one the inference image's build runs.

It first checks that ``inference_svc`` is imported from an installed wheel (the files its
``rpi-platform`` distribution records), not from a source tree or an editable install, so a
data file missing from the wheel cannot be hidden by the checkout. Then it starts
``python -m inference_svc`` the way the image does, without ``MODEL_PATH``, so the service
builds the demo model from the wheel's own config and tokenizer corpus, waits (bounded) until
``grpc.health.v1.Health/Check`` answers SERVING, and stops it with SIGTERM, which must end in
a clean exit. Exit status 0 on success, 1 with the reason otherwise.

    python -m tools.image_smoke [--timeout-s 600]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import inference_svc

DISTRIBUTION = "rpi-platform"
SERVICE = "rpi.inspection.v1.InspectionService"
# Files the demo model build and the prompt read at start: the wheel must carry them.
REQUIRED_DATA = (
    "inference_svc/model_configs/demo_internvl.json",
    "inference_svc/model_configs/tokenizer_corpus.txt",
    "inference_svc/prompts/inspection_v1.j2",
)


class SmokeFailedError(RuntimeError):
    pass


def check_installed_from_wheel() -> Path:
    """The installed package directory; SmokeFailedError unless it is the wheel's own files."""
    dist = metadata.distribution(DISTRIBUTION)
    # An installer's RECORD, not dist.files: that falls back to an egg-info's SOURCES.txt, and
    # `pip install -e .` leaves an rpi_platform.egg-info in the source tree that lists them all.
    record = dist.read_text("RECORD")
    if record is None:
        raise SmokeFailedError(f"{DISTRIBUTION} has no RECORD: not installed from a wheel")
    recorded = {line.split(",", 1)[0] for line in record.splitlines()}
    missing = [
        name for name in ("inference_svc/__init__.py", *REQUIRED_DATA) if name not in recorded
    ]
    if missing:
        raise SmokeFailedError(
            f"{DISTRIBUTION} does not record {missing}: "
            "not installed from a wheel that carries them"
        )
    installed = Path(str(dist.locate_file("inference_svc/__init__.py"))).resolve()
    imported = Path(inference_svc.__file__).resolve()
    if installed != imported:
        raise SmokeFailedError(f"inference_svc imported from {imported}, not from {installed}")
    for name in REQUIRED_DATA:
        if not Path(str(dist.locate_file(name))).is_file():
            raise SmokeFailedError(f"{name} is recorded but not on disk")
    return installed.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def service_env(workdir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MODEL_PATH"}
    env.update(
        {
            "GRPC_LISTEN": f"127.0.0.1:{port}",
            "METRICS_PORT": "-1",
            "DEVICE": "cpu",  # An image build has no GPU.
            "MODEL_CACHE_DIR": str(workdir / "models"),
            "EVENT_SPOOL_DIR": str(workdir / "spool"),
            # Nothing listens there: events stay in the spool, which is what a start allows.
            "PERSISTENCE_TARGET": f"127.0.0.1:{_free_port()}",
            "DRAIN_PRESTOP_S": "0",
            "OTEL_TRACES_EXPORTER": "none",
        }
    )
    return env


async def _wait_serving(port: int, proc: asyncio.subprocess.Process, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if proc.returncode is not None:
                raise SmokeFailedError(f"inference_svc exited with {proc.returncode} during start")
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass  # Not listening yet, or still loading.
            if time.monotonic() > deadline:
                raise SmokeFailedError(f"not SERVING within {timeout_s} s")
            await asyncio.sleep(0.5)


async def run(timeout_s: float) -> None:
    package_dir = check_installed_from_wheel()
    print(f"image_smoke: inference_svc installed at {package_dir}", flush=True)
    with tempfile.TemporaryDirectory(prefix="rpi-smoke-") as tmp:
        workdir = Path(tmp)
        port = _free_port()
        # cwd is the scratch directory: `-m` puts it first on sys.path, and it holds no source.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "inference_svc", cwd=workdir, env=service_env(workdir, port)
        )
        try:
            await _wait_serving(port, proc, timeout_s)
            print("image_smoke: health SERVING with the demo model", flush=True)
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), timeout=120)
            if code != 0:
                raise SmokeFailedError(f"inference_svc exited with {code} after SIGTERM")
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    print("image_smoke: clean exit after SIGTERM", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout-s", type=float, default=600.0, help="start-up bound")
    args = parser.parse_args(argv)
    try:
        asyncio.run(run(args.timeout_s))
    except SmokeFailedError as exc:
        print(f"image_smoke: FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
