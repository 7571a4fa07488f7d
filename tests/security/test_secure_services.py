"""Both real services with TLS, mutual TLS between them and authenticated callers.

Certificates come from trustme, API keys from tools.new_api_key's format, JWTs are signed with
a real RSA key published in a JWKS file; Postgres is the test server; the model is the small
locally built InternVL."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rpi.inspection.v1 import inspection_pb2_grpc as pb_grpc
from rpi.persistence.v1 import persistence_pb2 as ppb
from rpi.persistence.v1 import persistence_pb2_grpc as ppb_grpc

from inference_svc.app import InferenceApp
from inference_svc.events.link_health import PERSISTENCE_LINK_HEALTH_NAME
from tests.support.e2e import ImageServer, inference_settings, make_request, wait_for_record
from tests.support.events import request_event
from tests.support.pki import Signer
from tests.support.secure import WRITER, SecureSystem


async def _count(database_url: str, inspection_id: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM inspection_requests WHERE inspection_id = $1",
                uuid.UUID(inspection_id),
            )
        )
    finally:
        await conn.close()


async def test_an_inspection_over_tls_with_a_token_is_recorded_under_its_caller(
    secure: SecureSystem, image_server: ImageServer
) -> None:
    request = make_request(image_server, inspection_id=str(uuid.uuid4()))
    async with secure.inspection_channel(secure.keys["returns-backend"]) as channel:
        reply = await pb_grpc.InspectionServiceStub(channel).Inspect(request, timeout=120)
    assert reply.inspection.inspection_id == request.inspection_id
    async with secure.persistence_channel("ops.rpi.svc") as channel:
        record = await wait_for_record(
            ppb_grpc.PersistenceServiceStub(channel),
            request.inspection_id,
            ppb.INSPECTION_STATUS_COMPLETED,
        )
    assert record.caller == "returns-backend"
    assert record.request.caller == "returns-backend"


async def test_a_jwt_caller_streams_and_is_recorded_by_its_subject(
    secure: SecureSystem, image_server: ImageServer
) -> None:
    request = make_request(image_server, inspection_id=str(uuid.uuid4()))
    async with secure.inspection_channel(secure.signer.token()) as channel:
        events = [e async for e in pb_grpc.InspectionServiceStub(channel).InspectStream(request)]
    assert events[-1].HasField("inspection")
    async with secure.persistence_channel("ops.rpi.svc") as channel:
        record = await wait_for_record(
            ppb_grpc.PersistenceServiceStub(channel),
            request.inspection_id,
            ppb.INSPECTION_STATUS_COMPLETED,
        )
    assert record.caller == "returns-backend"  # the token's sub


def _alg_none(signer: Signer) -> str:
    import base64

    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    body = {"iss": signer.issuer, "aud": signer.audience, "sub": "returns-backend"}
    return f"{b64({'alg': 'none'})}.{b64({**body, 'exp': int(time.time()) + 60})}."


REFUSED: dict[str, tuple[Callable[[SecureSystem, Any], str | None], grpc.StatusCode]] = {
    "no token": (lambda s, k: None, grpc.StatusCode.UNAUTHENTICATED),
    "malformed token": (lambda s, k: "not.a.jwt", grpc.StatusCode.UNAUTHENTICATED),
    "unknown api key": (lambda s, k: "rpi_" + "x" * 43, grpc.StatusCode.UNAUTHENTICATED),
    "jwt wrong issuer": (
        lambda s, k: s.signer.token({"iss": "https://other"}),
        grpc.StatusCode.UNAUTHENTICATED,
    ),
    "jwt wrong audience": (
        lambda s, k: s.signer.token({"aud": "other"}),
        grpc.StatusCode.UNAUTHENTICATED,
    ),
    "jwt expired": (
        lambda s, k: s.signer.token({"exp": int(time.time()) - 120}),
        grpc.StatusCode.UNAUTHENTICATED,
    ),
    "jwt wrong signing key": (lambda s, k: s.signer.token(key=k), grpc.StatusCode.UNAUTHENTICATED),
    "jwt alg none": (lambda s, k: _alg_none(s.signer), grpc.StatusCode.UNAUTHENTICATED),
    "caller without the right": (
        lambda s, k: s.keys["auditor"],
        grpc.StatusCode.PERMISSION_DENIED,
    ),
}


@pytest.mark.parametrize("method", ["Inspect", "InspectStream"])
@pytest.mark.parametrize("case", sorted(REFUSED))
async def test_refused_calls_fetch_nothing_and_record_nothing(
    secure: SecureSystem, image_server: ImageServer, other_key: Any, case: str, method: str
) -> None:
    make_token, code = REFUSED[case]
    request = make_request(image_server, inspection_id=str(uuid.uuid4()))
    hits_before = len(image_server.hits)
    async with secure.inspection_channel(make_token(secure, other_key)) as channel:
        stub = pb_grpc.InspectionServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            if method == "Inspect":
                await stub.Inspect(request, timeout=30)
            else:
                [e async for e in stub.InspectStream(request, timeout=30)]
    assert refused.value.code() == code
    await asyncio.sleep(0.2)  # anything the call had started would have reached the spool
    assert len(image_server.hits) == hits_before
    assert await _count(secure.database_url, request.inspection_id) == 0


async def test_health_answers_on_the_plaintext_probe_port(secure: SecureSystem) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{secure.inference.health_port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        inspect = channel.unary_unary("/rpi.inspection.v1.InspectionService/Inspect")
        with pytest.raises(grpc.aio.AioRpcError) as absent:
            await inspect(b"", timeout=5)
    assert absent.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_an_untrusted_writer_certificate_is_denied_and_writes_nothing(
    secure: SecureSystem,
) -> None:
    inspection_id = str(uuid.uuid4())
    async with secure.persistence_channel("intruder.rpi.svc") as channel:
        stub = ppb_grpc.PersistenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.RecordEvents(
                ppb.RecordEventsRequest(events=[request_event(inspection_id, shipping_id="S")]),
                timeout=10,
            )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await _count(secure.database_url, inspection_id) == 0


async def test_a_refused_link_keeps_events_spooled_until_the_certificate_is_fixed(
    secure: SecureSystem, image_server: ImageServer
) -> None:
    wrong = secure.client_leaf("intruder.rpi.svc")
    cert, key = secure.tmp / "link.crt", secure.tmp / "link.key"
    cert.write_bytes(wrong.cert.read_bytes())
    key.write_bytes(wrong.key.read_bytes())
    app = InferenceApp(
        inference_settings(
            secure.tmp / "misconfigured",
            f"localhost:{secure.persistence.bound_port}",
            persistence_tls_ca_file=secure.server_ca,
            persistence_tls_cert_file=cert,
            persistence_tls_key_file=key,
        )
    )
    await app.start()
    try:
        request = make_request(image_server, inspection_id=str(uuid.uuid4()))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            await pb_grpc.InspectionServiceStub(channel).Inspect(request, timeout=120)
            health = health_pb2_grpc.HealthStub(channel)
            link = health_pb2.HealthCheckRequest(service=PERSISTENCE_LINK_HEALTH_NAME)
            for _ in range(200):
                reply = await health.Check(link, timeout=5)
                if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the refused link never showed in health")
        assert app.delivery.backlog() > 0
        failures = app.registry.get_sample_value(
            "rpi_inference_event_delivery_failures_total", {"grpc_code": "PermissionDenied"}
        )
        assert failures is not None and failures > 0
        assert await _count(secure.database_url, request.inspection_id) == 0

        right = secure.client_leaf(WRITER)
        staged_cert, staged_key = secure.tmp / "link.crt.new", secure.tmp / "link.key.new"
        staged_cert.write_bytes(right.cert.read_bytes())
        staged_key.write_bytes(right.key.read_bytes())
        os.replace(staged_key, key)  # cert-manager's renewal: files replaced in place
        os.replace(staged_cert, cert)
        async with secure.persistence_channel("ops.rpi.svc") as channel:
            record = await wait_for_record(
                ppb_grpc.PersistenceServiceStub(channel),
                request.inspection_id,
                ppb.INSPECTION_STATUS_COMPLETED,
            )
        assert record.caller == "anonymous"  # that app runs without authentication
    finally:
        await app.stop(2)
