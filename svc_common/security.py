"""A service's transport security and caller checks, built once from its settings.

Both services read the same setting names (``TLS_CERT_FILE``, ``AUTH_TOKENS_FILE``, ...); the
composition root hands its settings object here and gets back what it needs to bind the port
and intercept calls.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc
from grpc_health.v1 import health_pb2_grpc
from prometheus_client import CollectorRegistry, Counter

from svc_common.auth import ApiKeys, Authenticator, Caller, JwtRules, JwtVerifier, Policy
from svc_common.auth_interceptor import HEALTH_METHODS, REFLECTION_METHODS, AuthInterceptor
from svc_common.health import HealthServicer
from svc_common.tls import ServerTLS, server_credentials

log = logging.getLogger(__name__)


class SecuritySettings(Protocol):
    @property
    def tls_cert_file(self) -> Path | None: ...
    @property
    def tls_key_file(self) -> Path | None: ...
    @property
    def tls_client_ca_file(self) -> Path | None: ...
    @property
    def auth_tokens_file(self) -> Path | None: ...
    @property
    def auth_jwks_file(self) -> Path | None: ...
    @property
    def auth_jwt_issuer(self) -> str: ...
    @property
    def auth_jwt_audience(self) -> str: ...
    @property
    def auth_jwt_leeway_s(self) -> float: ...
    @property
    def auth_policy_file(self) -> Path | None: ...
    @property
    def grpc_reflection(self) -> bool | None: ...
    @property
    def health_listen(self) -> str: ...


class SecurityConfigError(ValueError):
    """The security settings contradict each other; the service refuses to start."""


AUTH_REFUSED_TOTAL = "rpi_auth_refused_total"
AUTH_ACCEPTED_TOTAL = "rpi_auth_accepted_total"
OTHER_CALLER = "other"


class AuthMetrics:
    """Refusals by method and reason; accepted calls by caller. The caller label is bounded to
    the names the policy, tokens file and writer identities know; any other name (a JWT subject
    nobody listed) counts as ``other``."""

    def __init__(self, registry: CollectorRegistry, known_callers: frozenset[str]) -> None:
        self._known = known_callers
        self.refused = Counter(
            AUTH_REFUSED_TOTAL,
            "Calls refused by authentication or authorisation, by method and reason.",
            ["method", "reason"],
            registry=registry,
        )
        self.accepted = Counter(
            AUTH_ACCEPTED_TOTAL,
            "Calls admitted, by caller (bounded to configured callers).",
            ["caller"],
            registry=registry,
        )

    def on_refused(self, method: str, reason: str) -> None:
        self.refused.labels(method, reason).inc()

    def on_admitted(self, caller: Caller) -> None:
        self.accepted.labels(caller_label(caller.name, self._known)).inc()


def caller_label(name: str, known: frozenset[str]) -> str:
    return name if name in known or name == "anonymous" else OTHER_CALLER


@dataclass(frozen=True)
class ServerSecurity:
    tls: ServerTLS | None
    authenticator: Authenticator
    policy: Policy
    reflection: bool
    health_listen: str

    def known_callers(self) -> frozenset[str]:
        names = set(self.policy.known_callers())
        if self.authenticator.api_keys is not None:
            names.update(self.authenticator.api_keys.names())
        return frozenset(names)

    def interceptor(self, domain: str, metrics: AuthMetrics | None = None) -> AuthInterceptor:
        open_methods: Sequence[str] = HEALTH_METHODS
        if self.reflection:
            open_methods = (*HEALTH_METHODS, *REFLECTION_METHODS)
        return AuthInterceptor(
            self.authenticator,
            self.policy,
            domain=domain,
            open_methods=open_methods,
            on_refused=metrics.on_refused if metrics else None,
            on_admitted=metrics.on_admitted if metrics else None,
        )

    def bind(self, server: grpc.aio.Server, listen: str, service: str) -> int:
        """Adds the listening port (TLS when configured) and says at start which it is."""
        if self.tls is None:
            log.warning(
                "%s listens in plaintext on %s: for the local embedded set-up only; "
                "set TLS_CERT_FILE and TLS_KEY_FILE in any shared environment",
                service,
                listen,
            )
            return server.add_insecure_port(listen)
        mode = "mutual TLS" if self.tls.client_ca_file else "TLS"
        log.info("%s listens with %s on %s", service, mode, listen)
        return server.add_secure_port(listen, server_credentials(self.tls))

    def describe(self) -> dict[str, object]:
        """What the start-up log says about security (no secrets, only which are on)."""
        return {
            "tls": self.tls is not None,
            "mtls": bool(self.tls and self.tls.client_ca_file),
            "api_keys": self.authenticator.api_keys is not None,
            "jwt": self.authenticator.jwt is not None,
            "certificate_callers": self.authenticator.trust_certificates,
            "reflection": self.reflection,
        }


def server_security(
    settings: SecuritySettings,
    *,
    reserved_methods: Sequence[str] = (),
    certificate_callers: Sequence[str] = (),
    certificate_methods: Sequence[str] = (),
) -> ServerSecurity:
    """``certificate_callers`` are client-certificate identities granted ``certificate_methods``
    (the persistence service's trusted writers); ``reserved_methods`` are methods nobody else
    may call, whatever the policy file's default says."""
    tls = ServerTLS.from_settings(
        settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
    )
    if certificate_callers and (tls is None or tls.client_ca_file is None):
        raise SecurityConfigError("certificate callers need mutual TLS (TLS_CLIENT_CA_FILE)")
    jwt_verifier = None
    if settings.auth_jwks_file is not None:
        if not settings.auth_jwt_issuer or not settings.auth_jwt_audience:
            raise SecurityConfigError("AUTH_JWKS_FILE needs AUTH_JWT_ISSUER and AUTH_JWT_AUDIENCE")
        rules = JwtRules(
            settings.auth_jwt_issuer, settings.auth_jwt_audience, settings.auth_jwt_leeway_s
        )
        jwt_verifier = JwtVerifier(settings.auth_jwks_file, rules)
    authenticator = Authenticator(
        api_keys=ApiKeys(settings.auth_tokens_file) if settings.auth_tokens_file else None,
        jwt=jwt_verifier,
        # With mutual TLS a verified certificate identifies its caller (service-to-service).
        trust_certificates=tls is not None and tls.client_ca_file is not None,
    )
    if settings.auth_policy_file is not None:
        policy = Policy.from_file(settings.auth_policy_file, reserved=reserved_methods)
    else:
        policy = Policy(reserved=tuple(reserved_methods))
    policy = policy.with_grant(certificate_callers, certificate_methods)
    reflection = settings.grpc_reflection
    if reflection is None:
        reflection = tls is None and not authenticator.enabled
    return ServerSecurity(tls, authenticator, policy, reflection, settings.health_listen)


async def start_health_port(
    listen: str, health: HealthServicer
) -> tuple[grpc.aio.Server, int] | None:
    """A plaintext port that serves only the health service, for kubelet's native gRPC probes
    (they cannot speak TLS). It shares the main server's health state."""
    if not listen:
        return None
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port(listen)
    await server.start()
    log.info("health-only plaintext port on %s", listen)
    return server, port


__all__ = [
    "AuthMetrics",
    "SecurityConfigError",
    "SecuritySettings",
    "ServerSecurity",
    "server_security",
    "start_health_port",
]
