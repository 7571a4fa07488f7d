"""Who is calling, and may they call this method: API keys, JWTs, client certificates, and a
per-caller method policy. Nothing here imports grpc; `auth_interceptor.py` applies it to calls.

API keys are stored as a salted SHA-256 of the key, never the key: the keys are 32 random bytes,
so a slow password hash would add per-call cost without adding strength (there is nothing to
guess). Comparisons are constant-time. JWTs are verified with PyJWT against a JWKS file with an
explicit algorithm allow-list (so ``alg: none`` and HMAC-with-a-public-key confusions are
refused), issuer and audience required, and bounded clock skew.
"""

from __future__ import annotations

import contextvars
import fnmatch
import hashlib
import hmac
import json
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Generic, TypeVar

import jwt
import yaml

API_KEY_PREFIX = "rpi_"
JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA")


class AuthMethod(StrEnum):
    API_KEY = "api_key"
    JWT = "jwt"
    CERTIFICATE = "certificate"
    # Authentication is off (local plaintext set-up): every call is this caller.
    NONE = "none"


@dataclass(frozen=True)
class Caller:
    name: str
    method: AuthMethod
    # Every name a client certificate carries (SANs, then CN); the policy may grant any of them.
    aliases: tuple[str, ...] = ()

    def names(self) -> tuple[str, ...]:
        return (self.name, *(a for a in self.aliases if a != self.name))


ANONYMOUS = Caller("anonymous", AuthMethod.NONE)
_current: contextvars.ContextVar[Caller] = contextvars.ContextVar("rpi_caller", default=ANONYMOUS)


def current_caller() -> Caller:
    """The caller of the RPC being served (set by the auth interceptor for the call's task)."""
    return _current.get()


def set_current_caller(caller: Caller) -> contextvars.Token[Caller]:
    return _current.set(caller)


class AuthReason(StrEnum):
    MISSING_CREDENTIALS = "MISSING_CREDENTIALS"
    MALFORMED_CREDENTIALS = "MALFORMED_CREDENTIALS"
    INVALID_CREDENTIALS = "INVALID_CREDENTIALS"
    EXPIRED_CREDENTIALS = "EXPIRED_CREDENTIALS"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"


class AuthError(Exception):
    """A refused call. ``denied`` = authenticated but without the right (PERMISSION_DENIED);
    otherwise the credentials are missing or bad (UNAUTHENTICATED). Messages never contain
    the credential itself."""

    def __init__(self, reason: AuthReason, message: str, *, denied: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.denied = denied


T = TypeVar("T")


class _ReloadingFile(Generic[T]):
    """A parsed file that is re-read when its modification time or size changes (a mounted
    Kubernetes secret is replaced atomically by a symlink swap, which changes both)."""

    def __init__(self, path: Path, parse: Callable[[bytes], T]) -> None:
        self._path = path
        self._parse = parse
        self._lock = threading.Lock()
        self._seen = self._signature()
        self._value = parse(path.read_bytes())

    def _signature(self) -> tuple[int, int]:
        st = self._path.stat()
        return st.st_mtime_ns, st.st_size

    def get(self) -> T:
        try:
            seen = self._signature()
        except OSError:
            return self._value  # mid-swap: keep the last good contents
        if seen != self._seen:
            with self._lock:
                try:
                    self._value = self._parse(self._path.read_bytes())
                    self._seen = seen
                except (OSError, ValueError):
                    pass  # half-written: keep the last good contents, retry next call
        return self._value


def hash_api_key(key: str, salt: bytes) -> str:
    return hashlib.sha256(salt + key.encode()).hexdigest()


def new_api_key_entry(name: str) -> tuple[str, dict[str, Any]]:
    """A fresh key for ``name`` and the entry to add to the tokens file (the key is shown once)."""
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    return key, {name: {"salt": salt.hex(), "sha256": hash_api_key(key, salt)}}


@dataclass(frozen=True)
class _KeyEntry:
    name: str
    salt: bytes
    digest: bytes


def _parse_tokens(raw: bytes) -> tuple[_KeyEntry, ...]:
    data = yaml.safe_load(raw) or {}
    callers = data.get("callers", data) if isinstance(data, dict) else None
    if not isinstance(callers, dict):
        raise ValueError("tokens file: expected a mapping of caller name -> {salt, sha256}")
    entries = []
    for name, entry in callers.items():
        try:
            entries.append(
                _KeyEntry(str(name), bytes.fromhex(entry["salt"]), bytes.fromhex(entry["sha256"]))
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"tokens file: bad entry for caller {name!r}") from exc
    return tuple(entries)


class ApiKeys:
    """Static API keys from a mounted secret file (``AUTH_TOKENS_FILE``)."""

    def __init__(self, path: Path) -> None:
        self._file = _ReloadingFile(path, _parse_tokens)

    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self._file.get())

    def verify(self, key: str) -> Caller:
        match: str | None = None
        # Every entry is compared, so the time taken does not say which one matched.
        for entry in self._file.get():
            digest = hashlib.sha256(entry.salt + key.encode()).digest()
            if hmac.compare_digest(digest, entry.digest):
                match = entry.name
        if match is None:
            raise AuthError(AuthReason.INVALID_CREDENTIALS, "unknown API key")
        return Caller(match, AuthMethod.API_KEY)


def _parse_jwks(raw: bytes) -> jwt.PyJWKSet:
    try:
        return jwt.PyJWKSet.from_dict(json.loads(raw))
    except (json.JSONDecodeError, jwt.PyJWKError) as exc:
        raise ValueError("JWKS file is not a valid key set") from exc


@dataclass(frozen=True)
class JwtRules:
    issuer: str
    audience: str
    leeway_seconds: float = 30.0
    # The claim that names the caller (the policy's caller name).
    caller_claim: str = "sub"


class JwtVerifier:
    """JWTs signed by a key in a JWKS file (``AUTH_JWKS_FILE``)."""

    def __init__(self, jwks_file: Path, rules: JwtRules) -> None:
        self._keys = _ReloadingFile(jwks_file, _parse_jwks)
        self._rules = rules

    def verify(self, token: str) -> Caller:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as exc:
            raise AuthError(AuthReason.MALFORMED_CREDENTIALS, "malformed JWT") from exc
        if header.get("alg") not in JWT_ALGORITHMS:
            raise AuthError(AuthReason.INVALID_CREDENTIALS, "JWT algorithm not accepted")
        key = self._key_for(header)
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=list(JWT_ALGORITHMS),
                audience=self._rules.audience,
                issuer=self._rules.issuer,
                leeway=self._rules.leeway_seconds,
                options={"require": ["exp", "iss", "aud", self._rules.caller_claim]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError(AuthReason.EXPIRED_CREDENTIALS, "JWT expired") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthError(AuthReason.INVALID_CREDENTIALS, f"JWT rejected: {exc}") from exc
        return Caller(str(claims[self._rules.caller_claim]), AuthMethod.JWT)

    def _key_for(self, header: Mapping[str, Any]) -> jwt.PyJWK:
        keys = self._keys.get().keys
        kid = header.get("kid")
        candidates = [k for k in keys if kid is None or k.key_id == kid]
        if len(candidates) != 1:
            raise AuthError(AuthReason.INVALID_CREDENTIALS, "JWT signed by an unknown key")
        return candidates[0]


@dataclass(frozen=True)
class Policy:
    """Which methods each caller may call. Patterns are full method names
    (``/rpi.inspection.v1.InspectionService/Inspect``) or fnmatch globs (``*/Inspect*``)."""

    grants: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # For authenticated callers the policy does not name.
    default: tuple[str, ...] = ("*",)
    # Methods only callers granted them by name may call, whatever the default says.
    reserved: tuple[str, ...] = ()

    @classmethod
    def from_file(cls, path: Path, *, reserved: Sequence[str] = ()) -> Policy:
        data = yaml.safe_load(path.read_bytes()) or {}
        callers = data.get("callers", {})
        if not isinstance(callers, dict):
            raise ValueError(f"{path}: 'callers' must map caller names to method lists")
        grants = {str(k): tuple(str(m) for m in (v or ())) for k, v in callers.items()}
        default = tuple(str(m) for m in data.get("default", ()))
        return cls(grants, default, tuple(reserved))

    def with_grant(self, callers: Sequence[str], methods: Sequence[str]) -> Policy:
        grants = dict(self.grants)
        for name in callers:
            grants[name] = (*grants.get(name, ()), *methods)
        return Policy(grants, self.default, self.reserved)

    def allows(self, caller: str, method: str) -> bool:
        named = self.grants.get(caller)
        if named is not None and any(fnmatch.fnmatchcase(method, p) for p in named):
            return True
        if any(fnmatch.fnmatchcase(method, p) for p in self.reserved):
            return False
        return named is None and any(fnmatch.fnmatchcase(method, p) for p in self.default)

    def known_callers(self) -> frozenset[str]:
        return frozenset(self.grants)


@dataclass(frozen=True)
class Authenticator:
    """Turns a call's credentials into a Caller. A verified client certificate identifies the
    caller when no bearer token is sent (service-to-service mTLS); a token, when sent, wins."""

    api_keys: ApiKeys | None = None
    jwt: JwtVerifier | None = None
    trust_certificates: bool = False

    @property
    def enabled(self) -> bool:
        return self.api_keys is not None or self.jwt is not None or self.trust_certificates

    def authenticate(self, authorization: str | None, peer_identities: Sequence[str]) -> Caller:
        if authorization is None:
            if self.trust_certificates and peer_identities:
                return Caller(peer_identities[0], AuthMethod.CERTIFICATE, tuple(peer_identities))
            raise AuthError(AuthReason.MISSING_CREDENTIALS, "no credentials: send authorization")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError(
                AuthReason.MALFORMED_CREDENTIALS, "authorization must be 'Bearer <token>'"
            )
        if token.count(".") == 2 and self.jwt is not None:
            return self.jwt.verify(token)
        if self.api_keys is not None and token.startswith(API_KEY_PREFIX):
            return self.api_keys.verify(token)
        if token.count(".") == 2:
            raise AuthError(AuthReason.INVALID_CREDENTIALS, "JWTs are not accepted here")
        raise AuthError(AuthReason.MALFORMED_CREDENTIALS, "unrecognised bearer token")
