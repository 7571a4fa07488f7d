"""Both services' /metrics output: valid for promtool, named as exported, labels bounded."""

from __future__ import annotations

import subprocess
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from svc_common import (
    GrpcServerMetricsInterceptor,
    InferenceMetrics,
    PersistenceMetrics,
    grpc_metrics,
    inference_metrics,
    persistence_metrics,
    start_metrics_server,
)


def _inference_registry() -> tuple[CollectorRegistry, InferenceMetrics]:
    registry = CollectorRegistry()
    GrpcServerMetricsInterceptor(registry)
    m = InferenceMetrics(registry, max_batch_size=16)
    # Touch every labelled family so the exposition holds a sample of each.
    for stage in inference_metrics.STAGES:
        m.observe_stage(stage, 0.01)  # type: ignore[arg-type]
    with m.time_stage("total"):
        pass
    m.batch_size.observe(4)
    m.queue_depth.set(3)
    m.queue_capacity.set(64)
    m.inflight_requests.set(2)
    m.inflight_limit.set(32)
    m.generated_tokens.inc(120)
    m.prompt_tokens.inc(900)
    m.time_to_first_token.observe(0.4)
    m.output_retries.inc()
    m.record_decision("PICK")
    m.record_fetch_error("timeout")
    m.observe_image("pickup", 2_000_000)
    m.record_rejection("OVERLOADED")
    m.event_backlog.set(5)
    m.event_spool_bytes.set(4096)
    m.event_oldest_age_seconds.set(12.5)
    m.event_delivery_attempts.inc()
    m.record_delivery_failure("UNAVAILABLE")
    m.events_delivered.inc(5)
    m.set_model_info("InternVL2.5-1B", "9f1c2e", "cuda:0", "bfloat16")
    m.set_model_ready(True)
    return registry, m


def _persistence_registry() -> tuple[CollectorRegistry, PersistenceMetrics]:
    registry = CollectorRegistry()
    GrpcServerMetricsInterceptor(registry)
    m = PersistenceMetrics(registry, max_batch_size=64)
    with m.time_write():
        pass
    m.batch_size.observe(12)
    m.record_event("result_recorded", "applied")
    m.record_event("result_recorded", "duplicate")
    m.db_up.set(1)
    return registry, m


@pytest.fixture
def served() -> Iterator[dict[str, str]]:
    """Each service's registry behind its own HTTP endpoint, as the services run them."""
    servers = {
        "inference": start_metrics_server(_inference_registry()[0], "127.0.0.1", 0),
        "persistence": start_metrics_server(_persistence_registry()[0], "127.0.0.1", 0),
    }
    texts = {}
    for name, server in servers.items():
        assert server.port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as r:
            assert r.status == 200
            texts[name] = r.read().decode()
    yield texts
    for server in servers.values():
        server.stop()


@pytest.mark.parametrize("service", ["inference", "persistence"])
def test_promtool_check_metrics(served: dict[str, str], promtool: str, service: str) -> None:
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=served[service],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # promtool prints lint findings (naming, units, _total...) even when it exits 0.
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout


def _family_names(text: str) -> dict[str, str]:
    families = {}
    for family in text_string_to_metric_families(text):
        # The parser strips _total from counters and _info from info metrics.
        name = family.name + ("_total" if family.type == "counter" else "")
        families[name] = family.type
    return families


def test_exported_names_are_exposed(served: dict[str, str]) -> None:
    inference = _family_names(served["inference"])
    persistence = _family_names(served["persistence"])
    for name, kind in {**grpc_metrics.METRIC_TYPES, **inference_metrics.METRIC_TYPES}.items():
        assert inference.get(name) == kind, name
    for name, kind in {**grpc_metrics.METRIC_TYPES, **persistence_metrics.METRIC_TYPES}.items():
        assert persistence.get(name) == kind, name
    assert all(n.startswith(("rpi_inference_", "grpc_server_")) for n in inference
               if not n.endswith("_created"))  # fmt: skip
    assert all(n.startswith(("rpi_persistence_", "grpc_server_")) for n in persistence
               if not n.endswith("_created"))  # fmt: skip


def test_stage_histogram_has_buckets_per_stage() -> None:
    registry = CollectorRegistry()
    m = InferenceMetrics(registry)
    m.observe_stage("parse", 0.0007)
    m.observe_stage("decode_tokens", 19.0)

    def bucket(stage: str, le: str) -> float | None:
        return registry.get_sample_value(
            "rpi_inference_stage_seconds_bucket", {"stage": stage, "le": le}
        )

    # Sub-millisecond resolution for parsing, 17.5/20 s resolution for token decoding.
    assert bucket("parse", "0.0005") == 0
    assert bucket("parse", "0.001") == 1
    assert bucket("decode_tokens", "17.5") == 0
    assert bucket("decode_tokens", "20.0") == 1
    assert bucket("parse", "20.0") is None
    assert bucket("decode_tokens", "0.0005") is None
    assert registry.get_sample_value("rpi_inference_stage_seconds_count", {"stage": "parse"}) == 1
    assert registry.get_sample_value("rpi_inference_stage_seconds_count", {"stage": "fetch"}) == 0
    with pytest.raises(KeyError):
        m.observe_stage("warmup", 1.0)  # type: ignore[arg-type]


def test_label_values_stay_in_their_sets() -> None:
    registry, m = _inference_registry()
    m.record_fetch_error("https://evil.example/123")
    m.record_rejection("SOMETHING_NEW")
    m.record_delivery_failure("NOT_A_CODE")
    m.observe_image("thumbnail", 10)
    text = generate_latest(registry).decode()
    assert "evil" not in text and "SOMETHING_NEW" not in text and "thumbnail" not in text
    get = registry.get_sample_value
    assert get("rpi_inference_image_fetch_errors_total", {"reason": "other"}) == 1
    assert get("rpi_inference_requests_rejected_total", {"reason": "other"}) == 1
    assert get("rpi_inference_event_delivery_failures_total", {"grpc_code": "Unknown"}) == 1
    assert get("rpi_inference_image_bytes_count", {"role": "other"}) == 1


def test_model_info_and_zero_series_exist_from_start() -> None:
    registry = CollectorRegistry()
    m = InferenceMetrics(registry)
    m.set_model_info("InternVL2.5-1B", "rev", "cpu", "float32")
    labels = {"name": "InternVL2.5-1B", "revision": "rev", "device": "cpu", "dtype": "float32"}
    assert registry.get_sample_value("rpi_inference_model_info", labels) == 1
    # Pre-created so that rate() over them is 0, not "no data", before the first event.
    assert registry.get_sample_value("rpi_inference_decisions_total", {"decision": "PICK"}) == 0
    assert (
        registry.get_sample_value("rpi_inference_requests_rejected_total", {"reason": "OVERLOADED"})
        == 0
    )


async def test_delivery_failures_by_code_from_the_exception() -> None:
    import grpc
    import grpc.aio

    registry = CollectorRegistry()
    m = InferenceMetrics(registry)
    # A real client error: nothing listens on the port.
    async with grpc.aio.insecure_channel("127.0.0.1:1") as channel:
        try:
            await channel.unary_unary("/x.Y/Z", None, None)(b"", timeout=5)
        except grpc.aio.AioRpcError as exc:
            m.record_delivery_failure(exc)
    m.record_delivery_failure(TimeoutError())
    m.record_delivery_failure(OSError("disk"))

    def failures(code: str) -> float | None:
        return registry.get_sample_value(
            "rpi_inference_event_delivery_failures_total", {"grpc_code": code}
        )

    assert failures("Unavailable") == 1
    assert failures("DeadlineExceeded") == 1
    assert failures("Unknown") == 1
