"""Server TLS, mutual TLS and certificate rotation against a real grpc.aio server on loopback."""

from __future__ import annotations

import datetime
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from svc_common.tls import ClientTLS, ServerTLS, TLSConfigError, peer_identities, server_credentials
from tests.support.pki import Leaf, Pki


async def _serve(tls: ServerTLS) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(tls))
    await server.start()
    return server, port


async def _check(port: int, creds: grpc.ChannelCredentials | None) -> int:
    target = f"localhost:{port}"
    channel = (
        grpc.aio.insecure_channel(target)
        if creds is None
        else grpc.aio.secure_channel(target, creds)
    )
    async with channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        return int(reply.status)


@pytest.fixture
async def mtls_server(pki: Pki) -> AsyncIterator[tuple[int, Leaf]]:
    leaf = pki.leaf(pki.server_ca, "server", "localhost")
    client_ca = pki.write_ca(pki.client_ca, "client-ca")
    server, port = await _serve(ServerTLS(leaf.cert, leaf.key, client_ca))
    yield port, leaf
    await server.stop(None)


async def test_tls_server_refuses_plaintext_and_unknown_ca(pki: Pki) -> None:
    leaf = pki.leaf(pki.server_ca, "server", "localhost")
    server, port = await _serve(ServerTLS(leaf.cert, leaf.key))
    try:
        with pytest.raises(grpc.aio.AioRpcError) as plain:
            await _check(port, None)
        assert plain.value.code() == grpc.StatusCode.UNAVAILABLE
        wrong_ca = pki.write_ca(pki.client_ca, "not-the-server-ca")
        with pytest.raises(grpc.aio.AioRpcError) as wrong:
            await _check(port, ClientTLS(ca_file=wrong_ca).channel_credentials())
        assert wrong.value.code() == grpc.StatusCode.UNAVAILABLE
        right_ca = pki.write_ca(pki.server_ca, "server-ca")
        assert await _check(port, ClientTLS(ca_file=right_ca).channel_credentials()) == 1
    finally:
        await server.stop(None)


async def test_mtls_requires_a_current_client_certificate_from_the_client_ca(
    pki: Pki, mtls_server: tuple[int, Leaf]
) -> None:
    port, _ = mtls_server
    server_ca = pki.write_ca(pki.server_ca, "server-ca")
    good = pki.leaf(pki.client_ca, "inference", "inference.rpi.svc")
    assert await _check(port, ClientTLS(server_ca, good.cert, good.key).channel_credentials()) == 1

    expired = pki.leaf(
        pki.client_ca,
        "expired",
        "inference.rpi.svc",
        not_after=datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1),
    )
    stranger = pki.leaf(trust_other := pki.server_ca, "stranger", "inference.rpi.svc")
    assert trust_other is pki.server_ca  # signed by a CA the server does not trust for clients
    for creds in (
        ClientTLS(server_ca),  # no client certificate at all
        ClientTLS(server_ca, expired.cert, expired.key),
        ClientTLS(server_ca, stranger.cert, stranger.key),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _check(port, creds.channel_credentials())
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_rotated_server_certificate_is_served_to_new_connections(
    pki: Pki, mtls_server: tuple[int, Leaf]
) -> None:
    port, leaf = mtls_server
    client = pki.leaf(pki.client_ca, "inference", "inference.rpi.svc")
    old_ca = pki.write_ca(pki.server_ca, "old-ca")
    assert await _check(port, ClientTLS(old_ca, client.cert, client.key).channel_credentials()) == 1

    # cert-manager renews by rewriting the mounted files; here the issuer changes too, so the
    # test can tell which certificate a new connection got.
    import trustme

    new_issuer = trustme.CA()
    renewed = pki.leaf(new_issuer, "renewed", "localhost")
    os.replace(renewed.key, leaf.key)
    os.replace(renewed.cert, leaf.cert)
    new_ca = pki.write_ca(new_issuer, "new-ca")

    assert await _check(port, ClientTLS(new_ca, client.cert, client.key).channel_credentials()) == 1
    with pytest.raises(grpc.aio.AioRpcError):
        await _check(port, ClientTLS(old_ca, client.cert, client.key).channel_credentials())


async def test_half_written_renewal_keeps_the_previous_certificate(
    pki: Pki, mtls_server: tuple[int, Leaf]
) -> None:
    port, leaf = mtls_server
    client = pki.leaf(pki.client_ca, "inference", "inference.rpi.svc")
    ca = pki.write_ca(pki.server_ca, "ca")
    leaf.cert.write_text("-----BEGIN CERTIFICATE-----\ntruncated")
    leaf.key.unlink()
    assert await _check(port, ClientTLS(ca, client.cert, client.key).channel_credentials()) == 1


def test_half_a_tls_configuration_is_an_error_not_plaintext(tmp_path: Path) -> None:
    cert = tmp_path / "tls.crt"
    assert ServerTLS.from_settings(None, None, None) is None
    with pytest.raises(TLSConfigError, match="together"):
        ServerTLS.from_settings(cert, None, None)
    with pytest.raises(TLSConfigError, match="TLS_CLIENT_CA_FILE"):
        ServerTLS.from_settings(None, None, cert)
    with pytest.raises(TLSConfigError, match="both"):
        ClientTLS(cert_file=cert)
    with pytest.raises(TLSConfigError, match="cannot read"):
        ClientTLS(ca_file=tmp_path / "missing.pem").channel_credentials()


def test_peer_identities_prefer_subject_alternative_names() -> None:
    context = {
        "x509_subject_alternative_name": [b"inference.rpi.svc", b"spiffe://rpi/inference"],
        "x509_common_name": [b"inference"],
    }
    assert peer_identities(context) == ("inference.rpi.svc", "spiffe://rpi/inference", "inference")
    assert peer_identities({}) == ()
