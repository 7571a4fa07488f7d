"""Part of the inference service's composition root (app.py builds it): asynchronous
inspections, assembled from the settings. The job queue's client, the callback guard, the
servicers of SubmitInspection and google.longrunning.Operations, and this replica's worker,
which claims only while the engine has a free row so that synchronous calls keep priority."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.longrunning import operations_proto_pb2 as lro
from prometheus_client import CollectorRegistry
from rpi.inspection.v1 import operations_pb2, operations_pb2_grpc

from inference_svc.domain.validation import RequestLimits
from inference_svc.grpc_api.admission import Admission
from inference_svc.grpc_api.async_jobs import JobRunner, webhook_body
from inference_svc.grpc_api.operations import (
    AsyncInspectionServicer,
    ExportTarget,
    OperationsServicer,
)
from inference_svc.imaging.fetch_config import FetchConfig
from inference_svc.operations.callbacks import CallbackGuard, forbidden
from inference_svc.operations.jobs_link import JobsLink
from inference_svc.operations.webhooks import WebhookSecrets, WebhookSender
from inference_svc.operations.worker import JobWorker
from inference_svc.pipeline import InspectionPipeline
from inference_svc.settings import InferenceSettings
from svc_common.job_metrics import JobWorkerMetrics, WebhookMetrics
from svc_common.tls import ClientTLS

SERVICE_NAMES = (
    operations_pb2.DESCRIPTOR.services_by_name["AsyncInspectionService"].full_name,
    lro.DESCRIPTOR.services_by_name["Operations"].full_name,
)


class AsyncInspections:
    def __init__(
        self,
        settings: InferenceSettings,
        *,
        pipeline: InspectionPipeline,
        limits: RequestLimits,
        admission: Admission,
        accepting: Callable[[], bool],
        registry: CollectorRegistry,
        interceptors: Sequence[Any],
        tls: ClientTLS | None,
        export_target: ExportTarget,
    ) -> None:
        """``accepting()``: whether this replica takes work now (serving, not draining)."""
        s = settings
        self.link = JobsLink(s.persistence_target, interceptors, tls)
        self.callbacks = CallbackGuard.from_fetch_config(FetchConfig.from_settings(s))
        self.limits = limits
        self.export_target = export_target
        self.max_wait_s = s.request_timeout_s
        # A bad secrets file stops the start (WebhookSecretsError).
        self.secrets: WebhookSecrets | None = None
        if s.webhook_secrets_file is not None:
            self.secrets = WebhookSecrets.load(s.webhook_secrets_file)
        self.worker: JobWorker | None = None
        self.sender: WebhookSender | None = None
        if not s.async_jobs:
            return
        name = f"{socket.gethostname()}/{os.getpid()}"
        webhook_metrics = WebhookMetrics(registry)
        self.sender = WebhookSender(
            self.link,
            webhook_body,
            self.callbacks,
            self.secrets,
            name=name,
            poll_s=s.job_poll_interval_s,
            timeout_s=s.webhook_timeout_s,
            on_outcome=webhook_metrics.on_outcome,
        )
        most = s.max_async_inspections or s.max_batch_size

        def room(mine: int) -> int:
            if not accepting():
                return 0
            return max(0, min(most - mine, s.max_batch_size - admission.inflight))

        self.worker = JobWorker(
            self.link,
            JobRunner(pipeline, limits, admission, s.request_timeout_s),
            room=room,
            name=name,
            lease_s=s.job_lease_s,
            poll_s=s.job_poll_interval_s,
            metrics=JobWorkerMetrics(registry),
        )

    def add_to_server(self, server: grpc.aio.Server) -> None:
        worker = self.worker
        operations_pb2_grpc.add_AsyncInspectionServiceServicer_to_server(
            AsyncInspectionServicer(
                self.link,
                self.limits,
                self.check_callback,
                self.export_target,
                worker.wake if worker is not None else lambda: None,
            ),
            server,
        )
        lro_grpc.add_OperationsServicer_to_server(
            OperationsServicer(
                self.link,
                self.max_wait_s,
                worker.cancel_local if worker is not None else lambda _job_id: False,
            ),
            server,
        )

    async def check_callback(self, url: str, caller: str) -> None:
        if self.secrets is None or not self.secrets.for_caller(caller):
            raise forbidden("this service has no webhook signing secret for the caller")
        await self.callbacks.check(url)

    def start(self) -> None:
        if self.worker is not None:
            self.worker.start()
        if self.sender is not None:
            self.sender.start()

    async def stop(self, grace_s: float) -> None:
        """Claims nothing more; runs still going after ``grace_s`` are queued again."""
        if self.worker is not None:
            await self.worker.stop(grace_s)
        if self.sender is not None:
            await self.sender.stop()

    async def close(self) -> None:
        await self.link.close()
        await self.callbacks.close()
