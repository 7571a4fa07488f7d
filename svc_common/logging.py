"""JSON-lines logging shared by both services.

Every line carries ``timestamp`` (RFC 3339, UTC), ``level``, ``service``, ``logger``,
``message``, and when known ``inspection_id`` (from :data:`inspection_id_var`) and the current
OpenTelemetry ``trace_id`` / ``span_id``, then any ``extra=`` fields. A redaction filter keeps
image bytes and secrets out: bytes become their length, sensitive keys are blanked, credentials
in URLs and DSNs are masked.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Final, TextIO

from opentelemetry import trace
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from svc_common.auth import current_caller

# Set by the servers for the duration of a request; asyncio tasks and asyncio.to_thread inherit
# it, so every line logged on behalf of an inspection names it.
inspection_id_var: ContextVar[str | None] = ContextVar("inspection_id", default=None)

REDACTED: Final = "[REDACTED]"
LOG_LEVEL_ENV: Final = "LOG_LEVEL"

_URL_USERINFO = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*):[^@/\s]*@")
# Pre-signed URLs (S3 X-Amz-Signature/Credential/Security-Token, SAS sig...) grant access.
_URL_SECRET_PARAM = re.compile(
    r"(?P<head>[?&][^=&\s#]*(?:signature|token|key|credential|secret|password|sig)[^=&\s#]*=)"
    r"[^&\s#]+",
    re.IGNORECASE,
)
# libpq key/value DSNs: "host=db password=hunter2".
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?:'[^']*'|\S+)", re.IGNORECASE)

_SENSITIVE_SUBSTRINGS: Final = (
    "password", "passwd", "secret", "authorization", "apikey", "privatekey", "credential",
    "cookie",
)  # fmt: skip
_SENSITIVE_SEGMENTS: Final = frozenset({"token", "pwd", "auth", "dsn"})
# Keys that hold payloads: the image itself, or a whole request.
_PAYLOAD_KEYS: Final = frozenset(
    {"content", "image_bytes", "image", "images", "raw_request", "request_body", "body",
     "pixel_values"}
)  # fmt: skip
_MAX_DEPTH: Final = 6


def mask_secrets(text: str) -> str:
    """Masks credentials inside free text: ``postgresql://user:pw@host`` ->
    ``postgresql://user:***@host``, signed-URL query parameters, ``password=...``."""
    text = _URL_USERINFO.sub(r"\g<head>:***@", text)
    text = _URL_SECRET_PARAM.sub(r"\g<head>***", text)
    return _KV_PASSWORD.sub(r"\g<head>***", text)


def is_sensitive_key(key: str) -> bool:
    lowered = key.lower()
    if lowered in _PAYLOAD_KEYS:
        return True
    compact = re.sub(r"[^a-z0-9]", "", lowered)
    if any(s in compact for s in _SENSITIVE_SUBSTRINGS):
        return True
    # Whole segments only: "access_token" is a secret, "completion_tokens" a count.
    return any(seg in _SENSITIVE_SEGMENTS for seg in re.split(r"[^a-z0-9]+", lowered))


def redact(value: Any, _depth: int = 0) -> Any:
    """A copy of ``value`` safe to log: bytes -> ``"<N bytes>"``, sensitive keys of mappings
    blanked, secrets in strings masked; containers walked a few levels deep."""
    if isinstance(value, str):
        return mask_secrets(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if _depth >= _MAX_DEPTH:
        return value if isinstance(value, int | float | bool | type(None)) else "<...>"
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if isinstance(k, str) and is_sensitive_key(k) else redact(v, _depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        items = [redact(v, _depth + 1) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    return value


class RedactingFilter(logging.Filter):
    """Rewrites a record in place so no formatter can leak what it carries. Attach it to
    handlers: filters on a logger do not see records propagated from child loggers."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, Mapping):
            record.msg = redact(record.msg)
        elif record.args:
            record.args = redact(record.args)
            try:
                record.msg = mask_secrets(record.getMessage())
                record.args = None
            except (TypeError, ValueError):
                # A bad format string: logging reports it when formatting; keep the args
                # (already redacted) for that report.
                pass
        else:
            record.msg = mask_secrets(str(record.msg))
        for key, value in list(record.__dict__.items()):
            if key in RESERVED_ATTRS:
                continue
            record.__dict__[key] = REDACTED if is_sensitive_key(key) else redact(value)
        return True


class ServiceJsonFormatter(JsonFormatter):
    """The line layout: fixed fields first, in a fixed order, then the record's extras."""

    def __init__(self, service: str) -> None:
        super().__init__(json_ensure_ascii=True)
        self._service = service

    def add_fields(
        self,
        log_data: dict[str, Any],
        record: logging.LogRecord,
        message_dict: dict[str, Any],
    ) -> None:
        core = self._core_fields(record)
        log_data.update(core)
        super().add_fields(log_data, record, message_dict)
        # An extra= field named like a core field must not replace it.
        log_data.update(core)

    def _core_fields(self, record: logging.LogRecord) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "message": record.message,
        }
        inspection_id = inspection_id_var.get()
        if inspection_id:
            fields["inspection_id"] = inspection_id
        caller = current_caller()
        if caller.method != "none":
            fields["caller"] = caller.name
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            fields["trace_id"] = format(span_context.trace_id, "032x")
            fields["span_id"] = format(span_context.span_id, "016x")
        return fields

    def formatException(self, ei: Any) -> str:  # noqa: N802 (logging.Formatter's name)
        # Exception messages may quote a DSN or a signed URL.
        return mask_secrets(logging.Formatter.formatException(self, ei))


def parse_level(level: str | int | None) -> int:
    """``"debug"``, ``"INFO"``, ``"30"`` or 30 -> a logging level; None reads LOG_LEVEL
    (default INFO). Raises ValueError for an unknown name, so a typo fails at start-up."""
    if level is None:
        level = os.environ.get(LOG_LEVEL_ENV, "INFO")
    if isinstance(level, int):
        return level
    text = level.strip().upper()
    if text.isdigit():
        return int(text)
    if text == "WARN":
        text = "WARNING"
    resolved = logging.getLevelNamesMapping().get(text)
    if resolved is None:
        raise ValueError(f"unknown log level {level!r}")
    return resolved


def configure_logging(
    service: str, level: str | int | None = None, stream: TextIO | None = None
) -> logging.Handler:
    """Sends all logging to ``stream`` (stderr) as JSON lines tagged with ``service``.

    Replaces a handler installed by an earlier call and plain stream handlers (basicConfig);
    leaves other handlers alone. Returns the installed handler.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_svc_common", False) or type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler._svc_common = True  # type: ignore[attr-defined]
    handler.addFilter(RedactingFilter())
    handler.setFormatter(ServiceJsonFormatter(service))
    root.addHandler(handler)
    root.setLevel(parse_level(level))
    logging.captureWarnings(True)
    return handler


@contextmanager
def bind_inspection_id(inspection_id: str) -> Iterator[None]:
    """Tags every log line inside the block (and tasks started in it) with the id."""
    token = inspection_id_var.set(inspection_id)
    try:
        yield
    finally:
        inspection_id_var.reset(token)
