"""Every setting of the persistence service, read once from the environment.

Each field's env var is its name in upper case (``DATABASE_URL``, ``DB_POOL_MAX``...). Each
field names its group and whether it is an advanced tuning knob (`svc_common.settings_fields`);
`python -m tools.config_table --write` turns them into the README summary and the full table in
docs/configuration.md.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from svc_common import service_settings
from svc_common.security_settings import ServerSecuritySettings
from svc_common.settings_fields import setting


class PersistenceSettings(ServerSecuritySettings, BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # --- server
    grpc_listen: str = setting(
        "0.0.0.0:50061",
        "gRPC listen address (host:port; port 0 picks a free port).",
        group="server",
    )
    drain_grace_s: float = service_settings.drain_grace_s(15.0)
    log_level: str = setting("INFO", "Log level.", group="server")
    writer_identities: str = setting(
        "",
        "Comma-separated client-certificate identities (SAN or CN) that may call RecordEvents; "
        "needs mutual TLS. Empty = any caller the policy allows.",
        group="security",
    )
    max_message_bytes: int = setting(
        64 * 1024 * 1024,
        "Largest gRPC message accepted or sent.",
        group="server",
        advanced=True,
        ge=1024,
    )

    # --- observability
    metrics_port: int = service_settings.metrics_port(9096)
    metrics_host: str = service_settings.metrics_host()

    # --- database
    database_url: str | None = setting(
        None,
        "Postgres DSN (postgresql://user:pass@host:port/db). Unset: an embedded PostgreSQL "
        "(pgserver) is started in EMBEDDED_PG_DIR.",
        group="database",
    )
    embedded_pg_dir: Path = setting(
        Path("var/pgdata"),
        "Data folder of the embedded PostgreSQL used when DATABASE_URL is unset.",
        group="database",
    )
    db_pool_min: int = setting(1, "Connections the pool keeps open.", group="database", ge=0)
    db_pool_max: int = setting(10, "Most connections the pool opens.", group="database", ge=1)
    db_command_timeout_s: float = setting(
        30.0,
        "Timeout of one SQL command (and of acquiring a connection).",
        group="database",
        advanced=True,
        gt=0,
    )
    db_connect_retry_max_s: float = setting(
        300.0,
        "At start, how long to keep retrying an unreachable database before giving up "
        "(health stays NOT_SERVING meanwhile).",
        group="database",
        advanced=True,
        ge=0,
    )
    db_transaction_retries: int = setting(
        2,
        "Retries of a transaction that lost its connection or hit a deadlock (safe: event "
        "recording is idempotent).",
        group="database",
        advanced=True,
        ge=0,
    )

    # --- API limits
    max_events_per_call: int = setting(
        500,
        "Most events one RecordEvents call may carry.",
        group="limits",
        advanced=True,
        ge=1,
    )
    list_default_page_size: int = setting(
        50, "ListInspections page size when the caller gives none.", group="limits", ge=1
    )
    list_max_page_size: int = setting(
        500, "Largest ListInspections page; larger requests are reduced.", group="limits", ge=1
    )

    # --- retention (docs/storage.md); 0 keeps data forever
    retention_attempt_payload_days: float = setting(
        0.0,
        "Days attempts keep their prompt and raw/parsed model output (the decision record "
        "stays); 0 = forever.",
        group="storage",
        advanced=True,
        ge=0,
    )
    retention_record_days: float = setting(
        0.0,
        "Days whole inspection records are kept; 0 = forever.",
        group="storage",
        advanced=True,
        ge=0,
    )
    retention_event_key_days: float = setting(
        0.0,
        "Days the idempotency keys of recorded events are kept (a redelivery older than that "
        "would be applied again); 0 = forever.",
        group="storage",
        advanced=True,
        ge=0,
    )
    retention_sweep_interval_s: float = setting(
        3600.0, "Time between retention sweeps.", group="storage", advanced=True, gt=0
    )
    retention_batch_size: int = setting(
        500, "Rows one retention batch removes at most.", group="storage", advanced=True, ge=1
    )

    # --- asynchronous inspections (docs/operations-async.md)
    max_job_attempts: int = setting(
        3,
        "Runs an asynchronous inspection gets (a lost replica or a retryable failure starts "
        "another) before it ends failed with the last error.",
        group="async jobs",
        advanced=True,
        ge=1,
    )
    job_retention_s: float = setting(
        7 * 86400.0,
        "How long a finished asynchronous inspection stays readable before the sweep deletes "
        "it (its inspection record stays).",
        group="async jobs",
        advanced=True,
        gt=0,
    )
    webhook_retry_schedule_s: list[float] = setting(
        description="Delays before each retry of a failed webhook delivery, JSON list of "
        "seconds; once spent the delivery is dead-lettered. Default: 5 s, 5 min, 30 min, 2 h, "
        "5 h, 10 h, 10 h (eight attempts over about 28 h).",
        group="async jobs",
        advanced=True,
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0],
    )
    job_sweep_interval_s: float = setting(
        10.0,
        "How often expired leases are ended, expired jobs deleted and the queue gauges updated.",
        group="async jobs",
        advanced=True,
        gt=0,
    )

    @model_validator(mode="after")
    def _check_ranges(self) -> PersistenceSettings:
        if self.db_pool_min > self.db_pool_max:
            raise ValueError("DB_POOL_MIN must not exceed DB_POOL_MAX")
        if self.list_default_page_size > self.list_max_page_size:
            raise ValueError("LIST_DEFAULT_PAGE_SIZE must not exceed LIST_MAX_PAGE_SIZE")
        return self

    @property
    def writer_identity_list(self) -> tuple[str, ...]:
        return tuple(n.strip() for n in self.writer_identities.split(",") if n.strip())
