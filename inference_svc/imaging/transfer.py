"""Reading a response body under a byte cap and a minimum transfer rate.

A server that trickles its answer (one byte a second) would otherwise hold a fetch slot, and
with it the caller's admission slot, until the whole download deadline passes. The rate floor
is an average from the start of the attempt: after a grace period the bytes received must keep
up with ``min_bytes_per_s``, so a slow start is forgiven once the transfer catches up, and a
stalled one is abandoned the moment it falls behind, without polling.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp


class TooSlow(Exception):  # noqa: N818 - reads as "the transfer is too slow"
    """The transfer fell below the rate floor; ``received`` body bytes had arrived."""

    def __init__(self, received: int) -> None:
        super().__init__(f"{received} bytes received")
        self.received = received


class TooLarge(Exception):  # noqa: N818 - reads as "the body is too large"
    """The body is over the cap; ``declared`` is its Content-Length when that said so."""

    def __init__(self, declared: int | None) -> None:
        super().__init__("body over the cap")
        self.declared = declared


@dataclass(frozen=True)
class RateFloor:
    min_bytes_per_s: float  # 0 = no floor (the download deadline still applies)
    grace_s: float

    def due(self, started: float, received: int) -> float | None:
        """Loop time by which more than ``received`` bytes must have arrived (None: never)."""
        if self.min_bytes_per_s <= 0:
            return None
        return started + self.grace_s + received / self.min_bytes_per_s


async def read_body(
    resp: aiohttp.ClientResponse, cap: int, floor: RateFloor, started: float
) -> bytes:
    """The body, at most ``cap`` bytes; raises :class:`TooLarge` or :class:`TooSlow` (the
    connection is closed then, so the rest of the transfer is not read)."""
    declared = resp.content_length
    if declared is not None and declared > cap:
        resp.close()
        raise TooLarge(declared)
    chunks: list[bytes] = []
    total = 0
    while True:
        try:
            async with asyncio.timeout_at(floor.due(started, total)):
                chunk = await resp.content.readany()
        except TimeoutError:
            resp.close()
            raise TooSlow(total) from None
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > cap:
            # Dropping the connection stops the transfer; draining it would read the rest.
            resp.close()
            raise TooLarge(None)
        chunks.append(chunk)
