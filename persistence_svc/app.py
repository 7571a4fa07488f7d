"""Composition root: builds the persistence service from PersistenceSettings and runs it.

Start-up order: without DATABASE_URL the embedded PostgreSQL is started first; then the gRPC
port is bound with health NOT_SERVING (so probes get an answer and RPCs get UNAVAILABLE rather
than connection refused), then the database is connected with retries and migrated; only then
health turns SERVING.
Shutdown: health NOT_SERVING, ``server.stop(grace)``, close the pool, stop embedded PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
import grpc
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)

from persistence_svc.database import EmbeddedPostgres, create_pool
from persistence_svc.errors import ERROR_DOMAIN
from persistence_svc.job_rpcs import CANCELLED_STATUS, lost_status
from persistence_svc.jobs import JobQueue, JobQueueHooks
from persistence_svc.migrations import apply_migrations
from persistence_svc.records import RecordOutcome
from persistence_svc.repository import Repository, WriteObserver
from persistence_svc.retention import RetentionMetrics, RetentionPolicy, RetentionSweeper
from persistence_svc.server import SERVICE_NAME, Health, build_server
from persistence_svc.servicer import PersistenceServicer
from persistence_svc.settings import PersistenceSettings
from svc_common.grpc_metrics import GrpcServerMetricsInterceptor
from svc_common.job_metrics import JobQueueMetrics
from svc_common.metrics_server import MetricsServer, start_metrics_server
from svc_common.persistence_metrics import PersistenceMetrics
from svc_common.security import AuthMetrics, server_security, start_health_port
from svc_common.tracing import (
    configure_tracing,
    grpc_server_interceptors,
    instrument_asyncpg,
    shutdown_tracing,
)

logger = logging.getLogger(__name__)

# Failures worth waiting out at start-up: the database is not up (yet), or not reachable.
_TRANSIENT_CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InvalidCatalogNameError,  # database not created yet
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
)


RECORD_EVENTS_METHOD = f"/{SERVICE_NAME}/RecordEvents"
# The inference service's writes, reserved with RecordEvents to WRITER_IDENTITIES.
WRITER_METHODS = [
    RECORD_EVENTS_METHOD,
    *(
        f"/{SERVICE_NAME}/{m}"
        for m in ("CreateJob", "GetJob", "ListJobs", "CancelJob", "DeleteJob", "ClaimJobs")
    ),
    *(
        f"/{SERVICE_NAME}/{m}"
        for m in ("RenewJobLeases", "FinishJob", "ClaimWebhooks", "ReportWebhook")
    ),
]


class PersistenceApp:
    """The whole service, startable in-process (tests use GRPC_LISTEN=127.0.0.1:0).

    Observability: Prometheus metrics in ``registry`` (gRPC server metrics, write latency,
    events by kind and outcome, batch sizes, database up), OpenTelemetry spans for each call
    and its SQL when ``tracer_provider`` is given. ``interceptors`` are appended after those.
    """

    def __init__(
        self,
        settings: PersistenceSettings,
        *,
        interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
        registry: CollectorRegistry | None = None,
        tracer_provider: TracerProvider | None = None,
        on_recorded: Callable[[RecordOutcome], None] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        if registry is None:
            # Process memory/CPU/fds and GC: what operators check first on a misbehaving pod.
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        self.metrics = PersistenceMetrics(
            self.registry, max_batch_size=settings.max_events_per_call
        )
        self.tracer_provider = tracer_provider
        self.health = Health()
        extra_on_recorded = on_recorded

        def recorded(outcome: RecordOutcome) -> None:
            self.metrics.batch_size.observe(outcome.applied + outcome.duplicates)
            for kind, n in outcome.applied_by_kind.items():
                self.metrics.events.labels(kind=kind.value, outcome="applied").inc(n)
            for kind, n in outcome.duplicates_by_kind.items():
                self.metrics.events.labels(kind=kind.value, outcome="duplicate").inc(n)
            if extra_on_recorded is not None:
                extra_on_recorded(outcome)

        self.servicer = PersistenceServicer(
            max_events_per_call=settings.max_events_per_call,
            default_page_size=settings.list_default_page_size,
            max_page_size=settings.list_max_page_size,
            on_recorded=recorded,
            on_database_state=lambda up: self.metrics.db_up.set(1 if up else 0),
        )
        # RecordEvents writes: with WRITER_IDENTITIES only those certificate identities may
        # call it, whatever the policy file grants others. Refuses contradictory settings.
        self.security = server_security(
            settings,
            reserved_methods=WRITER_METHODS if settings.writer_identity_list else [],
            certificate_callers=settings.writer_identity_list,
            certificate_methods=WRITER_METHODS,
        )
        self._interceptors = (
            GrpcServerMetricsInterceptor(self.registry),
            *grpc_server_interceptors(tracer_provider),
            self.security.interceptor(
                ERROR_DOMAIN, AuthMetrics(self.registry, self.security.known_callers())
            ),
            *interceptors,
        )
        self._health_server: grpc.aio.Server | None = None
        self.health_port = 0
        self._on_db_write: WriteObserver = self.metrics.write_seconds.observe
        self._server: grpc.aio.Server | None = None
        self._bound_port: int | None = None
        self._pool: asyncpg.Pool | None = None
        self.retention = RetentionPolicy(
            attempt_payload_days=settings.retention_attempt_payload_days,
            record_days=settings.retention_record_days,
            event_key_days=settings.retention_event_key_days,
            batch_size=settings.retention_batch_size,
        )
        self.retention_metrics = RetentionMetrics(self.registry)
        self._sweeper_task: asyncio.Task[None] | None = None
        self.sweeper: RetentionSweeper | None = None  # once connected
        self._embedded: EmbeddedPostgres | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._metrics_server: MetricsServer | None = None
        self._stopped = False
        self.repository: Repository | None = None
        self.jobs: JobQueue | None = None
        self.job_metrics = JobQueueMetrics(self.registry)
        self._sweep_task: asyncio.Task[None] | None = None
        self.database_url: str | None = settings.database_url
        self.ready = asyncio.Event()

    @property
    def bound_port(self) -> int:
        if self._bound_port is None:
            raise RuntimeError("the server is not started")
        return self._bound_port

    @property
    def target(self) -> str:
        """A loopback address clients in the same host can dial."""
        return f"127.0.0.1:{self.bound_port}"

    @property
    def pool(self) -> asyncpg.Pool | None:
        return self._pool

    async def start(self, *, wait_ready: bool = True) -> None:
        """Binds and starts the gRPC server, then connects and migrates the database (in the
        background when ``wait_ready`` is False; see ``wait_ready()``)."""
        # SQL spans (children of the call's span) come from patching asyncpg, process-wide.
        instrument_asyncpg(self.tracer_provider)
        await self.health.set_serving(False)
        if self.database_url is None:
            # Before any gRPC server thread exists: pgserver forks initdb/pg_ctl, and a fork while
            # gRPC threads run can crash the child (seen as initdb dying with SIGSEGV).
            self._embedded = await EmbeddedPostgres.start(self.settings.embedded_pg_dir)
            self.database_url = self._embedded.url
        server = build_server(
            self.servicer,
            self.health,
            max_message_bytes=self.settings.max_message_bytes,
            interceptors=self._interceptors,
            reflection_enabled=self.security.reflection,
        )
        self._bound_port = self.security.bind(server, self.settings.grpc_listen, "persistence_svc")
        await server.start()
        self._server = server
        health_port = await start_health_port(self.settings.health_listen, self.health.servicer)
        if health_port is not None:
            self._health_server, self.health_port = health_port
        logger.info("security", extra=self.security.describe())
        logger.info(
            "gRPC server listening on %s (port %d)", self.settings.grpc_listen, self._bound_port
        )
        self._start_metrics()
        self._connect_task = asyncio.create_task(self._connect(), name="persistence-connect")
        if wait_ready:
            await self.wait_ready()

    async def wait_ready(self) -> None:
        """Returns once SERVING; raises what made the database set-up fail."""
        if self._connect_task is None:
            raise RuntimeError("start() was not called")
        await asyncio.shield(self._connect_task)

    async def _connect(self) -> None:
        settings = self.settings
        if self.database_url is None:
            raise RuntimeError("no database URL")
        deadline = time.monotonic() + settings.db_connect_retry_max_s
        delay = 0.1
        while True:
            try:
                pool = await create_pool(
                    self.database_url,
                    min_size=settings.db_pool_min,
                    max_size=settings.db_pool_max,
                    command_timeout_s=settings.db_command_timeout_s,
                )
                break
            except _TRANSIENT_CONNECT_ERRORS as exc:
                if time.monotonic() + delay > deadline:
                    raise
                logger.warning("database not reachable yet (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self._pool = pool
        async with pool.acquire() as conn:
            applied = await apply_migrations(conn)
        if applied:
            logger.info("applied migrations %s", applied)
        self.repository = Repository(
            pool,
            transaction_retries=settings.db_transaction_retries,
            acquire_timeout_s=settings.db_command_timeout_s,
            on_write=self._on_db_write,
        )
        m = self.job_metrics
        self.jobs = JobQueue(
            self.repository,
            max_attempts=settings.max_job_attempts,
            retention_s=settings.job_retention_s,
            cancelled_error=CANCELLED_STATUS,
            lost_error=lost_status(settings.max_job_attempts),
            webhook_schedule_s=tuple(settings.webhook_retry_schedule_s),
            hooks=JobQueueHooks(
                on_created=m.created.inc,
                on_claimed=m.on_claimed,
                on_finished=m.on_finished,
                on_expired=m.lease_expiries.inc,
                on_webhook=m.on_webhook,
                on_dead_letters=m.dead_letters.set,
                on_stats=lambda s: m.set_queue(s.queued, s.running, s.oldest_queued_s),
            ),
        )
        self.servicer.attach(self.repository, self.jobs)
        self._sweep_task = asyncio.create_task(
            self.jobs.sweep_forever(settings.job_sweep_interval_s), name="job-sweep"
        )
        self.sweeper = RetentionSweeper(pool, self.retention, self.retention_metrics)
        if self.retention.enabled:
            self._sweeper_task = asyncio.create_task(
                self.sweeper.run(settings.retention_sweep_interval_s), name="retention-sweeper"
            )
        self.metrics.db_up.set(1)
        await self.health.set_serving(True)
        self.ready.set()
        logger.info("persistence service SERVING")

    def _start_metrics(self) -> None:
        if self.settings.metrics_port < 0:
            return
        self._metrics_server = start_metrics_server(
            self.registry, self.settings.metrics_host, self.settings.metrics_port
        )

    @property
    def metrics_port(self) -> int | None:
        return None if self._metrics_server is None else self._metrics_server.port

    async def stop(self, grace: float | None = None) -> None:
        """Drains and releases everything; safe to call twice and after a failed start."""
        if self._stopped:
            return
        self._stopped = True
        await self.health.drain()
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
            with contextlib.suppress(BaseException):
                await self._connect_task
        if self._server is not None:
            await self._server.stop(self.settings.drain_grace_s if grace is None else grace)
        if self._sweep_task is not None:
            self._sweep_task.cancel()
            with contextlib.suppress(BaseException):
                await self._sweep_task
        self.servicer.attach(None)
        if self._sweeper_task is not None:
            self._sweeper_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper_task
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), timeout=10.0)
            except TimeoutError:
                logger.warning("pool did not close in time; terminating its connections")
                self._pool.terminate()
        if self._embedded is not None:
            await self._embedded.stop()
        self.metrics.db_up.set(0)
        if self._metrics_server is not None:
            await asyncio.to_thread(self._metrics_server.stop)
        if self._health_server is not None:
            # Last: probes keep getting answers (NOT_SERVING) for the whole drain.
            await self._health_server.stop(None)
        logger.info("persistence service stopped")


async def run_server(settings: PersistenceSettings, ready: asyncio.Event | None = None) -> int:
    """Runs until SIGTERM/SIGINT; returns the process exit status. ``ready`` is set once
    SERVING."""
    provider = configure_tracing("persistence_svc")
    try:
        return await _run(PersistenceApp(settings, tracer_provider=provider), ready)
    finally:
        shutdown_tracing(provider)


async def _run(app: PersistenceApp, ready: asyncio.Event | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    exit_code = 0
    try:
        await app.start(wait_ready=False)
        ready_task = asyncio.create_task(app.wait_ready())
        stop_task = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({ready_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if ready_task in done and ready_task.exception() is not None:
            logger.error("start-up failed: %s", ready_task.exception())
            exit_code = 1
        else:
            if ready_task in done and ready is not None:
                ready.set()
            await stop_task
            logger.info("signal received, draining")
        ready_task.cancel()
        stop_task.cancel()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await app.stop()
    return exit_code
