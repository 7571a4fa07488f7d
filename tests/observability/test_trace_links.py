"""Traces across both real services (the inference service with the demo model, the persistence
service with a real Postgres): each inspection is one trace from the caller through the
inference server span and its stages; events reach Postgres later, in batches, and the
persistence service's span for a batch links to every inspection in it, with its SQL spans as
children. Failed calls carry their real gRPC code and, for server-side codes, status ERROR.

Both services sample nothing on their own here (parent-based, always off): the caller's sampled
inspections are traced, and so are the deliveries of their records (LinkAwareSampler)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBasedTraceIdRatio, Sampler
from opentelemetry.trace import SpanKind, StatusCode
from rpi.inspection.v1 import inspection_pb2 as pb
from rpi.inspection.v1 import inspection_pb2_grpc as pb_grpc
from rpi.persistence.v1 import persistence_pb2 as ppb
from rpi.persistence.v1 import persistence_pb2_grpc as ppb_grpc

from inference_svc.app import InferenceApp
from persistence_svc.app import PersistenceApp
from svc_common.tracing import LinkAwareSampler, grpc_client_interceptors, uninstrument_asyncpg
from tests.support.e2e import ImageServer, inference_settings, make_request, wait_for_record
from tests.support.persistence import persistence_settings
from tools.trace_tree import render

INSPECT = "/rpi.inspection.v1.InspectionService/Inspect"
RECORD_EVENTS = "/rpi.persistence.v1.PersistenceService/RecordEvents"
GET_INSPECTION = "/rpi.persistence.v1.PersistenceService/GetInspection"


# What a service gets from OTEL_TRACES_SAMPLER=parentbased_traceidratio, here at ratio 0.
SERVICE_SAMPLER = LinkAwareSampler(ParentBasedTraceIdRatio(0.0))


def provider(exporter: InMemorySpanExporter, service: str, sampler: Sampler) -> TracerProvider:
    made = TracerProvider(resource=Resource.create({"service.name": service}), sampler=sampler)
    made.add_span_processor(SimpleSpanProcessor(exporter))
    return made


def attr(span: ReadableSpan, key: str) -> object:
    return (span.attributes or {}).get(key)


def one(spans: Sequence[ReadableSpan], name: str, kind: SpanKind, **attrs: object) -> ReadableSpan:
    found = [
        s
        for s in spans
        if s.name == name and s.kind is kind and all(attr(s, k) == v for k, v in attrs.items())
    ]
    assert len(found) == 1, f"{name} {kind} {attrs}: {len(found)} spans"
    return found[0]


def parent_of(child: ReadableSpan, parent: ReadableSpan) -> bool:
    assert child.context is not None and parent.context is not None
    return (
        child.parent is not None
        and child.parent.span_id == parent.context.span_id
        and child.context.trace_id == parent.context.trace_id
    )


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


async def test_one_trace_per_inspection_and_batches_linked_to_them(
    exporter: InMemorySpanExporter,
    database_url: str,
    image_server: ImageServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caller_tracing = provider(exporter, "caller", ALWAYS_ON)
    inference_tracing = provider(exporter, "inference_svc", SERVICE_SAMPLER)
    persistence_tracing = provider(exporter, "persistence_svc", SERVICE_SAMPLER)
    persistence = PersistenceApp(
        persistence_settings(database_url),
        tracer_provider=persistence_tracing,
    )
    ids = {"ok": str(uuid.uuid4()), "missing": str(uuid.uuid4()), "down": str(uuid.uuid4())}
    pickups = {
        "ok": image_server.url("pickup.jpg"),
        "missing": image_server.url("missing.jpg"),  # 404: INVALID_ARGUMENT
        "down": "http://images.invalid/p.jpg",  # never resolves: UNAVAILABLE
    }
    unknown_id = str(uuid.uuid4())
    try:
        await persistence.start()
        inference = InferenceApp(
            inference_settings(tmp_path, persistence.target), tracer_provider=inference_tracing
        )
        await inference.start()
        try:
            async with grpc.aio.insecure_channel(
                f"127.0.0.1:{inference.port}",
                interceptors=grpc_client_interceptors(caller_tracing),
            ) as channel:
                stub = pb_grpc.InspectionServiceStub(channel)
                tracer = caller_tracing.get_tracer("caller")

                async def call(case: str) -> grpc.StatusCode:
                    request = make_request(
                        image_server,
                        inspection_id=ids[case],
                        pickup_images=[pb.Image(uri=pickups[case])],
                    )
                    with tracer.start_as_current_span(f"caller {case}"):
                        try:
                            await stub.Inspect(request, timeout=120)
                        except grpc.aio.AioRpcError as exc:
                            return exc.code()
                    return grpc.StatusCode.OK

                codes = await asyncio.gather(*(call(case) for case in ids))
            assert codes == [
                grpc.StatusCode.OK,
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.UNAVAILABLE,
            ]
            async with grpc.aio.insecure_channel(
                persistence.target, interceptors=grpc_client_interceptors(caller_tracing)
            ) as channel:
                reader = ppb_grpc.PersistenceServiceStub(channel)
                for case, inspection_id in ids.items():
                    status = ppb.INSPECTION_STATUS_COMPLETED if case == "ok" else None
                    await wait_for_record(
                        reader, inspection_id, status or ppb.INSPECTION_STATUS_FAILED
                    )
                with pytest.raises(grpc.aio.AioRpcError):
                    await reader.GetInspection(ppb.GetInspectionRequest(inspection_id=unknown_id))
        finally:
            await inference.stop(5)  # delivers what is spooled: every batch span has ended
    finally:
        await persistence.stop(5)
        uninstrument_asyncpg()

    spans = exporter.get_finished_spans()
    inspect_spans = {}
    for case, inspection_id in ids.items():
        caller = one(spans, f"caller {case}", SpanKind.INTERNAL)
        server = one(spans, INSPECT, SpanKind.SERVER, inspection_id=inspection_id)
        (sent,) = [s for s in spans if s.kind is SpanKind.CLIENT and parent_of(s, caller)]
        assert parent_of(server, sent)  # the caller's traceparent crossed the wire
        inspect_spans[case] = server
    # The inspection's stages are in its trace, under its server span.
    ok = inspect_spans["ok"]
    assert ok.context is not None
    stages = {s.name for s in spans if s.context and s.context.trace_id == ok.context.trace_id}
    assert {"images", "fetch", "preprocess", "generate", "parse"} <= stages, stages

    # The status follows the code: an image host's failure is a server-side error.
    assert attr(inspect_spans["ok"], "rpc.grpc.status_code") == 0
    assert attr(inspect_spans["missing"], "rpc.grpc.status_code") == 3
    assert inspect_spans["missing"].status.status_code is StatusCode.UNSET  # the caller's fault
    assert attr(inspect_spans["down"], "rpc.grpc.status_code") == 14
    assert inspect_spans["down"].status.status_code is StatusCode.ERROR
    not_found = one(spans, GET_INSPECTION, SpanKind.SERVER, inspection_id=unknown_id)
    assert attr(not_found, "rpc.grpc.status_code") == 5

    batches = [s for s in spans if s.name == RECORD_EVENTS and s.kind is SpanKind.SERVER]
    assert batches
    for case, inspection_id in ids.items():
        server = inspect_spans[case]
        assert server.context is not None
        in_trace = {
            s.context.span_id
            for s in spans
            if s.context and s.context.trace_id == server.context.trace_id
        }
        links = [
            (batch, link)
            for batch in batches
            for link in batch.links
            if (link.attributes or {}).get("inspection_id") == inspection_id
        ]
        assert links, f"no batch links to inspection {case}"
        for batch, link in links:
            assert link.context.trace_id == server.context.trace_id
            assert link.context.span_id in in_trace  # a span of that inspection's trace
            assert inspection_id in (attr(batch, "inspection_ids") or ())
            assert batch.context is not None
            assert batch.context.trace_id != server.context.trace_id  # linked, not continued

    sql = [s for s in spans if attr(s, "db.system") == "postgresql"]
    for batch in batches:
        assert batch.context is not None
        # Its parent, across the wire: the inference service's call, in a delivery span that
        # links to the same inspections (which is why the ratio-0 sampler kept it).
        (call,) = [s for s in spans if s.kind is SpanKind.CLIENT and parent_of(batch, s)]
        assert call.name == RECORD_EVENTS
        assert attr(call, "rpc.grpc.status_code") == 0
        (delivery,) = [s for s in spans if parent_of(call, s)]
        assert delivery.name == "deliver events" and delivery.parent is None
        assert {(link.context.trace_id, link.context.span_id) for link in delivery.links} == {
            (link.context.trace_id, link.context.span_id) for link in batch.links
        }
        assert attr(delivery, "inspection_ids") == attr(batch, "inspection_ids")
        in_batch = [s for s in sql if s.context and s.context.trace_id == batch.context.trace_id]
        assert any("INSERT" in str(attr(s, "db.statement")) for s in in_batch), in_batch
        assert all(parent_of(s, batch) for s in in_batch)

    tree = render([json.loads(s.to_json()) for s in spans], ids["ok"])
    with capsys.disabled():
        print("\n" + tree)
    assert f"trace {ok.context.trace_id:#034x}" in tree
