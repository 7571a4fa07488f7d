"""One call per pipeline stage that both opens its trace span and times it into
``rpi_inference_stage_seconds``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace

from svc_common.inference_metrics import InferenceMetrics, Stage


@contextmanager
def stage_span(
    tracer: trace.Tracer, metrics: InferenceMetrics | None, stage: Stage
) -> Iterator[trace.Span]:
    """``with stage_span(tracer, metrics, "fetch") as span: ...``: a child span named
    ``stage`` of the current span, and the block's duration observed for the stage (also when
    it raises, so failed and cancelled stages stay visible). Exceptions are recorded on the span.
    """
    with tracer.start_as_current_span(stage) as span:
        if metrics is None:
            yield span
        else:
            with metrics.time_stage(stage):
                yield span
