"""How a service's settings become its transport security and caller checks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from svc_common.auth import new_api_key_entry
from svc_common.security import SecurityConfigError, caller_label, server_security
from tests.support.pki import Pki

WRITE = "/rpi.persistence.v1.PersistenceService/RecordEvents"
READ = "/rpi.persistence.v1.PersistenceService/GetInspection"


@dataclass
class Settings:
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    auth_tokens_file: Path | None = None
    auth_jwks_file: Path | None = None
    auth_jwt_issuer: str = ""
    auth_jwt_audience: str = ""
    auth_jwt_leeway_s: float = 30.0
    auth_policy_file: Path | None = None
    grpc_reflection: bool | None = None
    health_listen: str = ""


def test_plaintext_without_auth_is_the_local_mode_with_reflection() -> None:
    security = server_security(Settings())
    assert security.tls is None
    assert not security.authenticator.enabled
    assert security.reflection


def test_reflection_is_off_by_default_once_anything_is_secured(pki: Pki) -> None:
    leaf = pki.leaf(pki.server_ca, "server", "localhost")
    assert not server_security(Settings(leaf.cert, leaf.key)).reflection
    assert server_security(Settings(leaf.cert, leaf.key, grpc_reflection=True)).reflection


def test_contradictory_settings_refuse_to_start(tmp_path: Path, pki: Pki) -> None:
    leaf = pki.leaf(pki.server_ca, "server", "localhost")
    with pytest.raises(SecurityConfigError, match="mutual TLS"):
        server_security(Settings(leaf.cert, leaf.key), certificate_callers=["inference"])
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')
    with pytest.raises(SecurityConfigError, match="AUTH_JWT_ISSUER"):
        server_security(Settings(auth_jwks_file=jwks))


def test_writer_identities_alone_may_call_the_reserved_write_method(
    pki: Pki, tmp_path: Path
) -> None:
    leaf = pki.leaf(pki.server_ca, "server", "localhost")
    ca = pki.write_ca(pki.client_ca, "client-ca")
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump({"callers": {"ops": [READ]}, "default": ["*"]}))
    security = server_security(
        Settings(leaf.cert, leaf.key, ca, auth_policy_file=policy_file),
        reserved_methods=[WRITE],
        certificate_callers=["inference.rpi.svc"],
        certificate_methods=[WRITE],
    )
    policy = security.policy
    assert security.authenticator.trust_certificates
    assert policy.allows("inference.rpi.svc", WRITE)
    assert not policy.allows("ops", WRITE)
    assert not policy.allows("someone-else", WRITE)  # the default "*" does not reach it
    assert policy.allows("someone-else", READ)
    assert policy.allows("ops", READ)


def test_metric_caller_label_is_bounded_to_configured_names(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    _, entry = new_api_key_entry("returns-backend")
    tokens.write_text(yaml.safe_dump({"callers": entry}))
    security = server_security(Settings(auth_tokens_file=tokens))
    known = security.known_callers()
    assert known == {"returns-backend"}
    assert caller_label("returns-backend", known) == "returns-backend"
    assert caller_label("jwt-subject-nobody-listed", known) == "other"
