"""Test support shared by this package's tests and the platform's integration tests.

A real PostgreSQL is used: TEST_DATABASE_URL, else postgresql://postgres@127.0.0.1:5432/test.
When nothing listens there, an embedded PostgreSQL (pgserver) is started in a temporary folder
instead and deleted afterwards. Every test run then works in databases of its own, created and
dropped here, so runs never see each other's rows.

    async with database_url_for_tests() as url:          # one throw-away database
        settings = PersistenceSettings(database_url=url, grpc_listen="127.0.0.1:0",
                                       metrics_port=-1)
        app = PersistenceApp(settings)
        await app.start()
        ...
        await app.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit, urlunsplit
from uuid import uuid4

import asyncpg
import grpc
from google.protobuf.struct_pb2 import Struct
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from rpi.inspection.v1 import inspection_pb2
from rpi.persistence.v1 import persistence_pb2

from persistence_svc.database import EmbeddedPostgres

logger = logging.getLogger(__name__)

DEFAULT_TEST_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database of the same server (TCP or unix-socket URLs)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


@dataclass
class PostgresForTests:
    """A PostgreSQL server on which tests may create and drop databases."""

    __test__ = False  # not a pytest test class, whatever name it is imported under

    admin_url: str
    embedded: EmbeddedPostgres | None = None
    # Temporary folder holding the embedded server's data, removed by close().
    scratch_dir: Path | None = None

    async def create_database(self, prefix: str = "rpi_test_") -> str:
        """Creates an empty database; returns its URL."""
        name = f"{prefix}{secrets.token_hex(6)}"
        conn = await asyncpg.connect(self.admin_url)
        try:
            # Identifiers cannot be bound parameters; the name is generated right above.
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return with_database(self.admin_url, name)

    async def drop_database(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    @asynccontextmanager
    async def fresh_database(self, prefix: str = "rpi_test_") -> AsyncIterator[str]:
        url = await self.create_database(prefix)
        try:
            yield url
        finally:
            await self.drop_database(url)

    async def close(self) -> None:
        if self.embedded is not None:
            await self.embedded.stop()
            self.embedded = None
        if self.scratch_dir is not None:
            shutil.rmtree(self.scratch_dir, ignore_errors=True)
            self.scratch_dir = None


# The name this helper first had; integration tests import it.
TestPostgres = PostgresForTests


async def start_test_postgres(url: str | None = None) -> PostgresForTests:
    """The test server: ``url``, TEST_DATABASE_URL or the default, and an embedded PostgreSQL in
    a temporary folder when nothing listens there. Call ``close()`` when done."""
    admin_url = url or os.environ.get("TEST_DATABASE_URL") or DEFAULT_TEST_DATABASE_URL
    try:
        conn = await asyncpg.connect(admin_url, timeout=5)
    except (OSError, TimeoutError) as exc:
        logger.info("no PostgreSQL at %s (%s): starting an embedded one", admin_url, exc)
    else:
        await conn.close()
        return PostgresForTests(admin_url=admin_url)
    scratch_dir = Path(tempfile.mkdtemp(prefix="rpi-pg-"))
    embedded = await EmbeddedPostgres.start(scratch_dir / "data", delete_on_stop=True)
    return PostgresForTests(admin_url=embedded.url, embedded=embedded, scratch_dir=scratch_dir)


@asynccontextmanager
async def database_url_for_tests(url: str | None = None) -> AsyncIterator[str]:
    """A fresh, empty database for the duration of the block (dropped afterwards)."""
    server = await start_test_postgres(url)
    try:
        async with server.fresh_database() as database_url:
            yield database_url
    finally:
        await server.close()


# --- event builders --------------------------------------------------------------------------


def new_id() -> str:
    return str(uuid4())


def _event(
    inspection_id: str, occur_time: datetime | None, event_id: str | None
) -> persistence_pb2.Event:
    event = persistence_pb2.Event(event_id=event_id or new_id(), inspection_id=inspection_id)
    event.occur_time.FromDatetime(occur_time or datetime.now(UTC))
    return event


def request_event(
    inspection_id: str,
    *,
    shipping_id: str,
    previous_inspection_id: str = "",
    product_name: str = "Blue cotton T-shirt",
    occur_time: datetime | None = None,
    event_id: str | None = None,
) -> persistence_pb2.Event:
    event = _event(inspection_id, occur_time, event_id)
    event.request_received.CopyFrom(
        persistence_pb2.RequestReceived(
            shipping_id=shipping_id,
            product_id="SKU-1",
            product_name=product_name,
            previous_inspection_id=previous_inspection_id,
            questions=[
                inspection_pb2.Question(
                    type="Colour", label="Is the colour blue?", value_to_check="Yes", mandatory=True
                )
            ],
            legacy_questions=False,
            images=[
                persistence_pb2.ImageRecord(
                    role=persistence_pb2.IMAGE_ROLE_REFERENCE,
                    index=0,
                    uri="https://cdn.example.com/ref.jpg",
                    fetched_uri="https://cdn.example.com/ref.jpg",
                    sha256="ab" * 32,
                    size_bytes=123_456,
                    width=800,
                    height=600,
                    format="JPEG",
                    tiles=1,
                ),
                persistence_pb2.ImageRecord(
                    role=persistence_pb2.IMAGE_ROLE_PICKUP,
                    index=0,
                    inline=True,
                    sha256="cd" * 32,
                    size_bytes=654_321,
                    width=1200,
                    height=1600,
                    format="PNG",
                    tiles=3,
                ),
            ],
            method="Inspect",
            # Both forms, as the inference service sends them.
            inspect_method=persistence_pb2.INSPECT_METHOD_INSPECT,
        )
    )
    return event


def attempt_event(
    inspection_id: str,
    attempt_number: int = 1,
    *,
    valid: bool = True,
    raw_output: str = '{"verification_results": []}',
    validation_errors: Sequence[str] = (),
    occur_time: datetime | None = None,
    event_id: str | None = None,
) -> persistence_pb2.Event:
    event = _event(inspection_id, occur_time, event_id)
    parsed = Struct()
    parsed.update({"verification_results": [{"Label": "Is the colour blue?", "Result": "Yes"}]})
    attempt = persistence_pb2.AttemptRecorded(
        attempt_number=attempt_number,
        prompt="<image> Compare the images.",
        prompt_sha256="ef" * 32,
        template_version="v1",
        template_sha256="01" * 32,
        raw_output=raw_output,
        parsed_output=parsed,
        valid=valid,
        validation_errors=list(validation_errors),
        prompt_tokens=812,
        completion_tokens=145,
        constrained=True,
        model_name="InternVL2.5-1B",
        model_revision="test",
    )
    attempt.duration.FromMilliseconds(1234)
    event.attempt_recorded.CopyFrom(attempt)
    return event


def result_event(
    inspection_id: str,
    *,
    shipping_id: str,
    previous_inspection_id: str = "",
    decision: inspection_pb2.Decision.ValueType = inspection_pb2.DECISION_PICK,
    occur_time: datetime | None = None,
    event_id: str | None = None,
) -> persistence_pb2.Event:
    event = _event(inspection_id, occur_time, event_id)
    inspection = inspection_pb2.Inspection(
        inspection_id=inspection_id,
        previous_inspection_id=previous_inspection_id,
        shipping_id=shipping_id,
        product_id="SKU-1",
        decision=decision,
        model_recommendation=inspection_pb2.RECOMMENDATION_ACCEPT,
        match_score=87.5,
        answers=[
            inspection_pb2.Answer(
                label="Is the colour blue?",
                type="Colour",
                answer="Yes",
                value_to_check="Yes",
                mandatory=True,
                evidence="The shirt is blue in every photo.",
                confidence=91,
                source=inspection_pb2.ANSWER_SOURCE_MODEL,
            )
        ],
        analysis=inspection_pb2.Analysis(
            pickup_description="A blue T-shirt.",
            reference_description="A blue T-shirt.",
            comparison="Same item.",
        ),
        attempts=1,
        model=inspection_pb2.ModelInfo(name="InternVL2.5-1B", revision="test"),
    )
    inspection.create_time.FromDatetime(occur_time or datetime.now(UTC))
    event.result_recorded.CopyFrom(persistence_pb2.ResultRecorded(inspection=inspection))
    return event


def failure_event(
    inspection_id: str,
    *,
    reason: str = "IMAGE_FETCH_FAILED",
    stage: str = "fetch",
    occur_time: datetime | None = None,
    event_id: str | None = None,
) -> persistence_pb2.Event:
    event = _event(inspection_id, occur_time, event_id)
    event.failure_recorded.CopyFrom(
        persistence_pb2.FailureRecorded(
            stage=stage,
            reason=reason,
            message="could not fetch an image",
            status_code="UNAVAILABLE",
            # Both forms, as the inference service sends them (UNSPECIFIED for an unknown one).
            failure_stage=getattr(
                persistence_pb2,
                f"FAILURE_STAGE_{stage.upper()}",
                persistence_pb2.FAILURE_STAGE_UNSPECIFIED,
            ),
        )
    )
    return event


# --- error details and fault injection ------------------------------------------------------


def bad_request_fields(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The BadRequest field violations carried by an error, field -> description."""
    status = rpc_status.from_call(cast(Any, error))
    if status is None:
        raise AssertionError("no google.rpc.Status in the trailers")
    fields: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            fields.update({v.field: v.description for v in bad_request.field_violations})
    return fields


def error_reason(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(cast(Any, error))
    if status is None:
        raise AssertionError("no google.rpc.Status in the trailers")
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


class PgProxy:
    """A loopback TCP proxy in front of PostgreSQL that a test can cut, to make the database
    unreachable for real (connection refused, connections reset) and then bring it back."""

    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        query = parse_qs(parts.query)
        self._socket_dir = query["host"][0] if "host" in query else None
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 5432
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._socket_dir is not None:
            return await asyncio.open_unix_connection(f"{self._socket_dir}/.s.PGSQL.{self._port}")
        return await asyncio.open_connection(self._host, self._port)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await self._open_upstream()
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        for task in (
            asyncio.create_task(pipe(reader, up_writer)),
            asyncio.create_task(pipe(up_reader, writer)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def cut(self) -> None:
        """Stops listening and resets every proxied connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        if server is not None:
            await server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"
