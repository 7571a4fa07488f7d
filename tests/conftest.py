"""Fixtures shared by every test directory (see e2e_support)."""

from e2e_support import (  # noqa: F401 - fixtures are registered by being imported here
    database_url,
    db,
    image_server,
    inference_app,
    inspection_stub,
    persistence_app,
    persistence_stub,
    postgres,
)
