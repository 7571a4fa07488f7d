"""Python client of the reverse-pickup inspection platform.

``AsyncInspectionClient`` / ``InspectionClient`` call ``rpi.inspection.v1.InspectionService``;
``PersistenceReader`` reads recorded inspections; ``requests`` builds requests from files, URLs
and question files; ``legacy`` converts to and from the replaced JSON API; ``cli`` is the
``rpi-inspect`` command.
"""

from clients.python.rpi_client.channel import ChannelOptions, tls_credentials
from clients.python.rpi_client.client import (
    INSPECTION_SERVICE_NAME,
    PERSISTENCE_SERVICE_NAME,
    AsyncInspectionClient,
    InspectionClient,
    PersistenceReader,
    ServingStatus,
)
from clients.python.rpi_client.errors import FieldViolation, InspectionFailed, StreamIncomplete
from clients.python.rpi_client.legacy import (
    LegacyConversionError,
    inspection_to_legacy_response,
    legacy_request_to_proto,
)
from clients.python.rpi_client.requests import (
    QuestionSet,
    RequestBuildError,
    build_inspect_request,
    image_from,
    load_questions,
    parse_questions,
)

__all__ = [
    "INSPECTION_SERVICE_NAME",
    "PERSISTENCE_SERVICE_NAME",
    "AsyncInspectionClient",
    "ChannelOptions",
    "FieldViolation",
    "InspectionClient",
    "InspectionFailed",
    "LegacyConversionError",
    "PersistenceReader",
    "QuestionSet",
    "RequestBuildError",
    "ServingStatus",
    "StreamIncomplete",
    "build_inspect_request",
    "image_from",
    "inspection_to_legacy_response",
    "legacy_request_to_proto",
    "load_questions",
    "parse_questions",
    "tls_credentials",
]
