"""Helpers of the error-interceptor tests: decoding the google.rpc details of a failed call."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

# A length-delimited field 1 claiming 127 bytes, followed by none: no protobuf message decodes.
GARBAGE = b"\x0a\x7f"


@dataclass(frozen=True)
class Details:
    code: grpc.StatusCode
    message: str
    infos: list[error_details_pb2.ErrorInfo]
    violations: list[tuple[str, str]]
    retry_delay_s: float | None

    @property
    def info(self) -> error_details_pb2.ErrorInfo:
        assert len(self.infos) == 1, f"expected exactly one ErrorInfo, got {self.infos}"
        return self.infos[0]


def details(error: grpc.aio.AioRpcError) -> Details:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, f"no grpc-status-details-bin on {error.code()} {error.details()}"
    infos: list[error_details_pb2.ErrorInfo] = []
    violations: list[tuple[str, str]] = []
    retry: float | None = None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations += [(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info_retry = error_details_pb2.RetryInfo()
            detail.Unpack(info_retry)
            retry = info_retry.retry_delay.ToTimedelta().total_seconds()
    return Details(error.code(), error.details() or "", infos, violations, retry)
