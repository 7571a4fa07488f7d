"""Observability shared by inference_svc and persistence_svc: JSON logs, Prometheus metrics
(gRPC server metrics named as go-grpc-prometheus names them, plus each service's own) and
OpenTelemetry tracing configured from the standard OTEL_* variables."""

from svc_common.grpc_metrics import GrpcServerMetricsInterceptor
from svc_common.inference_metrics import InferenceMetrics
from svc_common.logging import bind_inspection_id, configure_logging, inspection_id_var
from svc_common.metrics_server import MetricsServer, start_metrics_server
from svc_common.persistence_metrics import PersistenceMetrics
from svc_common.stage_span import stage_span
from svc_common.tracing import (
    configure_tracing,
    get_tracer,
    grpc_client_interceptors,
    grpc_server_interceptors,
    instrument_asyncpg,
    shutdown_tracing,
)

__all__ = [
    "GrpcServerMetricsInterceptor",
    "InferenceMetrics",
    "MetricsServer",
    "PersistenceMetrics",
    "bind_inspection_id",
    "configure_logging",
    "configure_tracing",
    "get_tracer",
    "grpc_client_interceptors",
    "grpc_server_interceptors",
    "inspection_id_var",
    "instrument_asyncpg",
    "shutdown_tracing",
    "stage_span",
    "start_metrics_server",
]
