"""Bucket URIs (``s3://bucket/key``, ``gs://bucket/key``, ``az://container/key``) and the
obstore stores that read and write them.

Credentials never come from a request: each store takes them from the standard provider chain
of its cloud (environment variables, instance or workload identity, a mounted credentials
file), which obstore reads when the store is built. An endpoint override per scheme points a
store at an S3-compatible service or an emulator.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from obstore.store import AzureStore, GCSStore, S3Store

if TYPE_CHECKING:
    from obstore.store import ClientConfig, ObjectStore, RetryConfig

BUCKET_SCHEMES: tuple[str, ...] = ("s3", "gs", "az")
# Bucket and container names as the three stores allow them (lower-case letters, digits, dots
# and dashes; underscores for GCS), so a URI cannot smuggle a path or a host into the name.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._\-]{1,220}[a-z0-9]")


class BadBucketUri(ValueError):  # noqa: N818 - reads as "the bucket URI is bad"
    """Not a usable bucket URI; the message says why."""


@dataclass(frozen=True)
class BucketUri:
    scheme: str  # one of BUCKET_SCHEMES
    bucket: str  # the bucket, or the Azure container
    key: str  # the object's path inside it, without a leading "/"

    @property
    def bucket_ref(self) -> str:
        """``scheme://bucket``: how ALLOWED_BUCKETS names it."""
        return f"{self.scheme}://{self.bucket}"

    def geturl(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}"

    def child(self, *parts: str) -> BucketUri:
        """The object ``parts`` below this URI taken as a prefix."""
        key = "/".join(p.strip("/") for p in (self.key, *parts) if p.strip("/"))
        return BucketUri(self.scheme, self.bucket, key)


def scheme_of(raw: str) -> str:
    return raw.split("://", 1)[0].lower() if "://" in raw else ""


def is_bucket_uri(raw: str) -> bool:
    return scheme_of(raw) in BUCKET_SCHEMES


def parse_bucket_uri(raw: str, *, key_required: bool = True) -> BucketUri:
    """``scheme://bucket/key`` strictly: no query, fragment, credentials, ``..`` or empty
    segments, so the object read is the one the URI names."""
    scheme = scheme_of(raw)
    if scheme not in BUCKET_SCHEMES:
        raise BadBucketUri(f"scheme must be one of {', '.join(BUCKET_SCHEMES)}")
    rest = raw.split("://", 1)[1]
    if any(c in rest for c in "?#@\\") or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in rest):
        raise BadBucketUri("bucket URI must not contain a query, fragment, user or spaces")
    bucket, _, key = rest.partition("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise BadBucketUri("malformed bucket name")
    key = key.rstrip("/") if not key_required else key
    segments = key.split("/") if key else []
    if key_required and not segments:
        raise BadBucketUri("bucket URI has no object key")
    if any(s in ("", ".", "..") for s in segments):
        raise BadBucketUri("object key has an empty, '.' or '..' segment")
    return BucketUri(scheme, bucket, key)


@dataclass(frozen=True)
class StoreConfig:
    # scheme -> endpoint URL (S3-compatible services, emulators); absent = the cloud's own.
    endpoints: Mapping[str, str] = field(default_factory=dict)
    allow_http: bool = False  # only for endpoint overrides on a private network or loopback
    connect_timeout_s: float = 5.0
    request_timeout_s: float = 20.0


class StoreCache:
    """One obstore store per bucket, built on first use and kept (each holds its HTTP client
    pool and cached credentials)."""

    def __init__(self, config: StoreConfig) -> None:
        self._config = config
        self._stores: dict[tuple[str, str], ObjectStore] = {}

    def store(self, uri: BucketUri) -> ObjectStore:
        key = (uri.scheme, uri.bucket)
        found = self._stores.get(key)
        if found is None:
            found = self._stores[key] = self._build(uri.scheme, uri.bucket)
        return found

    def _build(self, scheme: str, bucket: str) -> ObjectStore:
        c = self._config
        client: ClientConfig = {
            "allow_http": c.allow_http,
            "connect_timeout": timedelta(seconds=c.connect_timeout_s),
            "timeout": timedelta(seconds=c.request_timeout_s),
        }
        # Callers retry with their own deadline and backoff; obstore's retries would hide it.
        retry: RetryConfig = {"max_retries": 0}
        endpoint = c.endpoints.get(scheme)
        if scheme == "s3":
            extra: dict[str, Any] = {"endpoint": endpoint} if endpoint else {}
            return S3Store(bucket, client_options=client, retry_config=retry, **extra)
        if scheme == "gs":
            extra = {"base_url": endpoint} if endpoint else {}
            return GCSStore(bucket, client_options=client, retry_config=retry, **extra)
        extra = {"endpoint": endpoint} if endpoint else {}
        return AzureStore(bucket, client_options=client, retry_config=retry, **extra)


def bucket_allowed(uri: BucketUri, allowed: tuple[str, ...]) -> bool:
    """ALLOWED_BUCKETS match: ``scheme://bucket`` exactly (an empty list allows none)."""
    return uri.bucket_ref in {a.lower().rstrip("/") for a in allowed}
