"""The inference service's gRPC server: its interceptors (in the order they see a call), the
services it serves and what reflection lists. Built by the composition root (app.py)."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry
from rpi.inspection.v1 import inspection_pb2, inspection_pb2_grpc

from inference_svc.async_inspections import SERVICE_NAMES as ASYNC_SERVICES
from inference_svc.async_inspections import AsyncInspections
from inference_svc.grpc_api.errors import ERROR_DOMAIN, error_interceptor
from inference_svc.grpc_api.servicer import InspectionServicer
from inference_svc.settings import InferenceSettings
from svc_common.grpc_metrics import GrpcServerMetricsInterceptor
from svc_common.grpc_options import enable_reflection, server_options
from svc_common.health import HealthServicer
from svc_common.security import AuthMetrics, ServerSecurity
from svc_common.tracing import grpc_server_interceptors

SERVICE_NAME = inspection_pb2.DESCRIPTOR.services_by_name["InspectionService"].full_name


def build_server(
    settings: InferenceSettings,
    *,
    registry: CollectorRegistry,
    tracer_provider: TracerProvider | None,
    security: ServerSecurity,
    health: HealthServicer,
    inspections: InspectionServicer,
    async_inspections: AsyncInspections | None,
) -> grpc.aio.Server:
    """The server with every service added, not yet bound or started."""
    s = settings
    server = grpc.aio.server(
        interceptors=[
            GrpcServerMetricsInterceptor(registry),
            *grpc_server_interceptors(tracer_provider),
            security.interceptor(ERROR_DOMAIN, AuthMetrics(registry, security.known_callers())),
            error_interceptor(),
        ],
        options=server_options(
            max_receive_bytes=s.max_message_bytes, max_send_bytes=16 * 1024 * 1024
        ),
    )
    inspection_pb2_grpc.add_InspectionServiceServicer_to_server(inspections, server)
    if async_inspections is not None:
        async_inspections.add_to_server(server)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if security.reflection:
        enable_reflection(
            server, (SERVICE_NAME, *(ASYNC_SERVICES if async_inspections is not None else ()))
        )
    return server
