"""Reading the ``google.rpc.Status`` details that a failed call carries in its trailers."""

from __future__ import annotations

from typing import Any, cast

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def bad_request_fields(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The BadRequest field violations carried by an error, field -> description."""
    status = rpc_status.from_call(cast(Any, error))
    if status is None:
        raise AssertionError("no google.rpc.Status in the trailers")
    fields: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            fields.update({v.field: v.description for v in bad_request.field_violations})
    return fields


def error_reason(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(cast(Any, error))
    if status is None:
        raise AssertionError("no google.rpc.Status in the trailers")
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


def details(error: grpc.aio.AioRpcError) -> tuple[error_details_pb2.ErrorInfo, list[str]]:
    """The ErrorInfo an error carries and the fields its BadRequest names (in order)."""
    status = rpc_status.from_call(cast(Any, error))
    assert status is not None, "error carries no google.rpc.Status"
    info = error_details_pb2.ErrorInfo()
    fields: list[str] = []
    for d in status.details:
        if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            d.Unpack(info)
        elif d.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            d.Unpack(bad)
            fields.extend(v.field for v in bad.field_violations)
    return info, fields
