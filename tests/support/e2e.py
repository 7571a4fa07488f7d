"""Shared end-to-end fixtures: both services on loopback ports against a real Postgres, with
a local HTTP image server. Registered for every test directory by tests/conftest.py; fixtures
are created lazily, so tests that do not use them pay nothing."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
import pytest
import pytest_asyncio
from aiohttp import web
from PIL import Image, ImageDraw
from rpi.inspection.v1 import inspection_pb2 as pb
from rpi.inspection.v1 import inspection_pb2_grpc as pb_grpc
from rpi.persistence.v1 import persistence_pb2 as ppb
from rpi.persistence.v1 import persistence_pb2_grpc as ppb_grpc

from inference_svc.app import InferenceApp
from inference_svc.domain.models import OutputLimits
from inference_svc.domain.prompt import PromptTemplate, with_output_limits
from inference_svc.settings import InferenceSettings
from persistence_svc.app import PersistenceApp
from tests.support.persistence import running_persistence
from tests.support.postgres import PostgresForTests, start_test_postgres

# The repository root (this file is tests/support/e2e.py): subprocess tests run the service
# from here, so they import this checkout's code and not whatever an editable install points at.
ROOT = Path(__file__).resolve().parents[2]
MODEL_CACHE = Path(os.environ.get("RPI_TEST_MODEL_CACHE", ROOT / "var" / "test-models"))


def jpeg(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    img = Image.new("RGB", size, (230, 230, 225))
    draw = ImageDraw.Draw(img)
    w, h = size
    draw.rectangle((w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill=colour)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


@dataclass
class ImageServer:
    base_url: str
    images: dict[str, bytes]
    # Every path requested, in order: a test can prove that a refused call fetched nothing.
    hits: list[str] = field(default_factory=list)

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"


@pytest_asyncio.fixture(scope="session")
async def image_server() -> AsyncIterator[ImageServer]:
    images = {
        "ref.jpg": jpeg((640, 480), (200, 30, 30)),
        "pickup.jpg": jpeg((1024, 768), (190, 40, 35)),
    }

    hits: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        hits.append(request.match_info["name"])
        data = images.get(request.match_info["name"])
        if data is None:
            raise web.HTTPNotFound()
        # ?delay_ms=N answers late: a deadline can then expire mid-fetch, whatever the speed
        # of the rest of the pipeline.
        delay_ms = float(request.query.get("delay_ms", "0"))
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000.0)
        return web.Response(body=data, content_type="image/jpeg")

    app = web.Application()
    app.router.add_get("/{name}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield ImageServer(f"http://127.0.0.1:{port}", images, hits)
    await runner.cleanup()


@pytest_asyncio.fixture(scope="session")
async def postgres() -> AsyncIterator[PostgresForTests]:
    server = await start_test_postgres()
    yield server
    await server.close()


@pytest_asyncio.fixture(scope="session")
async def database_url(postgres: PostgresForTests) -> AsyncIterator[str]:
    async with postgres.fresh_database("rpi_it_") as url:
        yield url


@pytest_asyncio.fixture(scope="session")
async def persistence_app(database_url: str) -> AsyncIterator[PersistenceApp]:
    async with running_persistence(database_url) as app:
        yield app


# The random model fills every string to its bound: short bounds let a constrained output
# complete well within the token budget.
SHORT_OUTPUT = OutputLimits(max_evidence_chars=24, max_analysis_chars=32, max_result_chars=16)


def template_with_limits(directory: Path, limits: OutputLimits) -> Path:
    """The bundled prompt template with other output limits (they belong to the template)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "prompt.j2"
    path.write_text(with_output_limits(PromptTemplate.bundled_source(), limits), encoding="utf-8")
    return path


def inference_settings(
    tmp: Path,
    persistence_target: str,
    output_limits: OutputLimits = SHORT_OUTPUT,
    **overrides: object,
) -> InferenceSettings:
    values: dict[str, object] = {
        "grpc_listen": "127.0.0.1:0",
        "metrics_port": -1,
        "model_cache_dir": MODEL_CACHE,
        "persistence_target": persistence_target,
        "event_spool_dir": tmp / "spool",
        "allow_http": True,
        "allow_private_addresses": True,
        "max_new_tokens": 800,
        "prompt_template_path": template_with_limits(tmp, output_limits),
        "drain_grace_s": 5.0,
        # In-process engine: a spawned engine process costs seconds per app start. The
        # process engine (the production default) has its own tests.
        "engine_process": False,
    }
    values.update(overrides)
    return InferenceSettings(**values)  # type: ignore[arg-type]


@pytest_asyncio.fixture(scope="session")
async def inference_app(
    persistence_app: PersistenceApp, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[InferenceApp]:
    app = InferenceApp(
        inference_settings(tmp_path_factory.mktemp("inference"), persistence_app.target)
    )
    await app.start()
    yield app
    await app.stop(5)


@pytest_asyncio.fixture(scope="session")
async def inspection_stub(
    inference_app: InferenceApp,
) -> AsyncIterator[pb_grpc.InspectionServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{inference_app.port}") as channel:
        yield pb_grpc.InspectionServiceStub(channel)


@pytest_asyncio.fixture(scope="session")
async def persistence_stub(
    persistence_app: PersistenceApp,
) -> AsyncIterator[ppb_grpc.PersistenceServiceStub]:
    async with grpc.aio.insecure_channel(persistence_app.target) as channel:
        yield ppb_grpc.PersistenceServiceStub(channel)


@pytest_asyncio.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


QUESTIONS = [
    pb.Question(type="Colour", label="Is the colour red?", value_to_check="Yes", mandatory=True),
    pb.Question(
        type="Brand", label="Is the brand ACME visible?", value_to_check="Yes", mandatory=True
    ),
    pb.Question(
        type="Damage", label="Is the product damaged?", value_to_check="No", mandatory=True
    ),
]


def make_request(image_server: ImageServer, **overrides: object) -> pb.InspectRequest:
    request = pb.InspectRequest(
        shipping_id="SHIP-IT-1",
        product_id="SKU-1",
        product_name="ACME mug, red",
        reference_images=[pb.Image(uri=image_server.url("ref.jpg"))],
        pickup_images=[
            pb.Image(uri=image_server.url("pickup.jpg")),
            pb.Image(content=image_server.images["pickup.jpg"]),
        ],
        questions=QUESTIONS,
    )
    for key, value in overrides.items():
        if isinstance(value, list):
            field = getattr(request, key)
            del field[:]
            field.extend(value)
        else:
            setattr(request, key, value)
    return request


async def wait_for_record(
    stub: ppb_grpc.PersistenceServiceStub, inspection_id: str, status: int
) -> ppb.InspectionRecord:
    """Events are delivered asynchronously; poll until the record reaches the status."""
    for _ in range(200):
        try:
            reply = await stub.GetInspection(ppb.GetInspectionRequest(inspection_id=inspection_id))
            if reply.inspection.status == status:
                return reply.inspection
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
        await asyncio.sleep(0.05)
    raise AssertionError(f"inspection {inspection_id} never reached status {status}")
