"""The auth interceptor on a real grpc.aio server: every RPC type, every refusal, no handler run."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
import yaml
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_status import rpc_status

from svc_common.auth import (
    ApiKeys,
    Authenticator,
    JwtRules,
    JwtVerifier,
    Policy,
    current_caller,
    new_api_key_entry,
)
from svc_common.auth_interceptor import AuthInterceptor
from tests.support.pki import Signer

SERVICE = "test.v1.Echo"


@dataclass
class Echo:
    calls: list[str] = field(default_factory=list)

    def handler(self) -> grpc.GenericRpcHandler:
        async def unary(request: bytes, context: Any) -> bytes:
            self.calls.append("Unary")
            return current_caller().name.encode()

        async def server_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
            self.calls.append("ServerStream")
            yield current_caller().name.encode()
            yield b"done"

        async def client_stream(requests: AsyncIterator[bytes], context: Any) -> bytes:
            self.calls.append("ClientStream")
            return b"".join([r async for r in requests]) + current_caller().name.encode()

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Unary": grpc.unary_unary_rpc_method_handler(unary),
                "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
                "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
            },
        )


@dataclass
class Harness:
    port: int
    echo: Echo
    refused: list[tuple[str, str]]
    api_key: str

    async def call(self, kind: str, token: str | None) -> bytes:
        metadata = () if token is None else (("authorization", token),)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            method = f"/{SERVICE}/{kind}"
            if kind == "Unary":
                return await channel.unary_unary(method)(b"x", metadata=metadata, timeout=5)
            if kind == "ServerStream":
                call = channel.unary_stream(method)(b"x", metadata=metadata, timeout=5)
                return b"|".join([r async for r in call])
            stream = channel.stream_unary(method)

            async def requests() -> AsyncIterator[bytes]:
                yield b"a"

            return await stream(requests(), metadata=metadata, timeout=5)


@pytest.fixture
async def harness(tmp_path: Path, signer: Signer) -> AsyncIterator[Harness]:
    key, entry = new_api_key_entry("returns-backend")
    _, reader = new_api_key_entry("ops-console")
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(yaml.safe_dump({"callers": {**entry, **reader}}))
    policy = Policy(
        grants={
            "returns-backend": (f"/{SERVICE}/*",),
            "ops-console": (f"/{SERVICE}/Unary",),
        },
        default=(),
    )
    authenticator = Authenticator(
        api_keys=ApiKeys(tokens),
        jwt=JwtVerifier(signer.jwks_file, JwtRules(signer.issuer, signer.audience, 5)),
    )
    refused: list[tuple[str, str]] = []
    echo = Echo()
    interceptor = AuthInterceptor(
        authenticator, policy, domain="test.rpi", on_refused=lambda m, r: refused.append((m, r))
    )
    server = grpc.aio.server(interceptors=[interceptor])
    server.add_generic_rpc_handlers([echo.handler()])
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield Harness(port, echo, refused, key)
    await server.stop(None)


def _reason(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None, "refusals carry google.rpc.Status details"
    infos = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            infos.append(info)
    assert len(infos) == 1
    assert infos[0].domain == "test.rpi"
    return infos[0].reason


def _alg_none(signer: Signer) -> str:
    header = jwt.utils.base64url_encode(json.dumps({"alg": "none", "kid": signer.kid}).encode())
    now = int(time.time())
    body = {"iss": signer.issuer, "aud": signer.audience, "sub": "x", "exp": now + 60}
    payload = jwt.utils.base64url_encode(json.dumps(body).encode())
    return f"{header.decode()}.{payload.decode()}."


BAD_TOKENS: dict[str, Callable[[Signer, Any], str | None]] = {
    "missing": lambda s, k: None,
    "not bearer": lambda s, k: "Basic dXNlcjpwYXNz",
    "empty bearer": lambda s, k: "Bearer ",
    "garbage": lambda s, k: "Bearer not-a-token",
    "unknown api key": lambda s, k: "Bearer rpi_" + "A" * 43,
    "malformed jwt": lambda s, k: "Bearer aaa.bbb.ccc",
    "wrong issuer": lambda s, k: "Bearer " + s.token({"iss": "https://evil.test"}),
    "wrong audience": lambda s, k: "Bearer " + s.token({"aud": "someone-else"}),
    "expired": lambda s, k: "Bearer " + s.token({"exp": int(time.time()) - 60}),
    "wrong signing key": lambda s, k: "Bearer " + s.token(key=k),
    "unknown kid": lambda s, k: "Bearer " + s.token(kid="k2"),
    "alg none": lambda s, k: "Bearer " + _alg_none(s),
}


@pytest.mark.parametrize("kind", ["Unary", "ServerStream", "ClientStream"])
@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
async def test_bad_credentials_are_unauthenticated_before_the_handler_runs(
    harness: Harness, signer: Signer, other_key: Any, kind: str, case: str
) -> None:
    token = BAD_TOKENS[case](signer, other_key)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await harness.call(kind, token)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    reason = _reason(refused.value)
    assert harness.refused == [(f"/{SERVICE}/{kind}", reason)]
    assert harness.echo.calls == []
    secret = (token or "").partition(" ")[2].strip()
    if len(secret) > 8:  # the credential never comes back in the error
        assert secret not in (refused.value.details() or "")


@pytest.mark.parametrize("kind", ["Unary", "ServerStream", "ClientStream"])
async def test_known_callers_are_served_under_their_name(
    harness: Harness, signer: Signer, kind: str
) -> None:
    by_key = await harness.call(kind, f"Bearer {harness.api_key}")
    by_jwt = await harness.call(kind, "bearer " + signer.token())
    assert b"returns-backend" in by_key
    assert b"returns-backend" in by_jwt
    assert harness.echo.calls == [kind, kind]


async def test_a_caller_without_the_right_is_permission_denied(
    harness: Harness, signer: Signer
) -> None:
    token = "Bearer " + signer.token({"sub": "ops-console"})
    assert await harness.call("Unary", token) == b"ops-console"
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await harness.call("ServerStream", token)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _reason(denied.value) == "METHOD_NOT_ALLOWED"
    stranger = "Bearer " + signer.token({"sub": "nobody"})
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await harness.call("Unary", stranger)
    assert unknown.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert harness.echo.calls == ["Unary"]


async def test_health_stays_open_for_probes(harness: Harness) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{harness.port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_tokens_file_is_reloaded_when_the_secret_changes(
    harness: Harness, tmp_path: Path
) -> None:
    new_key, entry = new_api_key_entry("returns-backend")
    with pytest.raises(grpc.aio.AioRpcError):
        await harness.call("Unary", f"Bearer {new_key}")
    tokens = tmp_path / "tokens.yaml"
    staged = tmp_path / "tokens.yaml.new"
    staged.write_text(yaml.safe_dump({"callers": entry}))
    staged.replace(tokens)  # an atomic swap, as a Kubernetes secret update does
    assert await harness.call("Unary", f"Bearer {new_key}") == b"returns-backend"
    with pytest.raises(grpc.aio.AioRpcError) as old:
        await harness.call("Unary", f"Bearer {harness.api_key}")
    assert old.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_new_api_key_tool_adds_a_working_caller(harness: Harness, tmp_path: Path) -> None:
    from tools.new_api_key import add_caller

    fresh = tmp_path / "fresh.yaml"
    key = add_caller(fresh, "ops-console")
    assert key not in fresh.read_text()  # only the salted hash is stored
    assert oct(fresh.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(SystemExit, match="already has a key"):
        add_caller(fresh, "ops-console")
    fresh.replace(tmp_path / "tokens.yaml")  # the file the running server reads
    assert await harness.call("Unary", f"Bearer {key}") == b"ops-console"


async def test_python_client_channel_sends_its_token_over_plaintext_loopback(
    harness: Harness,
) -> None:
    from clients.python.rpi_client.channel import ChannelOptions, aio_channel

    options = ChannelOptions(token=harness.api_key)
    assert harness.api_key not in repr(options)
    async with aio_channel(f"127.0.0.1:{harness.port}", options) as channel:
        reply = await channel.unary_unary(f"/{SERVICE}/Unary")(b"x", timeout=5)
    assert reply == b"returns-backend"


async def test_the_caller_is_in_log_lines_and_on_the_server_span(tmp_path: Path) -> None:
    import io
    import logging

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from svc_common.logging import ServiceJsonFormatter
    from svc_common.tracing import grpc_server_interceptors

    key, entry = new_api_key_entry("returns-backend")
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(yaml.safe_dump({"callers": entry}))
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(ServiceJsonFormatter("test"))
    logger = logging.getLogger("test.caller")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    async def unary(request: bytes, context: Any) -> bytes:
        logger.info("handling")
        return b"ok"

    server = grpc.aio.server(
        interceptors=[
            *grpc_server_interceptors(provider),
            AuthInterceptor(Authenticator(api_keys=ApiKeys(tokens)), Policy(), domain="t"),
        ]
    )
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                SERVICE, {"Unary": grpc.unary_unary_rpc_method_handler(unary)}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(f"/{SERVICE}/Unary")
            await call(b"x", metadata=(("authorization", f"Bearer {key}"),), timeout=5)
    finally:
        await server.stop(None)
        logger.removeHandler(handler)
    (line,) = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert line["caller"] == "returns-backend"
    assert key not in stream.getvalue()
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["rpi.caller"] == "returns-backend"


def test_cli_takes_the_token_from_rpi_token_or_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    from clients.python.rpi_client import cli

    monkeypatch.setenv("RPI_TOKEN", "rpi_from_env")
    args = cli.build_parser().parse_args(["health"])
    assert cli.channel_options(args).token == "rpi_from_env"
    args = cli.build_parser().parse_args(["health", "--token", "rpi_flag", "--tls-ca", __file__])
    options = cli.channel_options(args)
    assert options.token == "rpi_flag"
    assert options.credentials is not None
