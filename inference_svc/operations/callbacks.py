"""Which webhook destinations a caller may name: the image URL rules, the same code.

A callback URL is parsed by the strict image URL parser, must match ALLOWED_HOSTS when that is
set, must not be an internal name, and must resolve only to addresses the image address policy
allows (public ones, plus ALLOWED_NETWORKS). Delivery dials through the same PolicyResolver, so
an address that changed since the submit (DNS rebinding) is refused at connect as well.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp.abc import AbstractResolver

from inference_svc.domain.errors import ErrorKind, FieldViolation, InspectionError, Reason, Stage
from inference_svc.egress.addresses import AddressPolicy
from inference_svc.egress.resolver import PolicyResolver
from inference_svc.egress.urls import (
    ForbiddenUrl,
    ImageUrl,
    host_matches,
    is_internal_name,
    parse_image_url,
)
from inference_svc.imaging.fetch_config import FetchConfig

FIELD = "callback.url"


def forbidden(why: str) -> InspectionError:
    return InspectionError(
        ErrorKind.INVALID_ARGUMENT,
        Reason.CALLBACK_URL_FORBIDDEN,
        f"{FIELD}: {why}",
        [FieldViolation(FIELD, why)],
        stage=Stage.VALIDATE,
    )


@dataclass
class CallbackGuard:
    policy: AddressPolicy
    allowed_hosts: tuple[str, ...] = ()
    allow_http: bool = False
    resolver: AbstractResolver | None = None

    @classmethod
    def from_fetch_config(cls, config: FetchConfig) -> CallbackGuard:
        policy = AddressPolicy.build(config.allow_private_addresses, config.allowed_networks)
        return cls(policy, config.allowed_hosts, config.allow_http, PolicyResolver(policy))

    def parse(self, url: str) -> ImageUrl:
        """The URL if it may be named at all (no lookup); InspectionError otherwise."""
        try:
            parsed = parse_image_url(url, allow_http=self.allow_http)
        except ForbiddenUrl as exc:
            raise forbidden(str(exc)) from None
        if self.allowed_hosts and not host_matches(parsed.host, self.allowed_hosts):
            raise forbidden(f"host {parsed.host!r} is not in ALLOWED_HOSTS")
        if parsed.ip is None and is_internal_name(parsed.host):
            raise forbidden(f"host {parsed.host!r} is an internal name")
        return parsed

    async def check(self, url: str) -> None:
        """Refuses a destination that is not allowed now (at submit)."""
        parsed = self.parse(url)
        port = parsed.effective_port
        if parsed.ip is not None:
            if not self.policy.allows(parsed.ip, port):
                raise forbidden("the address is not public")
            return
        if self.resolver is None:
            return
        try:
            if isinstance(self.resolver, PolicyResolver):
                await self.resolver.resolve_for(parsed.host, port, None)
            else:
                await self.resolver.resolve(parsed.host, port)
        except OSError as exc:
            raise forbidden(f"host {parsed.host!r} does not resolve to an allowed address") from exc

    async def close(self) -> None:
        if self.resolver is not None:
            await self.resolver.close()
