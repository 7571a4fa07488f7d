"""Every setting of the inference service, read once from the environment.

Each field's env var is its name in upper case (``MODEL_PATH``, ``MAX_QUEUE_SIZE``...). The
README's configuration table lists them with their defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from inference_svc import defaults


class InferenceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # --- serving
    grpc_listen: str = Field("0.0.0.0:50051", description="gRPC listen address.")
    metrics_port: int = Field(
        9095, description="Prometheus /metrics HTTP port (-1 = off, 0 = any free port)."
    )
    metrics_host: str = Field("0.0.0.0", description="Prometheus HTTP bind address.")  # noqa: S104
    max_concurrent_requests: int = Field(
        32, ge=1, description="Inspections processed at once; more are rejected OVERLOADED."
    )
    request_timeout_s: float = Field(
        300.0, gt=0, description="Upper bound on one inspection, whatever the client deadline."
    )
    drain_grace_s: float = Field(
        30.0, ge=0, description="On SIGTERM: how long in-flight calls may take to finish."
    )
    max_message_bytes: int = Field(
        256 * 1024 * 1024, description="Largest gRPC message accepted (inline images)."
    )
    log_level: str = Field("INFO", description="Log level (JSON lines on stderr).")

    # --- request limits
    max_reference_images: int = Field(10, ge=1, description="Reference images per request.")
    max_pickup_images: int = Field(10, ge=1, description="Pickup images per request.")
    max_questions: int = Field(50, ge=1, description="Questions per request.")
    max_text_length: int = Field(1000, ge=1, description="Longest id, name, label or value.")
    max_legacy_questions_bytes: int = Field(
        65536, ge=1, description="Longest legacy question JSON string."
    )

    # --- image intake
    max_image_bytes: int = Field(10 * 1024 * 1024, description="Largest image (fetched/inline).")
    max_image_pixels: int = Field(
        64_000_000, description="Decompression-bomb guard: largest decoded image, in pixels."
    )
    allow_http: bool = Field(False, description="Accept http:// image URLs (https always).")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Image URL host allowlist; empty = any public host. Entries may start "
        "with '*.' for subdomains.",
    )
    allow_private_addresses: bool = Field(
        False,
        description="Allow image URLs resolving to loopback/private addresses (tests only).",
    )
    allowed_networks: list[str] = Field(
        default_factory=list,
        description="Non-public networks image URLs may resolve to, JSON list of CIDRs, e.g. "
        '["127.0.0.1/32"] for a local test server. Narrower than ALLOW_PRIVATE_ADDRESSES.',
    )
    follow_redirects: bool = Field(False, description="Follow redirects, re-checking each hop.")
    max_redirects: int = Field(3, ge=0, description="Redirect hops when following redirects.")
    fetch_connect_timeout_s: float = Field(5.0, gt=0, description="Image connect timeout.")
    fetch_timeout_s: float = Field(20.0, gt=0, description="Image download total timeout.")
    fetch_retries: int = Field(2, ge=0, description="Retries for transient fetch failures.")
    fetch_backoff_s: float = Field(0.2, ge=0, description="First retry backoff (doubles).")
    fetch_concurrency: int = Field(16, ge=1, description="Concurrent image downloads.")
    host_rewrites: dict[str, str] = Field(
        default_factory=dict,
        description='Reference image host rewrite, JSON: {"bucket.s3.amazonaws.com": '
        '"cdn.example.com"}.',
    )
    reference_max_tiles: int = Field(1, ge=1, description="Tiles per reference image.")
    pickup_max_tiles: int = Field(2, ge=1, description="Tiles per pickup image.")
    image_resize: Literal["torch", "pillow"] = Field(
        "torch",
        description="Resize filter for tiles: torch's antialiased bicubic on uint8 (~5x "
        "faster, within 3 levels of 255 of Pillow's) or Pillow's own, which the published "
        "InternVL pipeline uses (bit-identical tiles where no JPEG draft applies).",
    )
    preprocess_threads: int = Field(
        4, ge=1, description="Threads for decode, tiling and output parsing."
    )
    preprocess_processes: int = Field(
        0,
        ge=0,
        description="Decode and tile in this many worker processes instead of threads, so "
        "big photos never contend with the event loop for the interpreter lock (0 = threads).",
    )
    worker_nice: int = Field(
        defaults.WORKER_NICE,
        ge=0,
        le=19,
        description="Niceness added to the decode/tiling workers (threads or processes) and "
        "to the engine process, so on a busy node the event loop (every call's latency, "
        "health checks) gets the CPU first; 0 = all at the server's priority.",
    )

    # --- model
    model_path: Path | None = Field(
        None, description="Model directory. Unset: a small untrained model is built locally."
    )
    model_layout: Literal["auto", "native", "original"] = Field(
        "auto", description="Checkpoint layout: transformers-native or original OpenGVLab."
    )
    model_trust_remote_code: bool = Field(
        False,
        description="Run the checkpoint's own Python code (original layout only). Off: the "
        "original layout is converted to transformers' native InternVL at load time.",
    )
    system_message: str = Field(
        defaults.INTERNVL25_SYSTEM_MESSAGE,
        description="Chat system message; must match what the served model was trained with "
        "(empty = none).",
    )
    model_cache_dir: Path = Field(
        Path("var/models"), description="Where the locally built demo model is cached."
    )
    model_revision: str = Field("", description="Revision label recorded with every result.")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bf16 on CUDA, float32 on CPU."
    )
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = Field(
        "auto", description="auto: flash-attention 2 when installed on CUDA, else SDPA."
    )
    torch_compile: bool = Field(
        False,
        description="torch.compile the continuous engine's decode step (CPU and CUDA; the "
        "warm-up compiles it, ~30 s on CPU) and, on CUDA, the language model's forward "
        "(request-level generate and prefills).",
    )
    max_new_tokens: int = Field(
        defaults.MAX_NEW_TOKENS, ge=1, description="Generation budget per attempt."
    )
    constrained_decoding: bool = Field(
        True, description="Force schema-valid JSON output with llguidance."
    )
    engine_process: bool = Field(
        defaults.ENGINE_PROCESS,
        description="Run the model engine in its own process (no interpreter-lock contention "
        "with gRPC and preprocessing).",
    )
    pixel_buffer_mb: int = Field(
        defaults.PIXEL_BUFFER_MB,
        ge=0,
        description="ENGINE_PROCESS: MiB of shared memory (anonymous, not /dev/shm) that "
        "carries request tiles to the engine process; requests that find none free are "
        "pickled through the pipe; 0 = always pickle.",
    )
    max_batch_size: int = Field(
        defaults.MAX_BATCH_SIZE, ge=1, description="Most rows generating at once."
    )
    max_queue_size: int = Field(
        defaults.MAX_QUEUE_SIZE, ge=1, description="Requests waiting for the model."
    )
    prompt_template_path: Path | None = Field(
        None, description="Jinja2 prompt template; unset = the bundled versioned template."
    )
    max_evidence_chars: int = Field(
        300, ge=1, description="Constrained decoding: longest Evidence string per answer."
    )
    max_analysis_chars: int = Field(
        600, ge=1, description="Constrained decoding: longest image_analysis string."
    )
    max_result_chars: int = Field(
        120, ge=1, description="Constrained decoding: longest free-text Result."
    )
    max_output_retries: int = Field(1, ge=0, description="Retries on invalid model output.")
    torch_threads: int = Field(
        0, ge=0, description="torch intra-op threads for the model; 0 = torch's default."
    )
    prefill_overlap: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Continuous engine: run prefills (vision tower and prompt) on a second "
        "model thread beside the decode steps, so a new request does not stall the running "
        "batch; auto = on for CPU, off for CUDA.",
    )

    grammar_overlap: bool = Field(
        True,
        description="Continuous engine with constrained decoding: compute each step's "
        "grammar masks on a helper thread while the step runs, instead of after it (steps "
        "with one constrained row compute its mask after the step either way).",
    )

    # --- persistence link
    persistence_target: str = Field(
        "127.0.0.1:50061", description="persistence_svc gRPC address; empty = do not record."
    )
    event_spool_dir: Path = Field(Path("var/spool"), description="Durable event spool.")
    event_spool_max_bytes: int = Field(
        1024 * 1024 * 1024, description="Spool bound; beyond it new inspections are refused."
    )
    event_batch_size: int = Field(64, ge=1, description="Events per RecordEvents call.")
    event_send_timeout_s: float = Field(10.0, gt=0, description="Deadline per RecordEvents.")
    event_retry_max_backoff_s: float = Field(30.0, gt=0, description="Longest retry backoff.")
