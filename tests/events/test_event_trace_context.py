"""Each spooled event carries the W3C trace context of the span that recorded it (the
inspection's), so that the persistence service can link its batch span to the inspection; an
untraced inspection spools none."""

from __future__ import annotations

from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from rpi.persistence.v1 import persistence_pb2 as ppb

from inference_svc.domain.errors import Stage
from inference_svc.events.delivery import EventDelivery
from inference_svc.events.recorder import SpoolingRecorder
from inference_svc.events.spool import EventSpool


async def spooled_events(tmp_path: Path, provider: TracerProvider | None) -> list[ppb.Event]:
    spool = EventSpool(tmp_path, max_bytes=1 << 20)
    delivery = EventDelivery(spool, sender=None)  # nothing delivers: the events stay spooled
    await delivery.start()
    recorder = SpoolingRecorder(delivery)
    if provider is None:
        await recorder.failure("id-1", Stage.FETCH, "IMAGE_FETCH_FAILED", "404", "NOT_FOUND")
    else:
        with provider.get_tracer("test").start_as_current_span("Inspect"):
            await recorder.failure("id-1", Stage.FETCH, "IMAGE_FETCH_FAILED", "404", "NOT_FOUND")
    events = [ppb.Event.FromString(e.payload) for e in await spool.peek(10)]
    await delivery.stop(0)
    return events


async def test_a_traced_inspection_spools_its_traceparent(tmp_path: Path) -> None:
    provider = TracerProvider()
    (event,) = await spooled_events(tmp_path, provider)
    traceparent = event.trace_context["traceparent"]
    version, trace_id, span_id, flags = traceparent.split("-")
    assert version == "00" and int(flags, 16) & 1  # sampled
    assert len(trace_id) == 32 and int(trace_id, 16) != 0
    assert len(span_id) == 16 and int(span_id, 16) != 0
    assert set(event.trace_context) <= {"traceparent", "tracestate"}  # no baggage


async def test_an_untraced_inspection_spools_no_context(tmp_path: Path) -> None:
    (event,) = await spooled_events(tmp_path, None)
    assert dict(event.trace_context) == {}
