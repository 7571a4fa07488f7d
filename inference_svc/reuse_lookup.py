"""The reused-photo lookup's client: rpi.persistence.v1.FindSimilarPickupImages (the pipeline's
``ReuseLookupPort``). The pipeline bounds the wait; this only asks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from rpi.persistence.v1 import persistence_pb2 as ppb
from rpi.persistence.v1 import persistence_pb2_grpc as ppb_grpc

from inference_svc.domain.outcome import ReuseMatch
from svc_common.tls import ClientTLS

# The pipeline's own wait (the policy's reused_lookup_timeout_s) is shorter; this only keeps a
# call from outliving an inspection that stopped waiting for it.
_RPC_TIMEOUT_S = 5.0


class PersistenceReuseLookup:
    """Over its own channel to the persistence service, with the event link's TLS (mTLS when a
    client certificate is configured); a renewed certificate is picked up on the next call."""

    def __init__(
        self,
        target: str,
        interceptors: Sequence[Any] | None = None,
        tls: ClientTLS | None = None,
    ) -> None:
        self._target = target
        self._interceptors = list(interceptors or [])
        self._tls = tls
        self._tls_seen = tls.signature() if tls else None
        self._channel = self._open()
        self._stub = ppb_grpc.PersistenceServiceStub(self._channel)

    def _open(self) -> grpc.aio.Channel:
        if self._tls is None:
            return grpc.aio.insecure_channel(self._target, interceptors=self._interceptors)
        return grpc.aio.secure_channel(
            self._target, self._tls.channel_credentials(), interceptors=self._interceptors
        )

    async def _follow_rotation(self) -> None:
        if self._tls is None or self._tls.signature() == self._tls_seen:
            return
        old, self._channel = self._channel, self._open()
        self._tls_seen = self._tls.signature()
        self._stub = ppb_grpc.PersistenceServiceStub(self._channel)
        await old.close(grace=1.0)

    async def find(
        self, shipping_id: str, hashes: Sequence[tuple[int, int]], max_distance: int
    ) -> tuple[ReuseMatch, ...]:
        await self._follow_rotation()
        reply = await self._stub.FindSimilarPickupImages(
            ppb.FindSimilarPickupImagesRequest(
                hashes=[ppb.ImageHash(index=i, perceptual_hash=h) for i, h in hashes],
                max_distance=max_distance,
                shipping_id=shipping_id,
            ),
            timeout=_RPC_TIMEOUT_S,
            wait_for_ready=False,
        )
        return tuple(
            ReuseMatch(
                pickup_index=m.query_index,
                inspection_id=m.inspection_id,
                shipping_id=m.shipping_id,
                distance=m.distance,
            )
            for m in reply.matches
        )

    async def close(self) -> None:
        await self._channel.close(None)
