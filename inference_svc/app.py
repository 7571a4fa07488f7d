"""Composition root of the inference service: builds every component from InferenceSettings,
runs the gRPC server and drains it on SIGTERM."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import time

import grpc
from grpc_health.v1 import health_pb2
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)

from inference_svc.async_inspections import AsyncInspections
from inference_svc.domain.policy import DEFAULT_POLICY_NAME, PolicyHolder
from inference_svc.domain.prompt import PromptTemplate
from inference_svc.domain.validation import RequestLimits
from inference_svc.engine.api import Engine
from inference_svc.engine.config import EngineConfig
from inference_svc.engine.process_client import ProcessEngine
from inference_svc.engine.runtime import create_engine
from inference_svc.events.delivery import DeliveryHooks, EventDelivery, LinkState
from inference_svc.events.link_health import PERSISTENCE_LINK_HEALTH_NAME, link_health_status
from inference_svc.events.metrics import DeliveryMetrics
from inference_svc.events.recorder import NullRecorder, SpoolingRecorder
from inference_svc.events.spool import EventSpool
from inference_svc.grpc_api.admission import Admission
from inference_svc.grpc_api.servicer import InspectionServicer
from inference_svc.grpc_server import SERVICE_NAME, build_server
from inference_svc.imaging.buckets import BucketReader
from inference_svc.imaging.fetch import FetchConfig, ImageFetcher
from inference_svc.imaging.fetch_cache_metrics import FetchCacheCollector
from inference_svc.intake import pixel_budget, preparer, worker_pools
from inference_svc.observability import MetricsObserver
from inference_svc.persistence_link import PersistenceSender
from inference_svc.pipeline import InspectionPipeline, PipelineConfig
from inference_svc.reuse_lookup import PersistenceReuseLookup
from inference_svc.settings import InferenceSettings
from inference_svc.storage.wiring import Storage
from svc_common.health import LIVENESS_SERVICE, HealthServicer
from svc_common.inference_metrics import InferenceMetrics, VisionCacheCounts
from svc_common.metrics_server import MetricsServer, start_metrics_server
from svc_common.security import server_security, start_health_port
from svc_common.tls import ClientTLS
from svc_common.tracing import (
    configure_tracing,
    get_tracer,
    grpc_client_interceptors,
    shutdown_tracing,
)

log = logging.getLogger(__name__)


def engine_config(settings: InferenceSettings) -> EngineConfig:
    """Every EngineConfig field from the setting of the same name."""
    values = settings.model_dump()
    return EngineConfig(
        **{f.name: values[f.name] for f in dataclasses.fields(EngineConfig) if f.name in values}
    )


class InferenceApp:
    """The whole service. Tests run it in-process: ``await app.start()``, ``app.port``,
    ``await app.stop()``."""

    def __init__(
        self,
        settings: InferenceSettings,
        registry: CollectorRegistry | None = None,
        tracer_provider: TracerProvider | None = None,
        engine: Engine | None = None,
    ) -> None:
        """``engine``: the model engine to serve with (benchmarks bring their own); default
        the one ``create_engine`` builds from the settings."""
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        if registry is None:
            # Process memory/CPU/fds and GC: what operators check first on a misbehaving pod.
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        self.tracer_provider = tracer_provider
        self.metrics = InferenceMetrics(
            self.registry,
            max_batch_size=settings.max_batch_size,
            policy_names=(DEFAULT_POLICY_NAME,),
        )
        self.health = HealthServicer()
        # Refuses to start on a contradictory security configuration (SecurityConfigError).
        self.security = server_security(settings)
        self.health_server: grpc.aio.Server | None = None
        self.executor, self.prepare_executor = worker_pools(settings)
        self.engine = engine or create_engine(engine_config(settings), log_level=settings.log_level)
        if isinstance(self.engine, ProcessEngine):
            self.engine.on_exit = self._engine_lost
        # Bucket reads, the evidence archive and the result export (docs/storage.md).
        self.storage = Storage.from_settings(settings, self.registry)
        fetch_config = FetchConfig.from_settings(settings)
        self.fetcher = ImageFetcher(
            fetch_config,
            buckets=BucketReader.from_settings(settings, fetch_config, self.storage.stores),
        )
        if self.fetcher.cache is not None:
            self.registry.register(FetchCacheCollector(self.fetcher.cache))
        self.template = PromptTemplate.load(settings.prompt_template_path)
        self.sender: PersistenceSender | None = None
        if settings.persistence_target:
            self.sender = PersistenceSender(
                settings.persistence_target,
                settings.event_send_timeout_s,
                interceptors=grpc_client_interceptors(tracer_provider),
                tls=_persistence_tls(settings),
                tracer=get_tracer(tracer_provider, "inference_svc.events"),
            )
        # A bad policy file stops the start (PolicyError): validated before serving.
        self.policies = PolicyHolder.open(settings.policy_file)
        self.metrics.policy_reload_failed.set_function(
            lambda: float(self.policies.last_reload_failed)
        )
        self._policy_task: asyncio.Task[None] | None = None
        self.reuse_lookup: PersistenceReuseLookup | None = None
        if settings.persistence_target:
            self.reuse_lookup = PersistenceReuseLookup(
                settings.persistence_target,
                grpc_client_interceptors(tracer_provider),
                tls=_persistence_tls(settings),
            )
        self.delivery_metrics = DeliveryMetrics(self.registry)
        self.delivery = EventDelivery(
            EventSpool(settings.event_spool_dir, settings.event_spool_max_bytes),
            self.sender,
            batch_size=settings.event_batch_size,
            max_backoff_s=settings.event_retry_max_backoff_s,
            hooks=DeliveryHooks(
                on_attempt=lambda n: self.metrics.event_delivery_attempts.inc(),
                on_delivered=self.metrics.events_delivered.inc,
                on_failure=self.metrics.record_delivery_failure,
                on_dead_letter=self.delivery_metrics.on_dead_letter,
                on_link_state=self._on_link_state,
            ),
        )
        self.delivery_metrics.bind(self.delivery, self.metrics)
        recorder = self.storage.recorder(
            SpoolingRecorder(self.delivery) if self.sender else NullRecorder()
        )
        self.admission = Admission(
            settings.max_concurrent_requests,
            engine_capacity=settings.max_queue_size + settings.max_batch_size,
        )
        self.admission.on_change(self.metrics.inflight_requests.set)
        self.admission.on_reject(self.metrics.record_rejection)
        self.metrics.inflight_limit.set(settings.max_concurrent_requests)
        self.metrics.queue_capacity.set(settings.max_queue_size)
        self.metrics.queue_depth.set_function(lambda: float(self.engine.queue_depth()))
        self.metrics.vision_cache.bind(self._vision_cache_counts)
        self.prepare = preparer(settings)
        self.pixel_budget = pixel_budget(settings)
        self.pipeline = InspectionPipeline(
            fetcher=self.storage.fetcher(self.fetcher),
            prepare=self.prepare,
            engine=self.engine,
            template=self.template,
            recorder=recorder,
            executor=self.executor,
            prepare_executor=self.prepare_executor,
            pixel_budget=self.pixel_budget,
            config=PipelineConfig(
                reference_max_tiles=settings.reference_max_tiles,
                pickup_max_tiles=settings.pickup_max_tiles,
                max_new_tokens=settings.max_new_tokens,
                max_output_retries=settings.max_output_retries,
            ),
            observer=MetricsObserver(self.metrics),
            tracer=get_tracer(tracer_provider, "inference_svc.pipeline"),
            policies=self.policies,
            reuse_lookup=self.reuse_lookup,
        )
        self.limits = RequestLimits(
            max_reference_images=settings.max_reference_images,
            max_pickup_images=settings.max_pickup_images,
            max_questions=settings.max_questions,
            max_text_length=settings.max_text_length,
            max_legacy_questions_bytes=settings.max_legacy_questions_bytes,
            allow_http=settings.allow_http,
            bucket_schemes=Storage.bucket_schemes(settings),
        )
        self.async_inspections: AsyncInspections | None = None
        if settings.persistence_target:
            self.async_inspections = AsyncInspections(
                settings,
                pipeline=self.pipeline,
                limits=self.limits,
                admission=self.admission,
                accepting=lambda: self.serving and not self.draining,
                registry=self.registry,
                interceptors=grpc_client_interceptors(tracer_provider),
                tls=_persistence_tls(settings),
                export_target=self.storage.export_targets.target,
            )
        self.serving = False
        self.draining = False
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.health_port = 0
        self.metrics_server: MetricsServer | None = None
        self._stopped = asyncio.Event()

    async def _on_link_state(self, state: LinkState) -> None:
        self.delivery_metrics.on_link_state(state)
        await self.health.set(PERSISTENCE_LINK_HEALTH_NAME, link_health_status(state))

    def _vision_cache_counts(self) -> VisionCacheCounts:
        stats = self.engine.stats()
        return VisionCacheCounts(
            stats.vision_cache_hits,
            stats.vision_cache_misses,
            stats.vision_cache_evictions,
            stats.vision_cache_bytes,
        )

    def _engine_lost(self) -> None:
        """The engine process died and cannot come back in this pod: readiness and liveness
        both fail, so the orchestrator stops routing here and restarts the container."""
        if not self.serving:
            return
        self.serving = False
        self.metrics.set_model_ready(False)
        self._lost_engine_task = asyncio.create_task(self._report_engine_lost())

    async def _report_engine_lost(self) -> None:
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def start(self) -> None:
        s = self.settings
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        self.server = build_server(
            s,
            registry=self.registry,
            tracer_provider=self.tracer_provider,
            security=self.security,
            health=self.health,
            inspections=InspectionServicer(
                self.pipeline,
                self.limits,
                self.admission,
                s.request_timeout_s,
                lambda: self.serving,
                lambda: self.draining,
            ),
            async_inspections=self.async_inspections,
        )
        self.port = self.security.bind(self.server, s.grpc_listen, "inference_svc")
        if self.port == 0:
            raise RuntimeError(f"could not bind {s.grpc_listen}")
        await self.server.start()
        health_port = await start_health_port(s.health_listen, self.health)
        if health_port is not None:
            self.health_server, self.health_port = health_port
        log.info("security", extra=self.security.describe())
        if s.metrics_port >= 0:
            self.metrics_server = start_metrics_server(
                self.registry, s.metrics_host, s.metrics_port
            )
        log.info("inference gRPC server listening", extra={"port": self.port})
        await self.delivery.start()
        await self.storage.start()
        if self.policies.path is not None:
            self._policy_task = asyncio.create_task(
                self.policies.watch(on_failures=self.metrics.policy_reload_failures.inc)
            )
        t0 = time.monotonic()
        await self.engine.start()
        info = self.engine.info
        self.metrics.set_model_info(
            name=info.model_name, revision=info.model_revision, device=info.device, dtype=info.dtype
        )
        if info.untrained:
            log.warning(
                "SERVING AN UNTRAINED DEMO MODEL: MODEL_PATH is unset, so a small randomly "
                "initialised InternVL was built locally. Its answers carry no meaning."
            )
        log.info("model ready", extra={"load_seconds": round(time.monotonic() - t0, 2)})
        self.serving = True
        self.metrics.set_model_ready(True)
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        if self.async_inspections is not None:
            self.async_inspections.start()

    async def stop(self, grace_s: float | None = None, prestop_s: float = 0.0) -> None:
        """Drain: readiness NOT_SERVING at once, liveness stays SERVING, new inspections are
        refused DRAINING (retryable) while health checks keep being answered: for ``prestop_s``
        so that load balancers see the change, then until the in-flight inspections finish or
        the grace runs out. Only then does the server stop listening; it delivers pending
        events and releases the model."""
        grace = self.settings.drain_grace_s if grace_s is None else grace_s
        self.serving = False
        self.draining = True
        self.metrics.set_model_ready(False)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if prestop_s > 0 and self.server is not None:
            log.info("draining: refusing new inspections", extra={"prestop_s": prestop_s})
            await asyncio.sleep(prestop_s)
        started = time.monotonic()
        # Still listening while in-flight work finishes: liveness answers SERVING through the
        # whole drain, so a liveness window shorter than the grace never restarts the pod.
        await self.admission.wait_idle(grace)
        if self.async_inspections is not None:
            await self.async_inspections.stop(max(0.0, grace - (time.monotonic() - started)))
        if self.server is not None:
            await self.server.stop(max(0.0, grace - (time.monotonic() - started)))
        await self.engine.stop()
        remaining = max(1.0, grace - (time.monotonic() - started))
        flushed = await self.delivery.stop(remaining)
        log.info("drained", extra={"events_flushed": flushed})
        await self.storage.stop(max(1.0, grace - (time.monotonic() - started)))
        if self._policy_task is not None:
            self._policy_task.cancel()
        if self.sender is not None:
            await self.sender.close()
        if self.reuse_lookup is not None:
            await self.reuse_lookup.close()
        if self.async_inspections is not None:
            await self.async_inspections.close()
        await self.fetcher.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.prepare_executor is not self.executor:
            self.prepare_executor.shutdown(wait=False, cancel_futures=True)
        if self.metrics_server is not None:
            await asyncio.to_thread(self.metrics_server.stop)
        if self.health_server is not None:
            # Last: probes keep getting answers (NOT_SERVING) for the whole drain.
            await self.health_server.stop(None)
        self._stopped.set()

    @property
    def persistence_link(self) -> LinkState:
        return self.delivery.link_state


def _persistence_tls(settings: InferenceSettings) -> ClientTLS | None:
    """TLS towards the persistence service when its CA or a client certificate is configured."""
    if not (settings.persistence_tls_ca_file or settings.persistence_tls_cert_file):
        return None
    tls = ClientTLS(
        settings.persistence_tls_ca_file,
        settings.persistence_tls_cert_file,
        settings.persistence_tls_key_file,
    )
    tls.channel_credentials()  # unreadable files fail the start, not the first delivery
    return tls


async def serve(settings: InferenceSettings) -> None:
    provider = configure_tracing("inference_svc")
    try:
        await _serve(InferenceApp(settings, tracer_provider=provider))
    finally:
        shutdown_tracing(provider)


async def _serve(app: InferenceApp) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    start_task = asyncio.create_task(app.start())
    stop_task = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({start_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    if start_task in done and start_task.exception() is not None:
        stop_task.cancel()
        await app.stop(0)
        raise start_task.exception()  # type: ignore[misc]
    await stop.wait()
    log.info("SIGTERM received: draining")
    if not start_task.done():
        start_task.cancel()
    await app.stop(prestop_s=app.settings.drain_prestop_s)
