"""Every setting of the persistence service, read once from the environment.

Each field's env var is its name in upper case (``DATABASE_URL``, ``DB_POOL_MAX``...).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class PersistenceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # --- serving
    grpc_listen: str = Field(
        default="0.0.0.0:50061",
        description="gRPC listen address (host:port; port 0 picks a free port).",
    )
    metrics_port: int = Field(
        default=9096, description="Prometheus /metrics HTTP port (-1 = off, 0 = any free port)."
    )
    metrics_host: str = Field(default="0.0.0.0", description="Prometheus HTTP bind address.")  # noqa: S104
    drain_grace_s: float = Field(
        default=15.0, ge=0, description="On SIGTERM: how long in-flight calls may take to finish."
    )
    log_level: str = Field(default="INFO", description="Log level.")

    # --- database
    database_url: str | None = Field(
        default=None,
        description="Postgres DSN (postgresql://user:pass@host:port/db). Unset: an embedded "
        "PostgreSQL (pgserver) is started in EMBEDDED_PG_DIR.",
    )
    embedded_pg_dir: Path = Field(
        default=Path("var/pgdata"),
        description="Data folder of the embedded PostgreSQL used when DATABASE_URL is unset.",
    )
    db_pool_min: int = Field(default=1, ge=0, description="Connections the pool keeps open.")
    db_pool_max: int = Field(default=10, ge=1, description="Most connections the pool opens.")
    db_command_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Timeout of one SQL command (and of acquiring a connection).",
    )
    db_connect_retry_max_s: float = Field(
        default=300.0,
        ge=0,
        description="At start, how long to keep retrying an unreachable database before "
        "giving up (health stays NOT_SERVING meanwhile).",
    )
    db_transaction_retries: int = Field(
        default=2,
        ge=0,
        description="Retries of a transaction that lost its connection or hit a deadlock "
        "(safe: event recording is idempotent).",
    )

    # --- API limits
    max_events_per_call: int = Field(
        default=500, ge=1, description="Most events one RecordEvents call may carry."
    )
    list_default_page_size: int = Field(
        default=50, ge=1, description="ListInspections page size when the caller gives none."
    )
    list_max_page_size: int = Field(
        default=500, ge=1, description="Largest ListInspections page; larger requests are reduced."
    )
    max_message_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="Largest gRPC message accepted or sent."
    )

    @model_validator(mode="after")
    def _check_ranges(self) -> PersistenceSettings:
        if self.db_pool_min > self.db_pool_max:
            raise ValueError("DB_POOL_MIN must not exceed DB_POOL_MAX")
        if self.list_default_page_size > self.list_max_page_size:
            raise ValueError("LIST_DEFAULT_PAGE_SIZE must not exceed LIST_MAX_PAGE_SIZE")
        return self
