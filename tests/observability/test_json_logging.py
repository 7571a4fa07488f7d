from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from svc_common.logging import (
    REDACTED,
    bind_inspection_id,
    configure_logging,
    mask_secrets,
    parse_level,
)

pytestmark = pytest.mark.usefixtures("restore_logging")


def _lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_line_carries_service_level_ids_and_utc_timestamp() -> None:
    buf = io.StringIO()
    configure_logging("inference_svc", "INFO", stream=buf)
    log = logging.getLogger("inference_svc.pipeline")
    with bind_inspection_id("0b7f5a0e-insp"):
        log.info("inspection accepted", extra={"images": 3})
    log.info("outside any inspection")

    first, second = _lines(buf)
    assert list(first)[:6] == ["timestamp", "level", "service", "logger", "message",
                               "inspection_id"]  # fmt: skip
    assert first["level"] == "INFO"
    assert first["service"] == "inference_svc"
    assert first["logger"] == "inference_svc.pipeline"
    assert first["message"] == "inspection accepted"
    assert first["inspection_id"] == "0b7f5a0e-insp"
    assert first["timestamp"].endswith("Z") and "T" in first["timestamp"]
    assert "inspection_id" not in second
    assert "trace_id" not in second and "span_id" not in second


def test_trace_and_span_ids_inside_a_span(tracer_provider: TracerProvider) -> None:
    buf = io.StringIO()
    configure_logging("persistence_svc", "DEBUG", stream=buf)
    tracer = tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("write") as span:
        logging.getLogger("persistence_svc.db").debug("batch written")
    (line,) = _lines(buf)
    ctx = span.get_span_context()
    assert line["trace_id"] == format(ctx.trace_id, "032x")
    assert line["span_id"] == format(ctx.span_id, "016x")
    assert len(line["trace_id"]) == 32 and len(line["span_id"]) == 16


def test_level_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "warning")
    buf = io.StringIO()
    configure_logging("inference_svc", None, stream=buf)
    log = logging.getLogger("x")
    log.info("dropped")
    log.warning("kept")
    assert [line["message"] for line in _lines(buf)] == ["kept"]


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        parse_level("verbose")
    assert parse_level("warn") == logging.WARNING
    assert parse_level("10") == logging.DEBUG


def test_reconfiguring_does_not_duplicate_lines() -> None:
    buf = io.StringIO()
    configure_logging("inference_svc", "INFO", stream=io.StringIO())
    configure_logging("inference_svc", "INFO", stream=buf)
    logging.getLogger("x").info("once")
    assert len(_lines(buf)) == 1


def test_bytes_never_reach_the_output() -> None:
    buf = io.StringIO()
    configure_logging("inference_svc", "INFO", stream=buf)
    image = b"\x89PNG\r\n\x1a\nSECRETPIXELS" * 10
    log = logging.getLogger("inference_svc.fetch")
    log.info("fetched %s", image)
    log.info("decoded", extra={"image_bytes": image, "payload": image, "size": len(image)})
    log.info("nested", extra={"request": {"pickup": [{"content": image, "uri": "https://a/b"}]}})

    text = buf.getvalue()
    assert "SECRETPIXELS" not in text and "PNG" not in text
    fetched, decoded, nested = _lines(buf)
    assert fetched["message"] == f"fetched <{len(image)} bytes>"
    assert decoded["image_bytes"] == REDACTED
    assert decoded["payload"] == f"<{len(image)} bytes>"
    assert decoded["size"] == len(image)
    assert nested["request"] == {"pickup": [{"content": REDACTED, "uri": "https://a/b"}]}


def test_secrets_are_masked() -> None:
    buf = io.StringIO()
    configure_logging("persistence_svc", "INFO", stream=buf)
    log = logging.getLogger("persistence_svc.db")
    log.info("connecting to %s", "postgresql://rpi:hunter2@db.internal:5432/rpi")
    log.info(
        "config",
        extra={
            "database_url": "postgresql://rpi:hunter2@db:5432/rpi",
            "db_password": "hunter2",
            "Authorization": "Bearer abc.def",
            "access_token": "tok-123",
            "completion_tokens": 120,
            "image_url": "https://b.s3.amazonaws.com/x.jpg?X-Amz-Credential=AKIA1&X-Amz-Signature=f00d&v=2",
        },
    )
    try:
        raise ConnectionError("cannot reach postgres://svc:hunter2@db:5432/rpi")
    except ConnectionError:
        log.exception("database unreachable")

    text = buf.getvalue()
    assert "hunter2" not in text
    assert "abc.def" not in text and "tok-123" not in text
    assert "AKIA1" not in text and "f00d" not in text
    connecting, config, failure = _lines(buf)
    assert connecting["message"] == "connecting to postgresql://rpi:***@db.internal:5432/rpi"
    assert config["database_url"] == "postgresql://rpi:***@db:5432/rpi"
    assert config["db_password"] == REDACTED
    assert config["Authorization"] == REDACTED
    assert config["access_token"] == REDACTED
    assert config["completion_tokens"] == 120
    assert config["image_url"] == (
        "https://b.s3.amazonaws.com/x.jpg?X-Amz-Credential=***&X-Amz-Signature=***&v=2"
    )
    assert "postgres://svc:***@db:5432/rpi" in failure["exc_info"]


def test_mask_secrets_in_key_value_dsn() -> None:
    assert mask_secrets("host=db user=rpi password=hunter2 dbname=rpi") == (
        "host=db user=rpi password=*** dbname=rpi"
    )
