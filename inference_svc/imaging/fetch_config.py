"""What an image fetch may do: schemes, hosts, addresses, sizes, time."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from inference_svc import defaults
from inference_svc.domain.models import ImageRole

if TYPE_CHECKING:
    from inference_svc.settings import InferenceSettings


@dataclass(frozen=True)
class FetchConfig:
    allow_http: bool = False
    # Empty = any public host. "*.example.com" matches every subdomain of example.com.
    allowed_hosts: tuple[str, ...] = ()
    # Relaxes only the address check (loopback test servers); URL rules still apply.
    allow_private_addresses: bool = False
    # Narrower than allow_private_addresses: these networks are allowed although not public,
    # everything else internal stays refused. "127.0.0.1:8080" (or "[::1]:8080",
    # "10.0.0.0/8:443") admits one port; a network without a port admits the port of the
    # request's own URL only, so a redirect cannot move to another service on the host.
    allowed_networks: tuple[str, ...] = ()
    follow_redirects: bool = False
    max_redirects: int = 3
    max_bytes: int = 10 * 1024 * 1024
    connect_timeout_s: float = 5.0
    total_timeout_s: float = 20.0  # the whole download: every attempt, redirect and backoff
    # Below this average rate (counted from each attempt's start, after the grace period) a
    # download is abandoned at once rather than left to run out the deadline; 0 = no floor.
    min_bytes_per_s: int = 16 * 1024
    rate_grace_s: float = 5.0
    retries: int = 2
    backoff_s: float = 0.2  # first retry delay; doubles per retry, plus up to 50 % jitter
    # host -> "host" or "host:port"; applied to the roles in host_rewrite_roles.
    host_rewrites: Mapping[str, str] = field(default_factory=dict)
    host_rewrite_roles: frozenset[ImageRole] = frozenset({ImageRole.REFERENCE})
    concurrency: int = 16
    # Reference-image bodies kept while their HTTP caching headers allow (http_cache); 0 = off.
    cache_bytes: int = defaults.FETCH_CACHE_BYTES
    # Pixels one request may decode at full size (formats without reduced-size decoding).
    max_request_pixels: int = 128_000_000
    max_image_pixels: int = 64_000_000
    user_agent: str = "rpi-inference-image-fetcher/1"

    @classmethod
    def from_settings(cls, settings: InferenceSettings) -> FetchConfig:
        return cls(
            allow_http=settings.allow_http,
            allowed_hosts=tuple(settings.allowed_hosts),
            allow_private_addresses=settings.allow_private_addresses,
            allowed_networks=tuple(settings.allowed_networks),
            follow_redirects=settings.follow_redirects,
            max_redirects=settings.max_redirects,
            max_bytes=settings.max_image_bytes,
            connect_timeout_s=settings.fetch_connect_timeout_s,
            total_timeout_s=settings.fetch_timeout_s,
            min_bytes_per_s=settings.fetch_min_bytes_per_s,
            retries=settings.fetch_retries,
            backoff_s=settings.fetch_backoff_s,
            host_rewrites=dict(settings.host_rewrites),
            host_rewrite_roles=frozenset(ImageRole(r) for r in settings.host_rewrite_roles),
            concurrency=settings.fetch_concurrency,
            cache_bytes=settings.fetch_cache_bytes,
            max_request_pixels=settings.max_request_pixels,
            max_image_pixels=settings.max_image_pixels,
        )
