"""A DNS resolver for aiohttp that returns only addresses the policy allows.

aiohttp dials exactly the addresses its resolver returns, so filtering here checks the address
actually connected to: a name that resolves to a public address when validated and to an
internal one when dialled (DNS rebinding) never gets a connection.
"""

from __future__ import annotations

import logging
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from inference_svc.egress.addresses import AddressPolicy

logger = logging.getLogger(__name__)


class ForbiddenAddressError(OSError):
    """Every address of a host is refused by the address policy.

    An OSError so that aiohttp's connector passes it through (wrapped in
    ``ClientConnectorDNSError``) like any other resolution failure.
    """

    def __init__(self, host: str) -> None:
        super().__init__(f"host {host!r} resolves only to non-public addresses")
        self.host = host


class PolicyResolver(AbstractResolver):
    """Wraps another resolver and drops every address ``policy`` refuses."""

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._owns_inner = inner is None
        self._inner: AbstractResolver = inner if inner is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return await self.resolve_for(host, port, None, family)

    async def resolve_for(
        self,
        host: str,
        port: int,
        origin_port: int | None,
        family: socket.AddressFamily = socket.AF_INET,
    ) -> list[ResolveResult]:
        """The allowed addresses of ``host:port``; ``origin_port`` as in
        :meth:`AddressPolicy.allows` (set when vetting a redirect before it is followed)."""
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if self._policy.allows_text(r["host"], port, origin_port)]
        if len(allowed) < len(results):
            logger.warning(
                "refused %d non-public address(es) of image host %s",
                len(results) - len(allowed),
                host,
            )
        if not allowed:
            raise ForbiddenAddressError(host)
        return allowed

    async def close(self) -> None:
        if self._owns_inner:
            await self._inner.close()
