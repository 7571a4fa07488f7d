"""Fixtures of the asynchronous inspection tests: a persistence service of their own on a fresh
database (its job queue), and a direct database connection for assertions."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest_asyncio
from prometheus_client import CollectorRegistry
from rpi.persistence.v1 import persistence_pb2_grpc as ppb_grpc

from persistence_svc.app import PersistenceApp
from tests.support.persistence import running_persistence
from tests.support.postgres import PostgresForTests

MAX_ATTEMPTS = 2


@pytest_asyncio.fixture(scope="module")
async def jobs_db_url(postgres: PostgresForTests) -> AsyncIterator[str]:
    async with postgres.fresh_database("rpi_jobs_") as url:
        yield url


@pytest_asyncio.fixture(scope="module")
async def queue_app(jobs_db_url: str) -> AsyncIterator[PersistenceApp]:
    async with running_persistence(
        jobs_db_url,
        app_kwargs={"registry": CollectorRegistry()},
        max_job_attempts=MAX_ATTEMPTS,
        # The tests run the sweep themselves (JobQueue.sweep_once).
        job_sweep_interval_s=3600.0,
    ) as app:
        yield app


@pytest_asyncio.fixture(scope="module")
async def queue_stub(queue_app: PersistenceApp) -> AsyncIterator[ppb_grpc.PersistenceServiceStub]:
    async with grpc.aio.insecure_channel(queue_app.target) as channel:
        yield ppb_grpc.PersistenceServiceStub(channel)


@pytest_asyncio.fixture
async def jobs_db(jobs_db_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(jobs_db_url)
    yield conn
    await conn.close()
