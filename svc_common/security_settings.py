"""The security settings both services read, declared once (docs/security.md explains them).

Each service's settings class lists this among its bases, so ``TLS_CERT_FILE`` means the same
thing, with the same default and documentation, in both.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from svc_common.settings_fields import setting


class ServerSecuritySettings(BaseModel):
    tls_cert_file: Path | None = setting(
        None,
        "Server certificate (PEM); with TLS_KEY_FILE turns TLS on. Re-read when it changes.",
        group="security",
    )
    tls_key_file: Path | None = setting(
        None, "Private key of TLS_CERT_FILE (PEM).", group="security"
    )
    tls_client_ca_file: Path | None = setting(
        None,
        "Require client certificates signed by this CA (mutual TLS).",
        group="security",
    )
    auth_tokens_file: Path | None = setting(
        None,
        "API keys: YAML of caller -> salted SHA-256 (tools.new_api_key). Re-read on change.",
        group="security",
    )
    auth_jwks_file: Path | None = setting(
        None, "JWT callers: JWKS file of the signing keys. Re-read on change.", group="security"
    )
    auth_jwt_issuer: str = setting(
        "", "Required `iss` of JWTs (with AUTH_JWKS_FILE).", group="security", advanced=True
    )
    auth_jwt_audience: str = setting(
        "", "Required `aud` of JWTs (with AUTH_JWKS_FILE).", group="security", advanced=True
    )
    auth_jwt_leeway_s: float = setting(
        30.0, "Clock skew tolerated on JWT exp/nbf.", group="security", advanced=True, ge=0
    )
    auth_policy_file: Path | None = setting(
        None,
        "Which methods each caller may call (YAML); unset = every authenticated caller, all.",
        group="security",
    )
    grpc_reflection: bool | None = setting(
        None,
        "Server reflection; unset = on only in plaintext mode without authentication.",
        group="security",
        advanced=True,
    )
    health_listen: str = setting(
        "",
        "Second, plaintext port serving only grpc.health.v1 (probes); empty = none.",
        group="security",
        advanced=True,
    )
