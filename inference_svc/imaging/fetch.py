"""Downloading images from caller-supplied URLs, hardened against SSRF and oversized bodies."""

from __future__ import annotations

import asyncio
import logging
import random
import urllib.parse
from typing import TYPE_CHECKING, NamedTuple

import aiohttp
from aiohttp.abc import AbstractResolver

from inference_svc.domain.errors import (
    InspectionError,
    Reason,
    Stage,
    image_error,
    invalid_argument,
)
from inference_svc.domain.models import FetchedImage, ImageRole, ImageSource
from inference_svc.egress.addresses import AddressPolicy
from inference_svc.egress.resolver import ForbiddenAddressError, PolicyResolver
from inference_svc.egress.urls import (
    ForbiddenUrl,
    ImageUrl,
    has_scheme,
    host_matches,
    is_internal_name,
    parse_authority,
    parse_image_url,
)
from inference_svc.imaging.decode import PixelBudget
from inference_svc.imaging.fetch_config import FetchConfig
from inference_svc.imaging.fetch_errors import TransientFetchError as _TransientFetchError
from inference_svc.imaging.fetch_errors import check_status
from inference_svc.imaging.fetch_errors import describe as _describe
from inference_svc.imaging.fetch_errors import failed as _failed
from inference_svc.imaging.fetch_errors import too_large as _too_large
from inference_svc.imaging.fetch_errors import unavailable as _unavailable
from inference_svc.imaging.fetch_errors import with_cause as _with_cause
from inference_svc.imaging.http_cache import ResponseCache, caching_fields
from inference_svc.imaging.transfer import RateFloor, TooLarge, TooSlow, read_body
from inference_svc.storage.stores import is_bucket_uri

if TYPE_CHECKING:
    from inference_svc.imaging.buckets import BucketReader

__all__ = ["FetchConfig", "ImageFetcher"]

logger = logging.getLogger(__name__)

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_STAGE = Stage.FETCH


class _Response(NamedTuple):
    body: bytes | None  # None: 304 to a conditional request
    final: ImageUrl
    headers: list[tuple[str, str]]


class ImageFetcher:
    """Fetches request images. One per process; owns one aiohttp session, created lazily.

    ``resolver`` replaces the DNS resolver underneath the address policy (tests use it to make
    a name resolve to an internal address); the policy applies to whatever it returns.
    """

    def __init__(
        self,
        config: FetchConfig,
        resolver: AbstractResolver | None = None,
        buckets: BucketReader | None = None,
    ) -> None:
        self._config = config
        self._buckets = buckets  # s3:// gs:// az:// images (imaging.buckets); None = refused
        self._policy = AddressPolicy.build(config.allow_private_addresses, config.allowed_networks)
        self._rewrites = {k.lower().rstrip("."): v for k, v in config.host_rewrites.items()}
        # Rewrite targets are the operator's own names: internal ones are allowed there.
        self._trusted_names: set[str] = set()
        for target in self._rewrites.values():
            try:
                self._trusted_names.add(parse_authority(target)[0])
            except ForbiddenUrl as exc:
                raise ValueError(f"invalid host rewrite target {target!r}: {exc}") from None
        self._floor = RateFloor(config.min_bytes_per_s, config.rate_grace_s)
        self._inner_resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        self._resolver: PolicyResolver | None = None
        self._semaphore = asyncio.Semaphore(config.concurrency)
        # Catalogue images repeat, pickups never do: only references are kept (http_cache).
        self.cache = ResponseCache(config.cache_bytes) if config.cache_bytes > 0 else None

    def pixel_budget(self) -> PixelBudget:
        """A fresh budget for one request's images (charge each before it is decoded)."""
        return PixelBudget(self._config.max_request_pixels, self._config.max_image_pixels)

    async def fetch(self, source: ImageSource) -> FetchedImage:
        if source.content is not None and source.uri is None:
            return self._inline(source)
        if source.uri is None or source.content is not None:
            raise invalid_argument(
                f"{source.field_path}: exactly one of uri and content must be set", stage=_STAGE
            )
        async with self._semaphore:
            if is_bucket_uri(source.uri):
                if self._buckets is None:
                    raise self._forbidden(
                        source, "bucket URI schemes are not enabled (ALLOWED_BUCKETS is empty)"
                    )
                return await self._buckets.fetch(source, source.uri)
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
            raise _too_large(source.field_path, len(data), self._config.max_bytes)
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

    def _vet_host(self, source: ImageSource, url: ImageUrl, origin_port: int | None) -> None:
        """Everything that can be refused before a lookup or a connection."""
        listed = host_matches(url.host, self._config.allowed_hosts)
        if self._config.allowed_hosts and not listed:
            raise self._forbidden(source, f"image host {url.host!r} is not in the allowlist")
        if (
            url.ip is None
            and is_internal_name(url.host)
            and not listed
            and url.host not in self._trusted_names
        ):
            raise self._forbidden(source, f"image host {url.host!r} is an internal name")
        # Literal addresses never reach the resolver, so they are checked here.
        if url.ip is not None and not self._policy.allows(url.ip, url.effective_port, origin_port):
            raise self._forbidden(source, f"image host {url.authority} is not a public address")

    def _rewrite(self, source: ImageSource, url: ImageUrl) -> ImageUrl:
        target = self._rewrites.get(url.host)
        if target is None or source.role not in self._config.host_rewrite_roles:
            return url
        return url.with_authority(target)

    # -- download

    async def _fetch_uri(self, source: ImageSource, raw: str) -> FetchedImage:
        url = self._rewrite(source, self._checked_url(source, raw))
        self._vet_host(source, url, None)
        key = url.geturl()
        cache = self.cache if source.role is ImageRole.REFERENCE else None
        kept = cache.lookup(key) if cache is not None else None
        if cache is not None and kept is not None and cache.is_fresh(kept):
            cache.counts.hits += 1
            return FetchedImage(source=source, data=kept.body, fetched_uri=key)
        # One deadline for the whole download: attempts, redirects, backoff and a second
        # request after a 304 that names another representation share it, so FETCH_TIMEOUT_S
        # bounds how long an image can hold a slot.
        deadline = asyncio.get_running_loop().time() + self._config.total_timeout_s
        got = await self._attempts(source, url, deadline, kept.validators() if kept else {})
        if cache is not None and kept is not None and got.body is None:
            if kept.same_etag(caching_fields(got.headers)):
                cache.revalidate(key, kept, got.headers)
                cache.counts.revalidated += 1
                return FetchedImage(source=source, data=kept.body, fetched_uri=key)
            got = await self._attempts(source, url, deadline, {})
        if got.body is None:
            raise _failed(source.field_path, f"{url.redacted()} answered HTTP 304", "http_4xx")
        if cache is not None:
            cache.counts.misses += 1
            if got.final == url:
                cache.store(key, got.body, got.headers)
        return FetchedImage(source=source, data=got.body, fetched_uri=got.final.geturl())

    async def _attempts(
        self, source: ImageSource, url: ImageUrl, deadline: float, conditional: dict[str, str]
    ) -> _Response:
        loop = asyncio.get_running_loop()
        total = self._config.total_timeout_s
        attempts = self._config.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                async with asyncio.timeout_at(deadline):
                    return await self._download(source, url, conditional)
            except TimeoutError:
                raise _unavailable(
                    source.field_path,
                    f"download of {url.redacted()} timed out after {total:g} s "
                    f"({attempt} attempt(s))",
                    "timeout",
                ) from None
            except _TransientFetchError as exc:
                delay = self._backoff(attempt)
                if attempt == attempts or loop.time() + delay >= deadline:
                    raise _unavailable(
                        source.field_path,
                        f"download of {url.redacted()} failed after {attempt} attempt(s): {exc}",
                        exc.cause,
                        exc.retry_after_s,
                    ) from None
                logger.warning(
                    "retrying image download from %s (attempt %d): %s", url.host, attempt, exc
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _backoff(self, attempt: int) -> float:
        """Exponential from backoff_s, plus up to 50 % jitter so retries do not align."""
        base = self._config.backoff_s * float(2 ** (attempt - 1))
        return base + random.uniform(0, self._config.backoff_s / 2)

    async def _download(
        self, source: ImageSource, url: ImageUrl, conditional: dict[str, str]
    ) -> _Response:
        """One attempt: follow (or refuse) redirects, return the body and the final URL.

        ``conditional`` (a cached body's validators) goes with the first request only: a 304
        to it is returned without a body, a redirect elsewhere is fetched unconditionally."""
        session = self._get_session()
        started = asyncio.get_running_loop().time()
        origin_port = url.effective_port
        current = url
        for hop in range(self._config.max_redirects + 1):
            try:
                # Waiting for the headers counts against the rate floor as well.
                async with asyncio.timeout_at(self._floor.due(started, 0)):
                    resp = await session.get(
                        current.to_yarl(),
                        allow_redirects=False,
                        headers=conditional if hop == 0 else None,
                    )
            except aiohttp.ServerTimeoutError as exc:  # a TimeoutError too: caught first
                raise _TransientFetchError("timed out connecting", "timeout") from exc
            except TimeoutError:
                raise self._too_slow(source, current, 0) from None
            except aiohttp.ClientConnectorDNSError as exc:
                if isinstance(exc.os_error, ForbiddenAddressError):
                    raise self._forbidden(
                        source, f"image host {current.authority} is not a public address"
                    ) from None
                raise _TransientFetchError(f"cannot resolve {current.host}", "dns") from exc
            except aiohttp.ClientSSLError as exc:
                raise _TransientFetchError("the TLS handshake failed", "tls") from exc
            except aiohttp.ClientError as exc:
                raise _TransientFetchError(_describe(exc)) from exc
            async with resp:
                self._check_peer(source, resp, origin_port)
                if resp.status == 304 and conditional and hop == 0:
                    return _Response(None, current, list(resp.headers.items()))
                if resp.status in _REDIRECT_STATUSES:
                    current = await self._redirect_target(source, current, resp, hop, origin_port)
                    continue
                check_status(
                    source.field_path,
                    current.redacted(),
                    resp.status,
                    resp.headers.get(aiohttp.hdrs.RETRY_AFTER),
                )
                try:
                    body = await read_body(resp, self._config.max_bytes, self._floor, started)
                except TooLarge as exc:
                    raise _too_large(
                        source.field_path, exc.declared, self._config.max_bytes
                    ) from None
                except TooSlow as exc:
                    raise self._too_slow(source, current, exc.received) from None
                except aiohttp.ClientError as exc:
                    raise _TransientFetchError(_describe(exc)) from exc
                return _Response(body, current, list(resp.headers.items()))
        raise _failed(
            source.field_path, f"more than {self._config.max_redirects} redirects", "redirect"
        )

    def _too_slow(self, source: ImageSource, url: ImageUrl, received: int) -> InspectionError:
        # Not retried: a server this slow would hold the slot again for the next attempt.
        return _unavailable(
            source.field_path,
            f"download of {url.redacted()} abandoned: slower than "
            f"{self._config.min_bytes_per_s} bytes/s after {self._config.rate_grace_s:g} s "
            f"({received} bytes received)",
            "timeout",
        )

    async def _redirect_target(
        self,
        source: ImageSource,
        current: ImageUrl,
        resp: aiohttp.ClientResponse,
        hop: int,
        origin_port: int,
    ) -> ImageUrl:
        if not self._config.follow_redirects:
            raise _failed(
                source.field_path,
                f"{current.redacted()} answered a redirect (HTTP {resp.status}); "
                "redirects are not followed",
                "redirect",
            )
        if hop >= self._config.max_redirects:
            raise _failed(
                source.field_path, f"more than {self._config.max_redirects} redirects", "redirect"
            )
        location = resp.headers.get(aiohttp.hdrs.LOCATION, "")
        if not location:
            raise _failed(
                source.field_path, f"redirect (HTTP {resp.status}) without a Location", "redirect"
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
        self._vet_host(source, nxt, origin_port)
        if nxt.ip is None and nxt.effective_port != origin_port:
            await self._vet_redirect_addresses(source, nxt, origin_port)
        logger.info("following redirect for %s to host %s", source.field_path, nxt.host)
        return nxt

    async def _vet_redirect_addresses(
        self, source: ImageSource, nxt: ImageUrl, origin_port: int
    ) -> None:
        """A redirect to another port: the name's addresses are checked against the original
        port before any connection (the connector's own lookup knows only the new port)."""
        resolver = self._resolver
        if resolver is None:  # the session (and its resolver) exist once a request was sent
            raise AssertionError("redirect before any request")
        try:
            await resolver.resolve_for(nxt.host, nxt.effective_port, origin_port)
        except ForbiddenAddressError:
            raise self._forbidden(
                source, f"image host {nxt.authority} is not a public address"
            ) from None
        except OSError as exc:
            raise _TransientFetchError(f"cannot resolve {nxt.host}", "dns") from exc

    def _check_peer(
        self, source: ImageSource, resp: aiohttp.ClientResponse, origin_port: int
    ) -> None:
        """Second line of defence: the connected socket's peer must be allowed too."""
        conn = resp.connection
        transport = conn.transport if conn is not None else None
        peer = transport.get_extra_info("peername") if transport is not None else None
        if (
            isinstance(peer, tuple)
            and len(peer) >= 2
            and not self._policy.allows_text(str(peer[0]), int(peer[1]), origin_port)
        ):
            resp.close()
            raise self._forbidden(source, "image host connected to a non-public address")

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
