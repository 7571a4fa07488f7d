"""Real object stores on loopback: moto's S3 server and the azurite Azure Blob emulator, and
an inference service (fake engine) reading from and writing to them."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Any

import boto3
import grpc
import pytest
from moto.server import ThreadedMotoServer
from rpi.inspection.v1 import inspection_pb2 as pb
from rpi.inspection.v1 import inspection_pb2_grpc as pb_grpc

from inference_svc.app import InferenceApp
from persistence_svc.app import PersistenceApp
from tests.pipeline.fakes import VALID
from tests.support.e2e import inference_settings
from tests.support.fake_engine import FakeEngine

ROOT = Path(__file__).resolve().parents[2]
AZURITE = ROOT / ".tools" / "node_modules" / ".bin" / "azurite-blob"
# The emulator's well-known development account (public, documented by Microsoft).
AZURE_ACCOUNT = "devstoreaccount1"
AZURE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

QUESTIONS = [
    pb.Question(type="Brand", label="Is the brand visible?", value_to_check="Yes", mandatory=True),
    pb.Question(type="Colour", label="What is the colour?", value_to_check="Red"),
]


@dataclass
class S3:
    server: ThreadedMotoServer
    endpoint: str
    port: int

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        listed = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for o in listed.get("Contents", []))


@pytest.fixture(scope="session")
def s3() -> Iterator[S3]:
    # Credentials reach obstore the way they do in production: from the environment.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_REGION", "us-east-1")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.delenv("AWS_PROFILE", raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        yield S3(server, f"http://{host}:{port}", port)
        server.stop()


@dataclass
class Azurite:
    endpoint: str  # http://127.0.0.1:PORT/devstoreaccount1

    def create_container(self, name: str) -> None:
        """The REST call with a SharedKey signature (the emulator has no anonymous writes)."""
        date, version = formatdate(usegmt=True), "2021-08-06"
        to_sign = (
            "PUT\n" + "\n" * 11 + f"x-ms-date:{date}\nx-ms-version:{version}\n"
            f"/{AZURE_ACCOUNT}/{AZURE_ACCOUNT}/{name}\nrestype:container"
        )
        key = base64.b64decode(AZURE_KEY)
        signature = base64.b64encode(hmac.new(key, to_sign.encode(), hashlib.sha256).digest())
        request = urllib.request.Request(
            f"{self.endpoint}/{name}?restype=container",
            method="PUT",
            headers={
                "x-ms-date": date,
                "x-ms-version": version,
                "Authorization": f"SharedKey {AZURE_ACCOUNT}:{signature.decode()}",
                "Content-Length": "0",
            },
        )
        with urllib.request.urlopen(request) as reply:
            assert reply.status == 201


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    binary = str(AZURITE) if AZURITE.exists() else shutil.which("azurite-blob")
    if binary is None:
        pytest.skip("azurite is not installed (tools/bootstrap.sh installs it from npm)")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AZURE_STORAGE_ACCOUNT_NAME", AZURE_ACCOUNT)
        env.setenv("AZURE_STORAGE_ACCOUNT_KEY", AZURE_KEY)
        log = tmp_path_factory.mktemp("azurite") / "azurite.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [
                    binary,
                    "--blobHost",
                    "127.0.0.1",
                    "--blobPort",
                    "0",
                    "--inMemoryPersistence",
                    "--skipApiVersionCheck",
                    "--loose",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            port = None
            for _ in range(600):  # it logs its port once it listens
                found = re.search(r"listens on http://127\.0\.0\.1:(\d+)", log.read_text())
                if found or proc.poll() is not None:
                    port = int(found.group(1)) if found else None
                    break
                time.sleep(0.05)
            assert port is not None, f"azurite did not start: {log.read_text()[-2000:]}"
            yield Azurite(f"http://127.0.0.1:{port}/{AZURE_ACCOUNT}")
        finally:
            proc.kill()  # in-memory: nothing to flush
            proc.wait(10)


def request(
    references: list[pb.Image], pickups: list[pb.Image], shipping_id: str = "SHIP-S3-1"
) -> pb.InspectRequest:
    return pb.InspectRequest(
        shipping_id=shipping_id,
        product_id="SKU-1",
        product_name="ACME mug, red",
        reference_images=references,
        pickup_images=pickups,
        questions=QUESTIONS,
    )


@asynccontextmanager
async def running_app(
    tmp: Path, persistence: PersistenceApp | None, *, demo_model: bool = False, **settings: object
) -> AsyncIterator[tuple[InferenceApp, pb_grpc.InspectionServiceStub]]:
    """An inference service with the fake engine (the model is not what these tests test), or
    with ``demo_model`` the real engine on the demo model (built once in MODEL_CACHE)."""
    target = persistence.target if persistence is not None else ""
    values: dict[str, object] = {
        "storage_allow_http": True,
        "storage_spool_dir": tmp / "storage-spool",
        "fetch_retries": 0,
    }
    values.update(settings)
    engine = None if demo_model else FakeEngine([VALID] * 200)
    app = InferenceApp(inference_settings(tmp, target, **values), engine=engine)
    try:
        await app.start()
    except BaseException:
        await app.stop(0)  # as the service's own entry point does after a failed start
        raise
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            yield app, pb_grpc.InspectionServiceStub(channel)
    finally:
        await app.stop(5)


async def stalled_endpoint() -> tuple[asyncio.Server, str]:
    """An HTTP endpoint that accepts connections and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"
