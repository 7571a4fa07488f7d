"""The go-grpc-prometheus metrics, observed on a real grpc.aio loopback server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from svc_common.grpc_metrics import GrpcServerMetricsInterceptor

SERVICE = "test.v1.Echo"


class Servicer:
    """Behaves according to the request text."""

    def __init__(self) -> None:
        self.sleeping = asyncio.Event()

    async def unary(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        if request == b"invalid":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad request")
        if request == b"boom":
            raise RuntimeError("unexpected")
        if request == b"not-found":
            context.set_code(grpc.StatusCode.NOT_FOUND)
            return b""
        if request == b"sleep":
            self.sleeping.set()
            await asyncio.sleep(30)
        return request

    async def stream(
        self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        count, _, then = request.decode().partition(":")
        for i in range(int(count)):
            yield str(i).encode()
        if then == "abort":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "stop")


def _identity(b: bytes) -> bytes:
    return b


@pytest.fixture
async def server() -> AsyncIterator[tuple[grpc.aio.Channel, CollectorRegistry, Servicer]]:
    registry = CollectorRegistry()
    servicer = Servicer()
    srv = grpc.aio.server(interceptors=[GrpcServerMetricsInterceptor(registry)])
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(servicer.unary, _identity, _identity),
        "Stream": grpc.unary_stream_rpc_method_handler(servicer.stream, _identity, _identity),
    }
    srv.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    await health_servicer.set("rpi.test", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield channel, registry, servicer
    await channel.close(None)
    await srv.stop(None)


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def _labels(method: str, grpc_type: str = "unary", service: str = SERVICE) -> dict[str, str]:
    return {"grpc_type": grpc_type, "grpc_service": service, "grpc_method": method}


async def _wait_for(registry: CollectorRegistry, name: str, labels: dict[str, str]) -> float:
    # The server finishes its bookkeeping after the client has seen the status; give it the
    # few loop turns it needs (bounded, so a bug fails instead of hanging).
    for _ in range(500):
        if value := _value(registry, name, **labels):
            return value
        await asyncio.sleep(0.01)
    return 0.0


async def test_unary_ok_counts_started_handled_messages_and_latency(server: Any) -> None:
    channel, registry, _ = server
    unary = channel.unary_unary(f"/{SERVICE}/Unary")
    assert await unary(b"hello") == b"hello"
    assert await unary(b"again") == b"again"

    labels = _labels("Unary")
    assert _value(registry, "grpc_server_started_total", **labels) == 2
    assert (
        await _wait_for(registry, "grpc_server_handled_total", {**labels, "grpc_code": "OK"}) == 2
    )
    assert _value(registry, "grpc_server_msg_received_total", **labels) == 2
    assert _value(registry, "grpc_server_msg_sent_total", **labels) == 2
    assert _value(registry, "grpc_server_handling_seconds_count", **labels, grpc_code="OK") == 2
    assert _value(registry, "grpc_server_handling_seconds_bucket", **labels, grpc_code="OK",
                  le="+Inf") == 2  # fmt: skip


async def test_unary_error_codes(server: Any) -> None:
    channel, registry, _ = server
    unary = channel.unary_unary(f"/{SERVICE}/Unary")
    expected = {
        b"invalid": ("InvalidArgument", grpc.StatusCode.INVALID_ARGUMENT),
        b"boom": ("Unknown", grpc.StatusCode.UNKNOWN),
        b"not-found": ("NotFound", grpc.StatusCode.NOT_FOUND),
    }
    for request, (_, status) in expected.items():
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await unary(request)
        assert info.value.code() == status

    labels = _labels("Unary")
    for code, _ in expected.values():
        assert (
            await _wait_for(registry, "grpc_server_handled_total", {**labels, "grpc_code": code})
            == 1
        ), code
    assert _value(registry, "grpc_server_handled_total", **labels, grpc_code="OK") == 0
    assert _value(registry, "grpc_server_started_total", **labels) == 3
    assert _value(registry, "grpc_server_msg_sent_total", **labels) == 0


async def test_client_cancellation_is_counted_as_canceled(server: Any) -> None:
    channel, registry, servicer = server
    call = channel.unary_unary(f"/{SERVICE}/Unary")(b"sleep")
    await servicer.sleeping.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call

    labels = {**_labels("Unary"), "grpc_code": "Canceled"}
    assert await _wait_for(registry, "grpc_server_handled_total", labels) == 1
    assert _value(registry, "grpc_server_handling_seconds_count", **labels) == 1


async def test_deadline_is_counted_as_deadline_exceeded(server: Any) -> None:
    channel, registry, _ = server
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary(f"/{SERVICE}/Unary")(b"sleep", timeout=0.2)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    labels = {**_labels("Unary"), "grpc_code": "DeadlineExceeded"}
    assert await _wait_for(registry, "grpc_server_handled_total", labels) == 1


async def test_server_streaming(server: Any) -> None:
    channel, registry, _ = server
    stream = channel.unary_stream(f"/{SERVICE}/Stream")
    assert [m async for m in stream(b"3")] == [b"0", b"1", b"2"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        _ = [m async for m in stream(b"1:abort")]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    labels = _labels("Stream", grpc_type="server_stream")
    assert _value(registry, "grpc_server_started_total", **labels) == 2
    assert (
        await _wait_for(registry, "grpc_server_handled_total", {**labels, "grpc_code": "OK"}) == 1
    )
    assert (
        await _wait_for(
            registry, "grpc_server_handled_total", {**labels, "grpc_code": "InvalidArgument"}
        )
        == 1
    )
    assert _value(registry, "grpc_server_msg_received_total", **labels) == 2
    assert _value(registry, "grpc_server_msg_sent_total", **labels) == 4
    assert _value(registry, "grpc_server_handling_seconds_count", **labels, grpc_code="OK") == 1


async def test_generated_health_servicer(server: Any) -> None:
    channel, registry, _ = server
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service="rpi.test"))
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Check(health_pb2.HealthCheckRequest(service="missing"))

    labels = _labels("Check", service="grpc.health.v1.Health")
    assert (
        await _wait_for(registry, "grpc_server_handled_total", {**labels, "grpc_code": "OK"}) == 1
    )
    assert (
        await _wait_for(registry, "grpc_server_handled_total", {**labels, "grpc_code": "NotFound"})
        == 1
    )


async def test_unknown_method_is_left_to_grpc(server: Any) -> None:
    channel, registry, _ = server
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary(f"/{SERVICE}/Missing")(b"x")
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert _value(registry, "grpc_server_started_total", **_labels("Missing")) == 0
