"""Real certificates (trustme) and real signing keys for the security tests (fixtures)."""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import trustme
from cryptography.hazmat.primitives.asymmetric import rsa


@dataclass(frozen=True)
class Leaf:
    cert: Path
    key: Path


@dataclass
class Pki:
    root: Path
    server_ca: trustme.CA
    client_ca: trustme.CA

    def write_ca(self, ca: trustme.CA, name: str) -> Path:
        path = self.root / f"{name}.pem"
        ca.cert_pem.write_to_path(str(path))
        return path

    def leaf(
        self,
        ca: trustme.CA,
        name: str,
        *identities: str,
        common_name: str | None = None,
        not_after: datetime.datetime | None = None,
    ) -> Leaf:
        kwargs: dict[str, Any] = {"common_name": common_name}
        if not_after is not None:
            kwargs["not_before"] = not_after - datetime.timedelta(days=30)
            kwargs["not_after"] = not_after
        cert = ca.issue_cert(*identities, **kwargs)
        leaf = Leaf(self.root / f"{name}.crt", self.root / f"{name}.key")
        cert.cert_chain_pems[0].write_to_path(str(leaf.cert))
        cert.private_key_pem.write_to_path(str(leaf.key))
        return leaf


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    root = tmp_path / "pki"
    root.mkdir()
    return Pki(root, trustme.CA(), trustme.CA())


@dataclass
class Signer:
    """An RSA key pair published in a JWKS file, and a way to mint tokens with it."""

    jwks_file: Path
    key: rsa.RSAPrivateKey
    kid: str
    issuer: str = "https://issuer.test"
    audience: str = "rpi-inspection"

    def token(self, claims: Mapping[str, Any] | None = None, **overrides: Any) -> str:
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": "returns-backend",
            "iat": now,
            "exp": now + 300,
        }
        body.update(claims or {})
        key = overrides.pop("key", self.key)
        headers = {"kid": overrides.pop("kid", self.kid)}
        return jwt.encode(body, key, algorithm="RS256", headers=headers)


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_signer(directory: Path) -> Signer:
    key = _rsa()
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "k1", "use": "sig", "alg": "RS256"})
    path = directory / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    return Signer(path, key, "k1")


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    return make_signer(tmp_path)


@pytest.fixture
def other_key() -> rsa.RSAPrivateKey:
    return _rsa()
