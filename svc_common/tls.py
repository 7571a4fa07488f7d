"""TLS for both services: server credentials that follow certificate rotation, client channel
credentials, and the peer identity a client certificate carries.

cert-manager renews certificates every 60-90 days by rewriting the mounted files, so the server
credentials are *dynamic*: gRPC core asks the fetcher for a configuration on every new
handshake, and the fetcher re-reads the files only when their modification time or size
changed. Established connections keep their session; new ones get the new certificate.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

log = logging.getLogger(__name__)

# Names gRPC core puts in a call's auth context for a verified client certificate.
_SAN_KEYS = ("x509_subject_alternative_name",)
_CN_KEY = "x509_common_name"


class TLSConfigError(ValueError):
    """A TLS setting is incomplete or a file cannot be read."""


@dataclass(frozen=True)
class ServerTLS:
    cert_file: Path
    key_file: Path
    # When set, clients must present a certificate signed by this CA (mutual TLS).
    client_ca_file: Path | None = None

    @classmethod
    def from_settings(
        cls, cert_file: Path | None, key_file: Path | None, client_ca_file: Path | None
    ) -> ServerTLS | None:
        """None when TLS is off (no certificate configured); an error for half a configuration,
        because silently falling back to plaintext would be worse than not starting."""
        if cert_file is None and key_file is None:
            if client_ca_file is not None:
                raise TLSConfigError("TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE")
            return None
        if cert_file is None or key_file is None:
            raise TLSConfigError("TLS_CERT_FILE and TLS_KEY_FILE must be set together")
        return cls(cert_file, key_file, client_ca_file)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TLSConfigError(f"cannot read {path}: {exc.strerror}") from exc


def _signature(paths: Sequence[Path]) -> tuple[tuple[int, int], ...]:
    out = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            out.append((-1, -1))
        else:
            out.append((st.st_mtime_ns, st.st_size))
    return tuple(out)


class _RotatingServerConfig:
    """The fetcher gRPC core calls per handshake (from a core thread, hence the lock)."""

    def __init__(self, tls: ServerTLS) -> None:
        self._tls = tls
        self._paths = [p for p in (tls.cert_file, tls.key_file, tls.client_ca_file) if p]
        self._lock = threading.Lock()
        self._seen = _signature(self._paths)
        self.initial = self._load()

    def _load(self) -> grpc.ServerCertificateConfiguration:
        pair = (_read(self._tls.key_file), _read(self._tls.cert_file))
        ca = _read(self._tls.client_ca_file) if self._tls.client_ca_file else None
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=ca)

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            seen = _signature(self._paths)
            if seen == self._seen:
                return None
            try:
                config = self._load()
            except TLSConfigError as exc:
                # A half-written renewal: keep serving the previous certificate, retry next time.
                log.warning("tls reload failed, keeping the current certificate: %s", exc)
                return None
            self._seen = seen
            log.info("tls certificate reloaded", extra={"cert_file": str(self._tls.cert_file)})
            return config


def server_credentials(tls: ServerTLS) -> grpc.ServerCredentials:
    fetcher = _RotatingServerConfig(tls)
    return grpc.dynamic_ssl_server_credentials(
        fetcher.initial,
        fetcher,  # type: ignore[arg-type]  # None means "unchanged" to gRPC core
        require_client_authentication=tls.client_ca_file is not None,
    )


@dataclass(frozen=True)
class ClientTLS:
    # CA that signed the server's certificate; None = the system's trust store.
    ca_file: Path | None = None
    # Client certificate and key for mutual TLS; both or neither.
    cert_file: Path | None = None
    key_file: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise TLSConfigError("a client certificate needs both its cert and key file")

    def signature(self) -> tuple[tuple[int, int], ...]:
        """Changes when any of the files is replaced (renewal)."""
        return _signature([p for p in (self.ca_file, self.cert_file, self.key_file) if p])

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file) if self.ca_file else None,
            private_key=_read(self.key_file) if self.key_file else None,
            certificate_chain=_read(self.cert_file) if self.cert_file else None,
        )


def peer_identities(auth_context: Mapping[str, Iterable[bytes]]) -> tuple[str, ...]:
    """Identities of a verified client certificate: its subject alternative names, then its
    common name. Empty when the peer presented none (gRPC only fills these after verifying the
    chain against the configured client CA)."""
    names: list[str] = []
    for key in (*_SAN_KEYS, _CN_KEY):
        for value in auth_context.get(key, []):
            name = value.decode("utf-8", "replace")
            if name not in names:
                names.append(name)
    return tuple(names)
