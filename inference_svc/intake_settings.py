"""The inference service's image intake and object storage settings (docs/storage.md).

`InferenceSettings` lists both classes among its bases, as it does `ServerSecuritySettings`: the
fields are read from the environment with the rest, under the same env var names; they live
here only to keep the settings module readable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from inference_svc import defaults
from svc_common.settings_fields import setting


class ImageIntakeSettings(BaseModel):
    max_image_bytes: int = setting(
        10 * 1024 * 1024, "Largest image (fetched/inline).", group="image intake"
    )
    max_image_pixels: int = setting(
        64_000_000,
        "Decompression-bomb guard: largest decoded image, in pixels.",
        group="image intake",
        advanced=True,
    )
    max_request_pixels: int = setting(
        128_000_000,
        "Pixels one request's full-size decodes may take in all: PNG/WebP, and JPEG in "
        "PREPROCESS=exact (fast mode decodes JPEGs reduced; they do not count).",
        group="image intake",
        advanced=True,
        ge=1,
    )
    allow_http: bool = setting(
        False, "Accept http:// image URLs (https always).", group="image intake"
    )
    allowed_hosts: list[str] = setting(
        description="Image URL host allowlist; empty = any public host. Entries may start "
        "with '*.' for subdomains.",
        group="image intake",
        default_factory=list,
    )
    allow_private_addresses: bool = setting(
        False,
        "Allow image URLs resolving to loopback/private addresses (tests only).",
        group="image intake",
        advanced=True,
    )
    allowed_networks: list[str] = setting(
        description="Non-public networks image URLs may resolve to, JSON list of CIDRs, e.g. "
        '["127.0.0.1/32"] for a local test server; "127.0.0.1:8080" admits one port, a CIDR '
        "without one only the request URL's own port (not a redirect elsewhere). Narrower "
        "than ALLOW_PRIVATE_ADDRESSES.",
        group="image intake",
        advanced=True,
        default_factory=list,
    )
    follow_redirects: bool = setting(
        False, "Follow redirects, re-checking each hop.", group="image intake", advanced=True
    )
    max_redirects: int = setting(
        3, "Redirect hops when following redirects.", group="image intake", advanced=True, ge=0
    )
    fetch_connect_timeout_s: float = setting(
        5.0, "Image connect timeout.", group="image intake", advanced=True, gt=0
    )
    fetch_timeout_s: float = setting(
        20.0,
        "Image download deadline: all attempts, redirects and backoff together.",
        group="image intake",
        gt=0,
    )
    fetch_min_bytes_per_s: int = setting(
        16 * 1024,
        "Image downloads averaging less (after a 5 s grace) are abandoned at once; 0 = off.",
        group="image intake",
        advanced=True,
        ge=0,
    )
    fetch_retries: int = setting(
        2, "Retries for transient fetch failures.", group="image intake", advanced=True, ge=0
    )
    fetch_backoff_s: float = setting(
        0.2, "First retry backoff (doubles).", group="image intake", advanced=True, ge=0
    )
    fetch_concurrency: int = setting(
        16, "Concurrent image downloads.", group="image intake", advanced=True, ge=1
    )
    fetch_cache_bytes: int = setting(
        defaults.FETCH_CACHE_BYTES,
        "Bytes of reference-image downloads kept while their HTTP caching headers allow "
        "(max-age, Expires; revalidated with ETag/Last-Modified once stale); 0 = off.",
        group="image intake",
        advanced=True,
        ge=0,
    )
    host_rewrites: dict[str, str] = setting(
        description='Reference image host rewrite, JSON: {"bucket.s3.amazonaws.com": '
        '"cdn.example.com"}.',
        group="image intake",
        advanced=True,
        default_factory=dict,
    )
    host_rewrite_roles: list[Literal["reference", "pickup"]] = setting(
        description='Image roles HOST_REWRITES applies to, JSON: ["reference", "pickup"].',
        group="image intake",
        advanced=True,
        default_factory=lambda: ["reference"],
    )
    reference_max_tiles: int = setting(1, "Tiles per reference image.", group="image intake", ge=1)
    pickup_max_tiles: int = setting(2, "Tiles per pickup image.", group="image intake", ge=1)
    preprocess: Literal["exact", "fast"] = setting(
        "exact",
        "Tile pixels: exact = the published InternVL pipeline's, bit for bit (full decode, "
        "Pillow bicubic), what a fine-tune was trained on; fast = JPEG draft decode and "
        "torch's resize, cheaper, within a measured tolerance (docs/preprocessing.md).",
        group="image intake",
        advanced=True,
    )
    exif_transpose: Literal["auto", "on", "off"] = setting(
        "auto",
        "Turn photos upright by their EXIF orientation (auto: off in exact mode, as the "
        "published pipeline, on in fast mode).",
        group="image intake",
        advanced=True,
    )
    preprocess_threads: int = setting(
        4,
        "Threads for decode, tiling and output parsing.",
        group="image intake",
        advanced=True,
        ge=1,
    )
    preprocess_processes: int = setting(
        0,
        "Decode and tile in this many worker processes instead of threads, so big photos "
        "never contend with the event loop for the interpreter lock (0 = threads).",
        group="image intake",
        advanced=True,
        ge=0,
    )
    worker_nice: int = setting(
        defaults.WORKER_NICE,
        "Niceness added to the decode/tiling workers (threads or processes) and to the "
        "engine process, so on a busy node the event loop (every call's latency, health "
        "checks) gets the CPU first; 0 = all at the server's priority.",
        group="image intake",
        advanced=True,
        ge=0,
        le=19,
    )

    malloc_mmap_threshold_bytes: int = setting(
        1024 * 1024,
        "Allocations this large get their own memory mapping, unmapped when freed, and the "
        "heaps are trimmed after each image over 16 MP, so a request's decoded images go back "
        "to the OS when it ends (glibc; 0 = glibc's adaptive default and no trim, which keep "
        "them in the worker threads' heaps).",
        group="image intake",
        advanced=True,
        ge=0,
        le=32 * 1024 * 1024,
    )


class ObjectStorageSettings(BaseModel):
    allowed_buckets: list[str] = setting(
        description='Buckets s3:// gs:// az:// image URIs may read, JSON: ["s3://vendor-images", '
        '"az://pickups"]; empty = bucket URIs refused.',
        group="storage",
        advanced=True,
        default_factory=list,
    )
    storage_endpoints: dict[str, str] = setting(
        description='Endpoint per scheme for S3-compatible stores or emulators, JSON: {"s3": '
        '"https://minio.internal:9000"}; unset = the cloud\'s own.',
        group="storage",
        advanced=True,
        default_factory=dict,
    )
    storage_allow_http: bool = setting(
        False,
        "Allow plain http to STORAGE_ENDPOINTS (emulators on loopback only).",
        group="storage",
        advanced=True,
    )
    image_archive_uri: str = setting(
        "",
        "Evidence archive prefix, e.g. s3://evidence/images: every image kept once under its "
        "SHA-256; empty = off.",
        group="storage",
        advanced=True,
    )
    result_export_uri: str = setting(
        "",
        "Result export prefix: each inspection as JSON at <prefix>/<shipping_id>/"
        "<inspection_id>.json; empty = off.",
        group="storage",
        advanced=True,
    )
    allowed_export_buckets: list[str] = setting(
        description="Buckets a SubmitInspection's result_export_uri may write, JSON: "
        '["s3://partner-results"]; empty = per-request export refused.',
        group="storage",
        advanced=True,
        default_factory=list,
    )
    storage_spool_dir: Path = setting(
        Path("var/storage-spool"),
        "Durable queue of archive and export uploads not yet written.",
        group="storage",
        advanced=True,
    )
    storage_spool_max_bytes: int = setting(
        4 * 1024 * 1024 * 1024,
        "Upload queue bound; beyond it uploads are dropped and counted (records are kept).",
        group="storage",
        advanced=True,
        ge=1,
    )
