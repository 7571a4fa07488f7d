"""Reading images from bucket URIs (``s3://``, ``gs://``, ``az://``) with obstore.

The same limits and reasons as an https download: the byte cap (checked against the object's
size before any body byte is read, and again while streaming), one deadline for every attempt
and backoff (FETCH_TIMEOUT_S), the rate floor, retries for transient failures only, and
the reasons of imaging.fetch_errors: IMAGE_URL_FORBIDDEN, IMAGE_FETCH_FAILED (a missing object,
denied access: the caller's to fix), IMAGE_SOURCE_UNAVAILABLE (the store down, slow or failing:
worth retrying) and IMAGE_TOO_LARGE. Only buckets in ALLOWED_BUCKETS are
read, so a caller cannot make the service read other buckets its credentials reach.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING

import obstore
from obstore.exceptions import BaseError, PermissionDeniedError, UnauthenticatedError

from inference_svc.domain.errors import InspectionError, Reason, Stage, image_error
from inference_svc.domain.models import FetchedImage, ImageSource
from inference_svc.imaging.fetch_errors import failed, too_large, unavailable, with_cause
from inference_svc.imaging.transfer import RateFloor
from inference_svc.storage.stores import (
    BadBucketUri,
    BucketUri,
    StoreCache,
    bucket_allowed,
    parse_bucket_uri,
)

if TYPE_CHECKING:
    from inference_svc.imaging.fetch_config import FetchConfig
    from inference_svc.settings import InferenceSettings

logger = logging.getLogger(__name__)

_STAGE = Stage.FETCH
_CHUNK = 256 * 1024


class _TransientError(Exception):
    """Worth another attempt (connection trouble, a 5xx from the store)."""


def _forbidden(source: ImageSource, message: str, cause: str) -> InspectionError:
    error = image_error(Reason.IMAGE_URL_FORBIDDEN, source.field_path, message, stage=_STAGE)
    return with_cause(error, cause)


class BucketReader:
    def __init__(
        self, config: FetchConfig, stores: StoreCache, allowed_buckets: tuple[str, ...]
    ) -> None:
        self._config = config
        self._stores = stores
        self._allowed = allowed_buckets
        self._floor = RateFloor(config.min_bytes_per_s, config.rate_grace_s)

    @classmethod
    def from_settings(
        cls, settings: InferenceSettings, config: FetchConfig, stores: StoreCache
    ) -> BucketReader | None:
        """None when ALLOWED_BUCKETS is empty (bucket URIs refused); a malformed entry stops
        the start."""
        if not settings.allowed_buckets:
            return None
        for entry in settings.allowed_buckets:
            if parse_bucket_uri(entry, key_required=False).key:
                raise ValueError(f"ALLOWED_BUCKETS entry {entry!r}: scheme://bucket, no path")
        return cls(config, stores, tuple(settings.allowed_buckets))

    async def fetch(self, source: ImageSource, raw: str) -> FetchedImage:
        uri = self._checked(source, raw)
        loop = asyncio.get_running_loop()
        total = self._config.total_timeout_s
        deadline = loop.time() + total
        attempts = self._config.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                async with asyncio.timeout_at(deadline):
                    data = await self._read(source, uri)
                return FetchedImage(source=source, data=data, fetched_uri=uri.geturl())
            except TimeoutError:
                raise unavailable(
                    source.field_path,
                    f"read of {uri.geturl()} timed out after {total:g} s ({attempt} attempt(s))",
                    "timeout",
                ) from None
            except _TransientError as exc:
                delay = self._config.backoff_s * 2 ** (attempt - 1)
                delay += random.uniform(0, self._config.backoff_s / 2)
                if attempt == attempts or loop.time() + delay >= deadline:
                    raise unavailable(
                        source.field_path,
                        f"read of {uri.geturl()} failed after {attempt} attempt(s): {exc}",
                        "connection",
                    ) from None
                logger.warning("retrying bucket read of %s (attempt %d)", uri.bucket_ref, attempt)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _checked(self, source: ImageSource, raw: str) -> BucketUri:
        try:
            uri = parse_bucket_uri(raw)
        except BadBucketUri as exc:
            raise _forbidden(source, f"image URI refused: {exc}", "invalid_url") from None
        if not bucket_allowed(uri, self._allowed):
            raise _forbidden(
                source, f"bucket {uri.bucket_ref!r} is not in the allowlist", "forbidden"
            )
        return uri

    async def _read(self, source: ImageSource, uri: BucketUri) -> bytes:
        loop = asyncio.get_running_loop()
        started = loop.time()
        cap = self._config.max_bytes
        try:
            async with asyncio.timeout_at(self._floor.due(started, 0)):
                result = await obstore.get_async(self._stores.store(uri), uri.key)
        except TimeoutError:
            raise self._too_slow(source, uri, 0) from None
        except FileNotFoundError:
            raise failed(source.field_path, f"{uri.geturl()} does not exist", "http_4xx") from None
        except (PermissionDeniedError, UnauthenticatedError):
            raise failed(
                source.field_path,
                f"{uri.geturl()}: access denied to the service's credentials",
                "http_4xx",
            ) from None
        except BaseError as exc:
            raise _TransientError("the object store could not be reached or failed") from exc
        size = int(result.meta["size"])
        if size > cap:
            raise too_large(source.field_path, size, cap)
        chunks: list[bytes] = []
        received = 0
        stream = result.stream(min_chunk_size=_CHUNK)
        while True:
            try:
                async with asyncio.timeout_at(self._floor.due(started, received)):
                    chunk = await anext(stream, b"")
            except TimeoutError:
                raise self._too_slow(source, uri, received) from None
            except BaseError as exc:
                raise _TransientError("the object's body arrived incomplete") from exc
            if not chunk:
                return b"".join(chunks)
            received += len(chunk)
            if received > cap:  # the object grew since its size was read
                raise too_large(source.field_path, None, cap)
            chunks.append(chunk)

    def _too_slow(self, source: ImageSource, uri: BucketUri, received: int) -> InspectionError:
        return unavailable(
            source.field_path,
            f"read of {uri.geturl()} abandoned: slower than {self._config.min_bytes_per_s} "
            f"bytes/s after {self._config.rate_grace_s:g} s ({received} bytes received)",
            "timeout",
        )
