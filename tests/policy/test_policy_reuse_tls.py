"""The reused-photo lookup over the secured link: the inference service's lookup client uses
the event link's mutual TLS, so a persistence service that requires client certificates
answers it; a plaintext client is not answered."""

from __future__ import annotations

import grpc
import pytest

from inference_svc.reuse_lookup import PersistenceReuseLookup
from tests.support.secure import SecureSystem


async def test_the_lookup_speaks_the_links_mutual_tls(secure: SecureSystem) -> None:
    lookup = secure.inference.reuse_lookup
    assert lookup is not None
    assert await lookup.find("SHIP-TLS", [(0, 0x1234)], 6) == ()

    plaintext = PersistenceReuseLookup(f"localhost:{secure.persistence.bound_port}")
    try:
        with pytest.raises(grpc.aio.AioRpcError):
            await plaintext.find("SHIP-TLS", [(0, 0x1234)], 6)
    finally:
        await plaintext.close()
