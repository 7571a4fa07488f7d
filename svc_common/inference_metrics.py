"""Every Prometheus metric of inference_svc (besides the gRPC server ones), prefixed
``rpi_inference_``. Units are base units (seconds, bytes); counters end in ``_total``; labels
take values from small fixed sets only (never ids).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from svc_common._labels import GO_CODE_NAMES, bounded, go_code_name
from svc_common.stage_histogram import PerLabelBucketHistogram

PREFIX: Final = "rpi_inference_"

STAGE_SECONDS: Final = "rpi_inference_stage_seconds"
BATCH_SIZE: Final = "rpi_inference_batch_size"
QUEUE_DEPTH: Final = "rpi_inference_queue_depth"
QUEUE_CAPACITY: Final = "rpi_inference_queue_capacity"
INFLIGHT_REQUESTS: Final = "rpi_inference_inflight_requests"
INFLIGHT_LIMIT: Final = "rpi_inference_inflight_limit"
GENERATED_TOKENS_TOTAL: Final = "rpi_inference_generated_tokens_total"
PROMPT_TOKENS_TOTAL: Final = "rpi_inference_prompt_tokens_total"
TIME_TO_FIRST_TOKEN_SECONDS: Final = "rpi_inference_time_to_first_token_seconds"  # noqa: S105
OUTPUT_RETRIES_TOTAL: Final = "rpi_inference_output_retries_total"
DECISIONS_TOTAL: Final = "rpi_inference_decisions_total"
IMAGE_FETCH_ERRORS_TOTAL: Final = "rpi_inference_image_fetch_errors_total"
IMAGE_BYTES: Final = "rpi_inference_image_bytes"
REQUESTS_REJECTED_TOTAL: Final = "rpi_inference_requests_rejected_total"
EVENT_BACKLOG: Final = "rpi_inference_event_backlog"
EVENT_SPOOL_BYTES: Final = "rpi_inference_event_spool_bytes"
EVENT_OLDEST_AGE_SECONDS: Final = "rpi_inference_event_oldest_age_seconds"
EVENT_DELIVERY_ATTEMPTS_TOTAL: Final = "rpi_inference_event_delivery_attempts_total"
EVENT_DELIVERY_FAILURES_TOTAL: Final = "rpi_inference_event_delivery_failures_total"
EVENTS_DELIVERED_TOTAL: Final = "rpi_inference_events_delivered_total"
MODEL_INFO: Final = "rpi_inference_model_info"
MODEL_READY: Final = "rpi_inference_model_ready"
POLICY_OUTCOMES_TOTAL: Final = "rpi_inference_policy_outcomes_total"
POLICY_REASONS_TOTAL: Final = "rpi_inference_policy_reasons_total"
IMAGE_SHARPNESS: Final = "rpi_inference_image_sharpness"
IMAGE_MEAN_LUMA: Final = "rpi_inference_image_mean_luma"
POLICY_RELOAD_FAILED: Final = "rpi_inference_policy_reload_failed"
POLICY_RELOAD_FAILURES_TOTAL: Final = "rpi_inference_policy_reload_failures_total"
VISION_CACHE_LOOKUPS_TOTAL: Final = "rpi_inference_vision_cache_lookups_total"
VISION_CACHE_EVICTIONS_TOTAL: Final = "rpi_inference_vision_cache_evictions_total"
VISION_CACHE_BYTES: Final = "rpi_inference_vision_cache_bytes"

# Exposed family name -> Prometheus type, for checks of dashboards and alert rules.
METRIC_TYPES: Final[dict[str, str]] = {
    STAGE_SECONDS: "histogram",
    BATCH_SIZE: "histogram",
    QUEUE_DEPTH: "gauge",
    QUEUE_CAPACITY: "gauge",
    INFLIGHT_REQUESTS: "gauge",
    INFLIGHT_LIMIT: "gauge",
    GENERATED_TOKENS_TOTAL: "counter",
    PROMPT_TOKENS_TOTAL: "counter",
    TIME_TO_FIRST_TOKEN_SECONDS: "histogram",
    OUTPUT_RETRIES_TOTAL: "counter",
    DECISIONS_TOTAL: "counter",
    IMAGE_FETCH_ERRORS_TOTAL: "counter",
    IMAGE_BYTES: "histogram",
    REQUESTS_REJECTED_TOTAL: "counter",
    EVENT_BACKLOG: "gauge",
    EVENT_SPOOL_BYTES: "gauge",
    EVENT_OLDEST_AGE_SECONDS: "gauge",
    EVENT_DELIVERY_ATTEMPTS_TOTAL: "counter",
    EVENT_DELIVERY_FAILURES_TOTAL: "counter",
    EVENTS_DELIVERED_TOTAL: "counter",
    MODEL_INFO: "gauge",
    MODEL_READY: "gauge",
    POLICY_OUTCOMES_TOTAL: "counter",
    POLICY_REASONS_TOTAL: "counter",
    IMAGE_SHARPNESS: "histogram",
    IMAGE_MEAN_LUMA: "histogram",
    POLICY_RELOAD_FAILED: "gauge",
    POLICY_RELOAD_FAILURES_TOTAL: "counter",
    VISION_CACHE_LOOKUPS_TOTAL: "counter",
    VISION_CACHE_EVICTIONS_TOTAL: "counter",
    VISION_CACHE_BYTES: "gauge",
}

Stage = Literal[
    "fetch", "preprocess", "queue_wait", "prefill", "decode_tokens", "parse",
    "persist_enqueue", "total",
]  # fmt: skip

# Why each layout: the range each stage really takes, with resolution where decisions are made.
# CPU work in worker threads, all images of a request (decode, tile) or one output (parse).
_FAST_CPU = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Network: tens of ms normally; up to the 20 s download timeout times retries.
_FETCH = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0)
# Zero when idle; grows with load up to the request timeout.
_QUEUE = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
    120.0, 300.0,
)  # fmt: skip
# One batched forward pass over prompt + image tokens: 10 ms (GPU) to ~10 s (CPU).
_PREFILL = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
# Token generation and the whole inspection: dense between 5 and 30 s around the 20 s objective
# (the same layout as the gRPC handling histogram).
_LONG = (
    0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 12.5, 15.0, 17.5, 20.0, 25.0, 30.0, 45.0,
    60.0, 120.0, 300.0,
)  # fmt: skip
# Handing an event to the spool: sub-millisecond unless the disk stalls.
_ENQUEUE = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_TTFT = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 30.0, 60.0)

STAGE_BUCKETS: Final[dict[str, tuple[float, ...]]] = {
    "fetch": _FETCH,
    # Decode + EXIF + tiling + normalisation of one request's images (they overlap per image).
    "preprocess": _FAST_CPU,
    "queue_wait": _QUEUE,
    "prefill": _PREFILL,
    "decode_tokens": _LONG,
    "parse": _FAST_CPU,
    "persist_enqueue": _ENQUEUE,
    "total": _LONG,
}
STAGES: Final = tuple(STAGE_BUCKETS)

DECISIONS: Final = ("PICK", "NOT_PICK", "RETAKE_IMAGES", "NEEDS_REVIEW")
# Reason codes of the decision policy (inference_svc.domain.models.ReasonCode).
POLICY_REASON_CODES: Final = (
    "MODEL_RECOMMENDATION", "FORCED_PICK", "MANDATORY_QUESTION_FAILED", "QUESTION_CONFIDENCE_LOW",
    "OVERALL_CONFIDENCE_LOW", "IMAGE_BLURRY", "IMAGE_UNDEREXPOSED", "IMAGE_OVEREXPOSED",
    "IMAGE_LOW_RESOLUTION", "CATALOGUE_PHOTO", "REUSED_PHOTO", "REUSE_CHECK_SKIPPED",
)  # fmt: skip
# Variance of the Laplacian of a 448x448 overview; the default blur limit is 15.
_SHARPNESS_BUCKETS = (2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 50.0, 75.0, 100.0, 200.0, 500.0)
_LUMA_BUCKETS = (16.0, 32.0, 45.0, 64.0, 96.0, 128.0, 160.0, 192.0, 215.0, 239.0)
# Fine-grained causes behind IMAGE_SOURCE_UNAVAILABLE (timeout, connection, dns, tls, http_5xx,
# throttled) and IMAGE_FETCH_FAILED / IMAGE_TOO_LARGE / IMAGE_URL_FORBIDDEN (the rest).
FETCH_ERROR_REASONS: Final = (
    "timeout", "connection", "dns", "tls", "http_4xx", "http_5xx", "too_large", "forbidden",
    "redirect", "invalid_url", "throttled",
)  # fmt: skip
# Requests refused before any work (invalid input shows as grpc_code="InvalidArgument").
REJECT_REASONS: Final = ("OVERLOADED", "EVENT_SPOOL_FULL", "DRAINING", "MODEL_NOT_READY")
IMAGE_ROLES: Final = ("reference", "pickup")

_IMAGE_BYTES_BUCKETS = tuple(float(16 * 1024 * 2**k) for k in range(11))  # 16 KiB .. 16 MiB


class InferenceMetrics:
    """Holds the metrics on ``registry``. Create once per process (per registry).

    Attributes are the prometheus-client objects, for direct use (``.inc()``, ``.set()``,
    ``.observe()``); the methods guard label values that come from outside the code.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        max_batch_size: int = 64,
        policy_names: Collection[str] = (),
    ) -> None:
        """``policy_names``: vendor policies whose outcome and reason series are created at
        once (the default policy's name), so policy panels show zeros from the start."""
        self.registry = registry
        self.stage_seconds = PerLabelBucketHistogram(
            STAGE_SECONDS,
            "Time spent in each stage of an inspection, in seconds.",
            "stage",
            STAGE_BUCKETS,
            registry,
        )
        self.batch_size = Histogram(
            BATCH_SIZE,
            "Requests per model generate call.",
            buckets=_batch_buckets(max_batch_size),
            registry=registry,
        )
        self.queue_depth = Gauge(QUEUE_DEPTH, "Requests waiting for the model.", registry=registry)
        self.queue_capacity = Gauge(
            QUEUE_CAPACITY, "Requests that may wait for the model before new ones are refused.",
            registry=registry,
        )  # fmt: skip
        self.inflight_requests = Gauge(
            INFLIGHT_REQUESTS, "Inspections being processed.", registry=registry
        )
        self.inflight_limit = Gauge(
            INFLIGHT_LIMIT, "Inspections processed at once before new ones are refused.",
            registry=registry,
        )  # fmt: skip
        self.generated_tokens = Counter(
            GENERATED_TOKENS_TOTAL, "Tokens generated by the model.", registry=registry
        )
        self.prompt_tokens = Counter(
            PROMPT_TOKENS_TOTAL, "Prompt tokens (text and image) fed to the model.",
            registry=registry,
        )  # fmt: skip
        self.time_to_first_token = Histogram(
            TIME_TO_FIRST_TOKEN_SECONDS,
            "Time from an inspection's arrival to its first generated token, in seconds.",
            buckets=_TTFT,
            registry=registry,
        )
        self.output_retries = Counter(
            OUTPUT_RETRIES_TOTAL,
            "Generations repeated because the model output failed validation.",
            registry=registry,
        )
        self.decisions = Counter(
            DECISIONS_TOTAL, "Inspections answered, by decision.", ["decision"],
            registry=registry,
        )  # fmt: skip
        # ``vendor`` is the deciding policy's name: a vendor named in the policy file or
        # "default", so its values are bounded by that file.
        self.policy_outcomes = Counter(
            POLICY_OUTCOMES_TOTAL, "Inspections decided, by vendor policy and outcome.",
            ["vendor", "outcome"], registry=registry,
        )  # fmt: skip
        self.policy_reasons = Counter(
            POLICY_REASONS_TOTAL,
            "Reasons given with decisions, by vendor policy, code and whether decisive.",
            ["vendor", "code", "decisive"], registry=registry,
        )  # fmt: skip
        self.image_sharpness = Histogram(
            IMAGE_SHARPNESS, "Quality gate: sharpness of each image measured.", ["role"],
            buckets=_SHARPNESS_BUCKETS, registry=registry,
        )  # fmt: skip
        self.image_mean_luma = Histogram(
            IMAGE_MEAN_LUMA, "Quality gate: mean luma (0-255) of each image measured.", ["role"],
            buckets=_LUMA_BUCKETS, registry=registry,
        )  # fmt: skip
        self.policy_reload_failed = Gauge(
            POLICY_RELOAD_FAILED,
            "1 while the policy file in place failed to load (the last good policy decides).",
            registry=registry,
        )
        self.policy_reload_failures = Counter(
            POLICY_RELOAD_FAILURES_TOTAL, "Policy file reloads that failed.", registry=registry
        )
        self.image_fetch_errors = Counter(
            IMAGE_FETCH_ERRORS_TOTAL, "Image downloads that failed, by reason.", ["reason"],
            registry=registry,
        )  # fmt: skip
        self.image_bytes = Histogram(
            IMAGE_BYTES,
            "Size of the encoded images received or downloaded, in bytes.",
            ["role"],
            buckets=_IMAGE_BYTES_BUCKETS,
            registry=registry,
        )
        self.requests_rejected = Counter(
            REQUESTS_REJECTED_TOTAL, "Inspections refused before any work, by reason.",
            ["reason"], registry=registry,
        )  # fmt: skip
        self.event_backlog = Gauge(
            EVENT_BACKLOG, "Persistence events spooled and not yet delivered.",
            registry=registry,
        )  # fmt: skip
        self.event_spool_bytes = Gauge(
            EVENT_SPOOL_BYTES, "Size of the event spool on disk, in bytes.", registry=registry
        )
        self.event_oldest_age_seconds = Gauge(
            EVENT_OLDEST_AGE_SECONDS,
            "Age of the oldest undelivered persistence event, in seconds (0 when none).",
            registry=registry,
        )
        self.event_delivery_attempts = Counter(
            EVENT_DELIVERY_ATTEMPTS_TOTAL, "RecordEvents calls made to the persistence service.",
            registry=registry,
        )  # fmt: skip
        self.event_delivery_failures = Counter(
            EVENT_DELIVERY_FAILURES_TOTAL,
            "RecordEvents calls that failed (they are retried), by gRPC code.",
            ["grpc_code"],
            registry=registry,
        )
        self.events_delivered = Counter(
            EVENTS_DELIVERED_TOTAL, "Persistence events acknowledged by the persistence service.",
            registry=registry,
        )  # fmt: skip
        self.model_info = Info(
            MODEL_INFO.removesuffix("_info"),
            "The served model.",
            registry=registry,
        )
        self.model_ready = Gauge(
            MODEL_READY, "1 when the model is loaded and serving, else 0.", registry=registry
        )
        # Pre-create the labelled series so that rate(), alerts and dashboard panels see zeros,
        # not absences ("No data" while healthy reads as a broken scrape).
        for decision in DECISIONS:
            self.decisions.labels(decision=decision)
        for reason in REJECT_REASONS:
            self.requests_rejected.labels(reason=reason)
        for reason in FETCH_ERROR_REASONS:
            self.image_fetch_errors.labels(reason=reason)
        for code in GO_CODE_NAMES.values():
            if code != "OK":
                self.event_delivery_failures.labels(grpc_code=code)
        for vendor in policy_names:
            for decision in DECISIONS:
                self.policy_outcomes.labels(vendor=vendor, outcome=decision)
            for code in POLICY_REASON_CODES:
                for decisive in ("true", "false"):
                    self.policy_reasons.labels(vendor=vendor, code=code, decisive=decisive)
        for role in IMAGE_ROLES:
            self.image_sharpness.labels(role=role)
            self.image_mean_luma.labels(role=role)
        self.vision_cache = VisionCacheCollector()
        registry.register(self.vision_cache)

    # --- stages
    def observe_stage(self, stage: Stage, seconds: float) -> None:
        self.stage_seconds.observe(stage, seconds)

    @contextmanager
    def time_stage(self, stage: Stage) -> Iterator[None]:
        """Times the block into ``stage`` (also when it raises)."""
        with self.stage_seconds.time(stage):
            yield

    # --- outcomes
    def record_decision(self, decision: str) -> None:
        """``decision``: "PICK" or "NOT_PICK" (the Decision enum's value)."""
        self.decisions.labels(decision=bounded(decision, DECISIONS)).inc()

    def record_policy_outcome(
        self, vendor: str, outcome: str, reasons: list[tuple[str, bool]]
    ) -> None:
        self.policy_outcomes.labels(vendor=vendor, outcome=bounded(outcome, DECISIONS)).inc()
        for code, decisive in reasons:
            self.policy_reasons.labels(
                vendor=vendor,
                code=bounded(code, POLICY_REASON_CODES),
                decisive="true" if decisive else "false",
            ).inc()

    def observe_image_quality(self, role: str, sharpness: float, mean_luma: float) -> None:
        self.image_sharpness.labels(role=bounded(role, IMAGE_ROLES)).observe(sharpness)
        self.image_mean_luma.labels(role=bounded(role, IMAGE_ROLES)).observe(mean_luma)

    def record_fetch_error(self, reason: str) -> None:
        """``reason``: one of FETCH_ERROR_REASONS; anything else is counted as "other"."""
        self.image_fetch_errors.labels(reason=bounded(reason, FETCH_ERROR_REASONS)).inc()

    def record_rejection(self, reason: str) -> None:
        """``reason``: one of REJECT_REASONS (errors.Reason values)."""
        self.requests_rejected.labels(reason=bounded(reason, REJECT_REASONS)).inc()

    def observe_image(self, role: str, size_bytes: int) -> None:
        self.image_bytes.labels(role=bounded(role, IMAGE_ROLES)).observe(size_bytes)

    # --- model
    def set_model_info(self, name: str, revision: str, device: str, dtype: str) -> None:
        self.model_info.info({"name": name, "revision": revision, "device": device, "dtype": dtype})

    def set_model_ready(self, ready: bool) -> None:
        self.model_ready.set(1 if ready else 0)

    # --- events
    def record_delivery_failure(self, error: BaseException | str) -> None:
        """A failed RecordEvents call, by gRPC code: pass the exception (an AioRpcError's
        code is used; a timeout counts as DeadlineExceeded, anything else as Unknown) or a
        code name (``"UNAVAILABLE"``). Stored Go-spelled like grpc_server_handled_total."""
        self.event_delivery_failures.labels(grpc_code=_delivery_code(error)).inc()


@dataclass(frozen=True)
class VisionCacheCounts:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes: int = 0


class VisionCacheCollector(Collector):
    """The engine's vision-feature cache counters, read when scraped (the engine counts them,
    in the engine process when there is one); zeros until :meth:`bind`."""

    def __init__(self) -> None:
        self._read: Callable[[], VisionCacheCounts] = VisionCacheCounts

    def bind(self, read: Callable[[], VisionCacheCounts]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        counts = self._read()
        lookups = CounterMetricFamily(
            VISION_CACHE_LOOKUPS_TOTAL,
            "Lookups of a reference image's vision features, by result (hit, miss).",
            labels=["result"],
        )
        lookups.add_metric(["hit"], counts.hits)
        lookups.add_metric(["miss"], counts.misses)
        yield lookups
        yield CounterMetricFamily(
            VISION_CACHE_EVICTIONS_TOTAL,
            "Vision features evicted from the cache to make room (least recently used).",
            value=counts.evictions,
        )
        yield GaugeMetricFamily(
            VISION_CACHE_BYTES, "Bytes of vision features the cache holds.", value=counts.bytes
        )


def _delivery_code(error: BaseException | str) -> str:
    if isinstance(error, str):
        name = error
    elif callable(code := getattr(error, "code", None)):
        # grpc.aio.AioRpcError, duck-typed: this module stays free of grpc.
        name = str(getattr(code(), "name", "UNKNOWN"))
    elif isinstance(error, TimeoutError):
        name = "DEADLINE_EXCEEDED"
    else:
        name = "UNKNOWN"
    return bounded(go_code_name(name), tuple(GO_CODE_NAMES.values()))


def _batch_buckets(max_batch_size: int) -> tuple[float, ...]:
    buckets = [1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0, 96.0, 128.0]
    kept = [b for b in buckets if b < max_batch_size]
    return (*kept, float(max_batch_size))
