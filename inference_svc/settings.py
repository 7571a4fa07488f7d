"""Every setting of the inference service, read once from the environment.

Each field's env var is its name in upper case (``MODEL_PATH``, ``MAX_QUEUE_SIZE``...). Each
field names its group and whether it is an advanced tuning knob (`svc_common.settings_fields`);
`python -m tools.config_table --write` turns them into the README summary and the full table in
docs/configuration.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

from inference_svc import defaults
from inference_svc.intake_settings import ImageIntakeSettings, ObjectStorageSettings
from svc_common import service_settings
from svc_common.security_settings import ServerSecuritySettings
from svc_common.settings_fields import setting


class InferenceSettings(
    ServerSecuritySettings, ImageIntakeSettings, ObjectStorageSettings, BaseSettings
):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # --- server
    grpc_listen: str = setting("0.0.0.0:50051", "gRPC listen address.", group="server")
    max_concurrent_requests: int = setting(
        32,
        "Inspections processed at once; more are rejected OVERLOADED.",
        group="server",
        ge=1,
    )
    request_timeout_s: float = setting(
        300.0,
        "Upper bound on one inspection, whatever the client deadline.",
        group="server",
        gt=0,
    )
    drain_prestop_s: float = setting(
        5.0,
        "On SIGTERM: how long readiness shows NOT_SERVING and new inspections are refused "
        "DRAINING before the server stops listening (liveness stays SERVING).",
        group="server",
        advanced=True,
        ge=0,
    )
    drain_grace_s: float = service_settings.drain_grace_s(30.0)
    max_message_bytes: int = setting(
        256 * 1024 * 1024,
        "Largest gRPC message accepted (inline images).",
        group="server",
        advanced=True,
    )
    log_level: str = setting("INFO", "Log level (JSON lines on stderr).", group="server")

    # --- observability
    metrics_port: int = service_settings.metrics_port(9095)
    metrics_host: str = service_settings.metrics_host()

    # --- request limits
    max_reference_images: int = setting(10, "Reference images per request.", group="limits", ge=1)
    max_pickup_images: int = setting(10, "Pickup images per request.", group="limits", ge=1)
    max_questions: int = setting(50, "Questions per request.", group="limits", ge=1)
    max_text_length: int = setting(
        1000, "Longest id, name, label or value.", group="limits", advanced=True, ge=1
    )
    max_legacy_questions_bytes: int = setting(
        65536, "Longest legacy question JSON string.", group="limits", advanced=True, ge=1
    )

    # --- model, prompt and output
    model_path: Path | None = setting(
        None,
        "Model directory. Unset: a small untrained model is built locally.",
        group="model",
    )
    model_layout: Literal["auto", "native", "original"] = setting(
        "auto",
        "Checkpoint layout: transformers-native or original OpenGVLab.",
        group="model",
        advanced=True,
    )
    model_trust_remote_code: bool = setting(
        False,
        "Run the checkpoint's own Python code (original layout only). Off: the original "
        "layout is converted to transformers' native InternVL at load time.",
        group="model",
    )
    system_message: str = setting(
        defaults.INTERNVL25_SYSTEM_MESSAGE,
        "Chat system message; must match what the served model was trained with (empty = none).",
        group="model",
        advanced=True,
    )
    model_cache_dir: Path = setting(
        Path("var/models"),
        "Where the locally built demo model is cached.",
        group="model",
        advanced=True,
    )
    model_revision: str = setting("", "Revision label recorded with every result.", group="model")
    device: str = setting("auto", "auto | cpu | cuda | cuda:N.", group="model")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = setting(
        "auto", "auto: bf16 on CUDA, float32 on CPU.", group="model", advanced=True
    )
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = setting(
        "auto",
        "auto: flash-attention 2 when installed on CUDA, else SDPA.",
        group="model",
        advanced=True,
    )
    prompt_template_path: Path | None = setting(
        None,
        "Jinja2 prompt template; unset = the bundled versioned template.",
        group="model",
    )
    max_new_tokens: int = setting(
        defaults.MAX_NEW_TOKENS, "Generation budget per attempt.", group="model", ge=1
    )
    constrained_decoding: bool = setting(
        True, "Force schema-valid JSON output with llguidance.", group="model", advanced=True
    )
    max_output_retries: int = setting(
        1, "Retries on invalid model output.", group="model", advanced=True, ge=0
    )

    # --- engine
    engine_process: bool = setting(
        defaults.ENGINE_PROCESS,
        "Run the model engine in its own process (no interpreter-lock contention with gRPC "
        "and preprocessing).",
        group="engine",
        advanced=True,
    )
    pixel_buffer_mb: int = setting(
        defaults.PIXEL_BUFFER_MB,
        "ENGINE_PROCESS: MiB of shared memory (anonymous, not /dev/shm) that carries request "
        "tiles to the engine process; requests that find none free are pickled through the "
        "pipe; 0 = always pickle.",
        group="engine",
        advanced=True,
        ge=0,
    )
    vision_cache_bytes: int = setting(
        defaults.VISION_CACHE_BYTES,
        "Bytes of vision features (on the model's device) the engine keeps for repeated "
        "reference images, least recently used evicted first; a cached image skips decode, "
        "tiling and the vision tower; 0 = off.",
        group="engine",
        advanced=True,
        ge=0,
    )
    max_batch_size: int = setting(
        defaults.MAX_BATCH_SIZE, "Most rows generating at once.", group="engine", ge=1
    )
    max_queue_size: int = setting(
        defaults.MAX_QUEUE_SIZE, "Requests waiting for the model.", group="engine", ge=1
    )
    torch_compile: bool = setting(
        False,
        "torch.compile the continuous engine's decode step (CPU and CUDA; the warm-up "
        "compiles it) and, on CUDA, the language model's forward (request-level generate and "
        "prefills).",
        group="engine",
        advanced=True,
    )
    torch_threads: int = setting(
        0,
        "torch intra-op threads for the model; 0 = torch's default.",
        group="engine",
        advanced=True,
        ge=0,
    )
    prefill_overlap: Literal["auto", "on", "off"] = setting(
        "auto",
        "Continuous engine: run prefills (vision tower and prompt) on a second model thread "
        "beside the decode steps, so a new request does not stall the running batch; auto = "
        "on for CPU, off for CUDA.",
        group="engine",
        advanced=True,
    )
    grammar_overlap: bool = setting(
        True,
        "Continuous engine with constrained decoding: compute each step's grammar masks on a "
        "helper thread while the step runs, instead of after it (steps with one constrained "
        "row compute its mask after the step either way).",
        group="engine",
        advanced=True,
    )

    policy_file: Path | None = setting(
        None,
        "Decision policy YAML per vendor (docs/policy.md), reloaded when it changes; unset = "
        "today's rules for every vendor.",
        group="model",
        advanced=True,
    )

    # --- events (the link to persistence_svc)
    persistence_target: str = setting(
        "127.0.0.1:50061",
        "persistence_svc gRPC address; empty = do not record.",
        group="events",
    )
    persistence_tls_ca_file: Path | None = setting(
        None,
        "CA of the persistence service's certificate; turns TLS on for the link.",
        group="events",
    )
    persistence_tls_cert_file: Path | None = setting(
        None,
        "This service's client certificate towards persistence (mutual TLS).",
        group="events",
    )
    persistence_tls_key_file: Path | None = setting(
        None, "Private key of PERSISTENCE_TLS_CERT_FILE.", group="events"
    )
    event_spool_dir: Path = setting(Path("var/spool"), "Durable event spool.", group="events")
    event_spool_max_bytes: int = setting(
        1024 * 1024 * 1024,
        "Spool bound; beyond it new inspections are refused.",
        group="events",
    )
    event_batch_size: int = setting(
        64, "Events per RecordEvents call.", group="events", advanced=True, ge=1
    )
    event_send_timeout_s: float = setting(
        10.0, "Deadline per RecordEvents.", group="events", advanced=True, gt=0
    )
    event_retry_max_backoff_s: float = setting(
        30.0, "Longest retry backoff.", group="events", advanced=True, gt=0
    )

    # --- asynchronous inspections (docs/operations-async.md)
    async_jobs: bool = setting(
        True,
        "Run queued asynchronous inspections here (SubmitInspection and the Operations service "
        "are served whenever PERSISTENCE_TARGET is set).",
        group="async jobs",
        advanced=True,
    )
    max_async_inspections: int = setting(
        0,
        "Most asynchronous inspections this replica runs at once; 0 = MAX_BATCH_SIZE. They are "
        "claimed only while the engine has a free row, so synchronous calls keep priority.",
        group="async jobs",
        advanced=True,
        ge=0,
    )
    job_lease_s: float = setting(
        30.0,
        "Lease of a claimed job: another replica runs it again this long after this one stops "
        "renewing (it renews every JOB_POLL_INTERVAL_S).",
        group="async jobs",
        advanced=True,
        ge=1,
        le=3600,
    )
    webhook_secrets_file: Path | None = setting(
        None,
        "YAML file of webhook signing secrets (whsec_...): 'default' for every caller and "
        "'callers' per calling identity, each one secret or a list (rotation). Unset: "
        "SubmitInspection refuses callbacks.",
        group="async jobs",
        advanced=True,
    )
    webhook_timeout_s: float = setting(
        15.0, "Timeout of one webhook POST.", group="async jobs", advanced=True, gt=0
    )
    job_poll_interval_s: float = setting(
        0.5,
        "How often the worker claims, renews its leases and learns of cancels.",
        group="async jobs",
        advanced=True,
        gt=0,
    )
