"""Channel construction shared by every client: message limits, TLS and keepalive."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio

# The inference server accepts messages up to 256 MiB by default (up to 20 inline images of
# 10 MB each fit comfortably); the client must allow at least as much or it refuses to send.
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
# The server bounds one inspection at 300 s; the extra margin covers transfer of inline images
# so that the server, not the client, reports the overrun with its own reason.
DEFAULT_TIMEOUT_S = 330.0
USER_AGENT = "rpi-client-python/0.1"

_OptionList = list[tuple[str, str | int]]


@dataclass(frozen=True)
class ChannelOptions:
    """How to reach a service.

    ``keepalive_time_s`` is off by default: gRPC servers reject pings sent more often than
    their ``grpc.http2.min_recv_ping_interval_without_data_ms`` (5 minutes by default) with
    GOAWAY ``too_many_pings``, so only enable it below that when the server is configured to
    accept it (typically behind load balancers that drop idle connections).
    """

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    credentials: grpc.ChannelCredentials | None = None
    keepalive_time_s: float | None = None
    keepalive_timeout_s: float = 20.0
    keepalive_permit_without_calls: bool = False
    default_timeout_s: float | None = DEFAULT_TIMEOUT_S
    wait_for_ready: bool = False
    # Overrides the :authority / TLS server name, e.g. when connecting through a port-forward.
    authority: str | None = None
    # Bearer credential (an API key or a JWT) sent as ``authorization`` on every call.
    token: str | None = None

    def __repr__(self) -> str:
        # Never print the credential (tracebacks and logs show reprs).
        token = "<set>" if self.token else None
        return f"ChannelOptions(credentials={self.credentials!r}, token={token}, ...)"

    def grpc_options(self) -> _OptionList:
        options: _OptionList = [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.primary_user_agent", USER_AGENT),
        ]
        if self.keepalive_time_s is not None:
            options += [
                ("grpc.keepalive_time_ms", int(self.keepalive_time_s * 1000)),
                ("grpc.keepalive_timeout_ms", int(self.keepalive_timeout_s * 1000)),
                ("grpc.keepalive_permit_without_calls", int(self.keepalive_permit_without_calls)),
                # Long unary inspections send no data for many seconds; without this the client
                # would stop pinging after two pings and never notice a dead connection.
                ("grpc.http2.max_pings_without_data", 0),
            ]
        if self.authority is not None:
            options += [
                ("grpc.default_authority", self.authority),
                ("grpc.ssl_target_name_override", self.authority),
            ]
        return options


def tls_credentials(
    ca_file: str | Path | None = None,
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
) -> grpc.ChannelCredentials:
    """TLS credentials; system roots unless ``ca_file`` is given, mutual TLS with cert + key."""
    if (cert_file is None) != (key_file is None):
        raise ValueError("mutual TLS needs both a client certificate and its key")
    return grpc.ssl_channel_credentials(
        root_certificates=Path(ca_file).read_bytes() if ca_file else None,
        private_key=Path(key_file).read_bytes() if key_file else None,
        certificate_chain=Path(cert_file).read_bytes() if cert_file else None,
    )


class _BearerToken(grpc.AuthMetadataPlugin):
    def __init__(self, token: str) -> None:
        self._metadata = (("authorization", f"Bearer {token}"),)

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        callback(self._metadata, None)


def _credentials(options: ChannelOptions) -> grpc.ChannelCredentials | None:
    """TLS credentials, with the token as call credentials composed on top. gRPC sends call
    credentials only over a secure channel; a plaintext channel with a token (the local
    set-up) uses local credentials, which gRPC allows for loopback and unix sockets only."""
    if options.token is None:
        return options.credentials
    base = options.credentials or grpc.local_channel_credentials()
    call = grpc.metadata_call_credentials(_BearerToken(options.token), name="rpi-bearer")
    return grpc.composite_channel_credentials(base, call)


def sync_channel(target: str, options: ChannelOptions) -> grpc.Channel:
    credentials = _credentials(options)
    if credentials is not None:
        return grpc.secure_channel(target, credentials, options.grpc_options())
    return grpc.insecure_channel(target, options.grpc_options())


def aio_channel(target: str, options: ChannelOptions) -> grpc.aio.Channel:
    credentials = _credentials(options)
    if credentials is not None:
        return grpc.aio.secure_channel(target, credentials, options.grpc_options())
    return grpc.aio.insecure_channel(target, options.grpc_options())
