"""Both real services with TLS, mutual TLS between them and authenticated callers (a fixture
shared by the security and native-client tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
import trustme
import yaml

from clients.python.rpi_client.channel import ChannelOptions, aio_channel, tls_credentials
from inference_svc.app import InferenceApp
from persistence_svc.app import PersistenceApp
from svc_common.auth import new_api_key_entry
from svc_common.tls import ClientTLS
from tests.support.e2e import inference_settings
from tests.support.persistence import persistence_settings
from tests.support.pki import Leaf, Pki, Signer, make_signer
from tests.support.postgres import PostgresForTests

WRITER = "inference.rpi.svc"
INSPECTION = "/rpi.inspection.v1.InspectionService/*"


@dataclass
class SecureSystem:
    persistence: PersistenceApp
    inference: InferenceApp
    database_url: str
    pki: Pki
    signer: Signer
    keys: dict[str, str]
    server_ca: Path
    client_leaf: Callable[[str], Leaf]
    tmp: Path

    def inspection_channel(self, token: str | None) -> grpc.aio.Channel:
        options = ChannelOptions(credentials=tls_credentials(self.server_ca), token=token)
        return aio_channel(f"localhost:{self.inference.port}", options)

    def persistence_channel(self, identity: str) -> grpc.aio.Channel:
        leaf = self.client_leaf(identity)
        creds = ClientTLS(self.server_ca, leaf.cert, leaf.key).channel_credentials()
        return grpc.aio.secure_channel(f"localhost:{self.persistence.bound_port}", creds)


@pytest_asyncio.fixture(scope="module")
async def secure(
    tmp_path_factory: pytest.TempPathFactory, postgres: PostgresForTests
) -> AsyncIterator[SecureSystem]:
    tmp = tmp_path_factory.mktemp("secure")
    pki = Pki(tmp, trustme.CA(), trustme.CA())
    server_ca = pki.write_ca(pki.server_ca, "server-ca")
    client_ca = pki.write_ca(pki.client_ca, "client-ca")
    leaves: dict[str, Leaf] = {}

    def client_leaf(identity: str) -> Leaf:
        if identity not in leaves:
            leaves[identity] = pki.leaf(pki.client_ca, identity.replace(".", "-"), identity)
        return leaves[identity]

    persistence_leaf = pki.leaf(pki.server_ca, "persistence", "localhost", "127.0.0.1")
    inference_leaf = pki.leaf(pki.server_ca, "inference", "localhost", "127.0.0.1")

    signer = make_signer(tmp)
    keys: dict[str, str] = {}
    entries: dict[str, Any] = {}
    for name in ("returns-backend", "auditor"):
        keys[name], entry = new_api_key_entry(name)
        entries.update(entry)
    tokens = tmp / "tokens.yaml"
    tokens.write_text(yaml.safe_dump({"callers": entries}))
    policy = tmp / "policy.yaml"
    policy.write_text(yaml.safe_dump({"callers": {"returns-backend": [INSPECTION]}, "default": []}))

    async with postgres.fresh_database("rpi_sec_") as database_url:
        persistence = PersistenceApp(
            persistence_settings(
                database_url,
                grpc_listen="127.0.0.1:0",
                tls_cert_file=persistence_leaf.cert,
                tls_key_file=persistence_leaf.key,
                tls_client_ca_file=client_ca,
                writer_identities=WRITER,
            )
        )
        await persistence.start()
        writer = client_leaf(WRITER)
        inference = InferenceApp(
            inference_settings(
                tmp / "inference",
                f"localhost:{persistence.bound_port}",
                tls_cert_file=inference_leaf.cert,
                tls_key_file=inference_leaf.key,
                auth_tokens_file=tokens,
                auth_jwks_file=signer.jwks_file,
                auth_jwt_issuer=signer.issuer,
                auth_jwt_audience=signer.audience,
                auth_policy_file=policy,
                persistence_tls_ca_file=server_ca,
                persistence_tls_cert_file=writer.cert,
                persistence_tls_key_file=writer.key,
                health_listen="127.0.0.1:0",
            )
        )
        await inference.start()
        try:
            yield SecureSystem(
                persistence, inference, database_url, pki, signer, keys, server_ca,
                client_leaf, tmp,
            )  # fmt: skip
        finally:
            await inference.stop(2)
            await persistence.stop(0)
