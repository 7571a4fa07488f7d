"""What the pipeline records about each inspection, and the port it records through.

The adapter (``inference_svc.events``) turns these into persistence events, spools them durably
and delivers them; the pipeline never waits on the persistence service itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from inference_svc.domain.errors import Stage
from inference_svc.domain.models import (
    AttemptRecord,
    ImageRole,
    Inspection,
    InspectionRequest,
    ModelInfo,
)


@dataclass(frozen=True)
class ImageInfo:
    """An image of a request as recorded: never its bytes."""

    role: ImageRole
    index: int
    uri: str = ""
    fetched_uri: str = ""
    inline: bool = False
    sha256: str = ""
    size_bytes: int = 0
    width: int = 0
    height: int = 0
    format: str = ""
    tiles: int = 0
    perceptual_hash: int | None = None  # 64-bit dHash (the decision policy's fraud checks)
    archived_uri: str = ""  # where the evidence archive keeps it (IMAGE_ARCHIVE_URI)


class Recorder(Protocol):
    def ensure_capacity(self) -> None:
        """Raises InspectionError (RESOURCE_EXHAUSTED, EVENT_SPOOL_FULL) when records could not
        be kept: an inspection that cannot be recorded is refused before work starts."""

    async def request_received(
        self, request: InspectionRequest, method: str, images: list[ImageInfo]
    ) -> None: ...

    async def attempt(
        self, inspection_id: str, attempt: AttemptRecord, model: ModelInfo
    ) -> None: ...

    async def result(self, inspection: Inspection, export_uri: str = "") -> None:
        """``export_uri``: where the result export writes the inspection (empty: nowhere)."""

    async def failure(
        self, inspection_id: str, stage: Stage, reason: str, message: str, status_code: str
    ) -> None: ...
