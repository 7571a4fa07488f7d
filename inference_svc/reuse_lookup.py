"""The reused-photo lookup's client: rpi.persistence.v1.FindSimilarPickupImages (the pipeline's
``ReuseLookupPort``). The pipeline bounds the wait; this only asks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from rpi.persistence.v1 import persistence_pb2 as ppb
from rpi.persistence.v1 import persistence_pb2_grpc as ppb_grpc

from inference_svc.domain.outcome import ReuseMatch

# The pipeline's own wait (the policy's reused_lookup_timeout_s) is shorter; this only keeps a
# call from outliving an inspection that stopped waiting for it.
_RPC_TIMEOUT_S = 5.0


class PersistenceReuseLookup:
    def __init__(self, target: str, interceptors: Sequence[Any] | None = None) -> None:
        self._channel = grpc.aio.insecure_channel(target, interceptors=list(interceptors or []))
        self._stub = ppb_grpc.PersistenceServiceStub(self._channel)

    async def find(
        self, shipping_id: str, hashes: Sequence[tuple[int, int]], max_distance: int
    ) -> tuple[ReuseMatch, ...]:
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
