"""How an image download failure is reported: whose fault it is decides the status.

The image host's failures (DNS, connection, TLS, timeout, 5xx, 408/429) are
``IMAGE_SOURCE_UNAVAILABLE`` (UNAVAILABLE with RetryInfo): the same request may succeed later,
and an outage of an image CDN shows as server-side errors. What the caller must fix (a 404, a
refused redirect, an image too large; forbidden URLs are refused by the fetcher itself) is
INVALID_ARGUMENT: retrying unchanged will not help. Every error carries a low-cardinality cause
(ErrorInfo metadata ``fetch_error``, counted by ``rpi_inference_image_fetch_errors_total``).
"""

from __future__ import annotations

from typing import Final

import aiohttp

from inference_svc.domain.errors import ErrorKind, InspectionError, Reason, Stage, image_error

RETRIED_STATUSES: Final = frozenset({408, 429, 502, 503, 504})
# The causes (ErrorInfo metadata ``fetch_error``) of IMAGE_SOURCE_UNAVAILABLE; the
# ImageFetchFailing alert counts these.
UNAVAILABLE_CAUSES: Final = frozenset(
    {"timeout", "connection", "dns", "tls", "http_5xx", "throttled"}
)
_STAGE: Final = Stage.FETCH
# A host's Retry-After is passed on to the caller (RetryInfo), bounded: it is the image host's
# word, not ours.
MAX_RETRY_AFTER_S: Final = 60.0


class TransientFetchError(Exception):
    """A failure worth retrying (connection trouble, 408/429/502/503/504)."""

    def __init__(
        self, message: str, cause: str = "connection", retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        # Low-cardinality cause for metrics (svc_common FETCH_ERROR_REASONS).
        self.cause = cause
        self.retry_after_s = retry_after_s


# What a client error means, in words: messages never carry exception class names.
_CLIENT_ERRORS: tuple[tuple[type[aiohttp.ClientError], str], ...] = (
    (aiohttp.ServerDisconnectedError, "the server closed the connection"),
    (aiohttp.ClientPayloadError, "the body arrived incomplete or malformed"),
    (aiohttp.ClientResponseError, "the server's response was malformed"),
    (aiohttp.ClientConnectorError, "cannot connect"),
    (aiohttp.ClientOSError, "the connection failed"),
)


def describe(exc: aiohttp.ClientError) -> str:
    return next((text for kind, text in _CLIENT_ERRORS if isinstance(exc, kind)), "failed")


def with_cause(error: InspectionError, cause: str) -> InspectionError:
    """Tags an error with its fetch-failure cause (metadata ``fetch_error``) for metrics."""
    error.metadata["fetch_error"] = cause
    return error


def too_large(field_path: str, size: int | None, cap: int) -> InspectionError:
    """The same reason, field and wording whether the image came inline or by URL."""
    message = (
        f"image is {size} bytes, over the limit of {cap} bytes"
        if size is not None
        else f"image is over the limit of {cap} bytes"
    )
    return with_cause(
        image_error(Reason.IMAGE_TOO_LARGE, field_path, message, stage=_STAGE), "too_large"
    )


def failed(field_path: str, message: str, cause: str) -> InspectionError:
    """A failure the caller must fix (a 404, a refused redirect): retrying will not help."""
    return with_cause(
        image_error(Reason.IMAGE_FETCH_FAILED, field_path, message, stage=_STAGE), cause
    )


def unavailable(
    field_path: str, message: str, cause: str, retry_after_s: float | None = None
) -> InspectionError:
    """The image host failed: the caller is told UNAVAILABLE, with RetryInfo."""
    error = image_error(
        Reason.IMAGE_SOURCE_UNAVAILABLE,
        field_path,
        message,
        stage=_STAGE,
        kind=ErrorKind.UNAVAILABLE,
        retry_after_seconds=retry_after_s,
    )
    return with_cause(error, cause)


def retry_after(value: str | None) -> float | None:
    """Retry-After in delta-seconds (the HTTP-date form is rare for images and ignored)."""
    if value is None or not value.strip().isdigit():
        return None
    return min(float(value.strip()), MAX_RETRY_AFTER_S)


def check_status(field_path: str, where: str, status: int, retry_after_header: str | None) -> None:
    """Raises for any HTTP status but 200 (redirects are handled before): TransientFetchError
    for the statuses worth another attempt, else the final error. ``where`` is the redacted
    URL, for the message."""
    if status == 200:
        return
    cause = {408: "timeout", 429: "throttled"}.get(
        status, "http_5xx" if status >= 500 else "http_4xx"
    )
    delay = retry_after(retry_after_header)
    if status in RETRIED_STATUSES:
        raise TransientFetchError(f"server answered HTTP {status}", cause, delay)
    message = f"{where} answered HTTP {status}"
    if status >= 500:  # the host's fault; not retried here, a 500 rarely heals at once
        raise unavailable(field_path, message, cause, delay)
    raise failed(field_path, message, cause)
