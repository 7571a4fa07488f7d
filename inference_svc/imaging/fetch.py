"""Downloading images from caller-supplied URLs, hardened against SSRF and oversized bodies."""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp
from aiohttp.abc import AbstractResolver
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from inference_svc.domain.errors import (
    InspectionError,
    Reason,
    Stage,
    image_error,
    invalid_argument,
)
from inference_svc.domain.models import FetchedImage, ImageRole, ImageSource
from inference_svc.imaging.addresses import AddressPolicy
from inference_svc.imaging.resolver import ForbiddenAddressError, PolicyResolver
from inference_svc.imaging.urls import (
    ForbiddenUrl,
    ImageUrl,
    has_scheme,
    host_matches,
    parse_authority,
    parse_image_url,
)

if TYPE_CHECKING:
    from inference_svc.settings import InferenceSettings

logger = logging.getLogger(__name__)

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_TRANSIENT_STATUSES = frozenset({408, 429, 502, 503, 504})
_STAGE = Stage.FETCH


@dataclass(frozen=True)
class FetchConfig:
    allow_http: bool = False
    # Empty = any public host. "*.example.com" matches every subdomain of example.com.
    allowed_hosts: tuple[str, ...] = ()
    # Relaxes only the address check (loopback test servers); URL rules still apply.
    allow_private_addresses: bool = False
    # Narrower than allow_private_addresses: these networks (e.g. "127.0.0.1/32") are allowed
    # although not public, everything else internal stays refused.
    allowed_networks: tuple[str, ...] = ()
    follow_redirects: bool = False
    max_redirects: int = 3
    max_bytes: int = 10 * 1024 * 1024
    connect_timeout_s: float = 5.0
    total_timeout_s: float = 20.0  # per attempt, redirects included
    retries: int = 2
    backoff_s: float = 0.2  # first retry delay; doubles per retry, plus up to 50 % jitter
    # host -> "host" or "host:port"; applied to the roles in host_rewrite_roles.
    host_rewrites: Mapping[str, str] = field(default_factory=dict)
    host_rewrite_roles: frozenset[ImageRole] = frozenset({ImageRole.REFERENCE})
    concurrency: int = 16
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
            retries=settings.fetch_retries,
            backoff_s=settings.fetch_backoff_s,
            host_rewrites=dict(settings.host_rewrites),
            concurrency=settings.fetch_concurrency,
        )


class _TransientFetchError(Exception):
    """A failure worth retrying (connection trouble, timeout, 429/502/503/504)."""

    def __init__(self, message: str, cause: str = "connection") -> None:
        super().__init__(message)
        # Low-cardinality cause for metrics (svc_common FETCH_ERROR_REASONS).
        self.cause = cause


def _with_cause(error: InspectionError, cause: str) -> InspectionError:
    """Tags an error with its fetch-failure cause (metadata ``fetch_error``) for metrics."""
    error.metadata["fetch_error"] = cause
    return error


def _too_large(field_path: str, message: str, stage: Stage) -> InspectionError:
    return _with_cause(
        image_error(Reason.IMAGE_TOO_LARGE, field_path, message, stage=stage), "too_large"
    )


def _redirect_error(field_path: str, message: str) -> InspectionError:
    return _with_cause(
        image_error(Reason.IMAGE_FETCH_FAILED, field_path, message, stage=_STAGE), "redirect"
    )


class ImageFetcher:
    """Fetches request images. One per process; owns one aiohttp session, created lazily.

    ``resolver`` replaces the DNS resolver underneath the address policy (tests use it to make
    a name resolve to an internal address); the policy applies to whatever it returns.
    """

    def __init__(self, config: FetchConfig, resolver: AbstractResolver | None = None) -> None:
        self._config = config
        self._policy = AddressPolicy.build(config.allow_private_addresses, config.allowed_networks)
        self._rewrites = {k.lower().rstrip("."): v for k, v in config.host_rewrites.items()}
        for target in self._rewrites.values():
            try:
                parse_authority(target)
            except ForbiddenUrl as exc:
                raise ValueError(f"invalid host rewrite target {target!r}: {exc}") from None
        self._inner_resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        self._resolver: PolicyResolver | None = None
        self._semaphore = asyncio.Semaphore(config.concurrency)

    async def fetch(self, source: ImageSource) -> FetchedImage:
        if source.content is not None and source.uri is None:
            return self._inline(source)
        if source.uri is None or source.content is not None:
            raise invalid_argument(
                f"{source.field_path}: exactly one of uri and content must be set", stage=_STAGE
            )
        async with self._semaphore:
            return await self._fetch_uri(source, source.uri)

    async def close(self) -> None:
        session, resolver = self._session, self._resolver
        self._session = self._resolver = None
        if session is not None:
            await session.close()
        if resolver is not None:
            await resolver.close()

    # -- inline

    def _inline(self, source: ImageSource) -> FetchedImage:
        data = source.content or b""
        if len(data) > self._config.max_bytes:
            raise _too_large(
                source.field_path,
                f"inline image is {len(data)} bytes, over the limit of {self._config.max_bytes}",
                stage=_STAGE,
            )
        # The digest is computed in the preprocessing thread: hashing megabytes here would
        # stall the event loop.
        return FetchedImage(source=source, data=data)

    # -- URL checks

    def _forbidden(self, source: ImageSource, why: str) -> InspectionError:
        return _with_cause(
            image_error(Reason.IMAGE_URL_FORBIDDEN, source.field_path, why, stage=_STAGE),
            "forbidden",
        )

    def _checked_url(self, source: ImageSource, raw: str) -> ImageUrl:
        """Parse and vet a URL (the request's, or a redirect target)."""
        try:
            url = parse_image_url(raw, allow_http=self._config.allow_http)
        except ForbiddenUrl as exc:
            raise self._forbidden(source, f"image URL refused: {exc}") from None
        return url

    def _vet_host(self, source: ImageSource, url: ImageUrl) -> None:
        if self._config.allowed_hosts and not host_matches(url.host, self._config.allowed_hosts):
            raise self._forbidden(source, f"image host {url.host!r} is not in the allowlist")
        # Literal addresses never reach the resolver, so they are checked here.
        if url.ip is not None and not self._policy.allows(url.ip):
            raise self._forbidden(source, f"image host {url.host} is not a public address")

    def _rewrite(self, source: ImageSource, url: ImageUrl) -> ImageUrl:
        target = self._rewrites.get(url.host)
        if target is None or source.role not in self._config.host_rewrite_roles:
            return url
        return url.with_authority(target)

    # -- download

    async def _fetch_uri(self, source: ImageSource, raw: str) -> FetchedImage:
        url = self._rewrite(source, self._checked_url(source, raw))
        self._vet_host(source, url)
        attempts = self._config.retries + 1
        retrying = AsyncRetrying(
            stop=stop_after_attempt(attempts),
            wait=wait_exponential(multiplier=self._config.backoff_s, min=self._config.backoff_s)
            + wait_random(0, self._config.backoff_s / 2),
            retry=retry_if_exception_type(_TransientFetchError),
            before_sleep=self._log_retry(url),
            reraise=True,
        )
        data, final = b"", url
        try:
            async for attempt in retrying:
                with attempt:
                    data, final = await self._attempt(source, url)
        except _TransientFetchError as exc:
            raise _with_cause(
                image_error(
                    Reason.IMAGE_FETCH_FAILED,
                    source.field_path,
                    f"download of {url.redacted()} failed after {attempts} attempt(s): {exc}",
                    stage=_STAGE,
                ),
                exc.cause,
            ) from None
        return FetchedImage(source=source, data=data, fetched_uri=final.geturl())

    async def _attempt(self, source: ImageSource, url: ImageUrl) -> tuple[bytes, ImageUrl]:
        timeout = self._config.total_timeout_s
        try:
            async with asyncio.timeout(timeout):
                return await self._download(source, url)
        except TimeoutError:
            raise _TransientFetchError(f"timed out after {timeout:g} s", "timeout") from None

    def _log_retry(self, url: ImageUrl) -> Callable[[RetryCallState], None]:
        def log(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            logger.warning(
                "retrying image download from %s (attempt %d): %s",
                url.host,
                state.attempt_number,
                exc,
            )

        return log

    async def _download(self, source: ImageSource, url: ImageUrl) -> tuple[bytes, ImageUrl]:
        """One attempt: follow (or refuse) redirects, return the body and the final URL."""
        session = self._get_session()
        current = url
        for hop in range(self._config.max_redirects + 1):
            try:
                async with session.get(current.to_yarl(), allow_redirects=False) as resp:
                    self._check_peer(source, resp)
                    if resp.status in _REDIRECT_STATUSES:
                        current = self._redirect_target(source, current, resp, hop)
                        continue
                    if resp.status in _TRANSIENT_STATUSES:
                        raise _TransientFetchError(
                            f"server answered HTTP {resp.status}",
                            "http_5xx" if resp.status >= 500 else "http_4xx",
                        )
                    if resp.status != 200:
                        raise _with_cause(
                            image_error(
                                Reason.IMAGE_FETCH_FAILED,
                                source.field_path,
                                f"{current.redacted()} answered HTTP {resp.status}",
                                stage=_STAGE,
                            ),
                            "http_5xx" if resp.status >= 500 else "http_4xx",
                        )
                    return await self._read_capped(source, resp), current
            except aiohttp.ClientConnectorDNSError as exc:
                if isinstance(exc.os_error, ForbiddenAddressError):
                    raise self._forbidden(
                        source, f"image host {current.host} is not a public address"
                    ) from None
                raise _TransientFetchError(f"cannot resolve {current.host}", "dns") from exc
            except aiohttp.ServerTimeoutError as exc:
                raise _TransientFetchError("timed out", "timeout") from exc
            except aiohttp.ClientSSLError as exc:
                raise _TransientFetchError(f"TLS failed ({type(exc).__name__})", "tls") from exc
            except aiohttp.ClientError as exc:
                raise _TransientFetchError(f"connection failed ({type(exc).__name__})") from exc
        raise _with_cause(
            image_error(
                Reason.IMAGE_FETCH_FAILED,
                source.field_path,
                f"more than {self._config.max_redirects} redirects",
                stage=_STAGE,
            ),
            "redirect",
        )

    def _redirect_target(
        self, source: ImageSource, current: ImageUrl, resp: aiohttp.ClientResponse, hop: int
    ) -> ImageUrl:
        if not self._config.follow_redirects:
            raise _redirect_error(
                source.field_path,
                f"{current.redacted()} answered a redirect (HTTP {resp.status}); "
                "redirects are not followed",
            )
        if hop >= self._config.max_redirects:
            raise _redirect_error(
                source.field_path,
                f"more than {self._config.max_redirects} redirects",
            )
        location = resp.headers.get(aiohttp.hdrs.LOCATION, "")
        if not location:
            raise _redirect_error(
                source.field_path,
                f"redirect (HTTP {resp.status}) without a Location",
            )
        if "\\" in location or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in location):
            raise self._forbidden(source, "redirect target refused: malformed Location")
        if location.startswith("//"):
            absolute = f"{current.scheme}:{location}"
        elif has_scheme(location):
            absolute = location
        else:
            absolute = urllib.parse.urljoin(current.geturl(), location)
        nxt = self._checked_url(source, absolute)
        self._vet_host(source, nxt)
        logger.info("following redirect for %s to host %s", source.field_path, nxt.host)
        return nxt

    def _check_peer(self, source: ImageSource, resp: aiohttp.ClientResponse) -> None:
        """Second line of defence: the connected socket's peer must be allowed too."""
        conn = resp.connection
        transport = conn.transport if conn is not None else None
        peer = transport.get_extra_info("peername") if transport is not None else None
        if isinstance(peer, tuple) and peer and not self._policy.allows_text(str(peer[0])):
            resp.close()
            raise self._forbidden(source, "image host connected to a non-public address")

    async def _read_capped(self, source: ImageSource, resp: aiohttp.ClientResponse) -> bytes:
        cap = self._config.max_bytes
        declared = resp.content_length
        if declared is not None and declared > cap:
            resp.close()
            raise _too_large(
                source.field_path,
                f"image is {declared} bytes (Content-Length), over the limit of {cap}",
                stage=_STAGE,
            )
        chunks: list[bytes] = []
        total = 0
        async for chunk in resp.content.iter_any():
            total += len(chunk)
            if total > cap:
                # Dropping the connection stops the transfer; draining it would read the rest.
                resp.close()
                raise _too_large(
                    source.field_path,
                    f"image is over the limit of {cap} bytes (download stopped)",
                    stage=_STAGE,
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._resolver = PolicyResolver(self._policy, self._inner_resolver)
            connector = aiohttp.TCPConnector(
                resolver=self._resolver,
                limit=self._config.concurrency,
                ttl_dns_cache=10,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=self._config.connect_timeout_s,
                    sock_connect=self._config.connect_timeout_s,
                ),
                # A proxy from the environment would dial the URL's host itself and bypass the
                # address policy; cookies must not travel between callers' URLs.
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={
                    "User-Agent": self._config.user_agent,
                    "Accept": "image/jpeg, image/png, image/webp",
                    "Accept-Encoding": "identity",
                },
            )
        return self._session
