"""Client errors carrying the server's decoded ``google.rpc`` error details."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

logger = logging.getLogger(__name__)

# ErrorInfo.domain of every error the inspection service raises.
INSPECTION_ERROR_DOMAIN = "inspection.rpi.v1"


@dataclass(frozen=True)
class FieldViolation:
    """One invalid request field (``google.rpc.BadRequest.FieldViolation``)."""

    field: str
    description: str

    def __str__(self) -> str:
        return f"{self.field}: {self.description}"


class InspectionFailed(Exception):  # noqa: N818  # the public name callers catch
    """A call ended with a non-OK status. Wraps the :class:`grpc.RpcError` (also ``__cause__``).

    ``str()`` gives one line such as
    ``INVALID_ARGUMENT IMAGE_TOO_LARGE pickup_images[1]: image is 12.0 MB, limit 10 MB``;
    :meth:`describe` adds the field violations and error metadata, one per line.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
        violations: Sequence[FieldViolation] = (),
        retry_delay_s: float | None = None,
        rpc_error: grpc.RpcError | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata: dict[str, str] = dict(metadata or {})
        self.violations: tuple[FieldViolation, ...] = tuple(violations)
        self.retry_delay_s = retry_delay_s
        self.rpc_error = rpc_error
        super().__init__(str(self))

    @property
    def code_name(self) -> str:
        return str(self.code.name)

    def __str__(self) -> str:
        parts = [self.code_name]
        if self.reason:
            parts.append(self.reason)
        if self.message:
            parts.append(self.message)
        return " ".join(parts)

    def describe(self) -> list[str]:
        """Lines for a human: the summary, then each violation, the ErrorInfo domain and
        metadata, and the retry hint."""
        lines = [str(self)]
        lines += [f"  violation {v}" for v in self.violations]
        if self.domain:
            lines.append(f"  domain {self.domain}")
        lines += [f"  {key}={value}" for key, value in sorted(self.metadata.items())]
        if self.retry_delay_s is not None:
            lines.append(f"  retry after {self.retry_delay_s:g} s")
        return lines

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> InspectionFailed:
        """Decodes ``grpc-status-details-bin`` (ErrorInfo, BadRequest, RetryInfo) if present.

        Works for sync errors (which are ``grpc.Call``) and ``grpc.aio.AioRpcError`` alike:
        both expose ``code()``, ``details()`` and iterable ``trailing_metadata()``.
        """
        code = error.code()
        message = error.details() or ""
        try:
            status = cast(status_pb2.Status | None, rpc_status.from_call(cast(grpc.Call, error)))
        except ValueError:
            # The details disagree with the status line (a proxy rewrote it): keep the status.
            logger.warning("ignoring rich error details inconsistent with the status")
            status = None
        reason = domain = ""
        metadata: dict[str, str] = {}
        violations: list[FieldViolation] = []
        retry_delay_s: float | None = None
        for detail in status.details if status is not None else ():
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations += [FieldViolation(v.field, v.description) for v in bad.field_violations]
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_delay_s = retry.retry_delay.ToTimedelta().total_seconds()
        return cls(
            code,
            message,
            reason=reason,
            domain=domain,
            metadata=metadata,
            violations=violations,
            retry_delay_s=retry_delay_s,
            rpc_error=error,
        )


class StreamIncomplete(InspectionFailed):
    """An InspectStream call ended OK but without the final Inspection message."""

    def __init__(self) -> None:
        super().__init__(
            grpc.StatusCode.UNKNOWN,
            "stream ended without the final inspection",
            reason="STREAM_INCOMPLETE",
        )
