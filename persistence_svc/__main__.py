"""``python -m persistence_svc``: run the persistence service until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import sys

from persistence_svc.app import run_server
from persistence_svc.settings import PersistenceSettings
from svc_common.logging import configure_logging


def main() -> int:
    settings = PersistenceSettings()
    configure_logging("persistence_svc", settings.log_level)
    return asyncio.run(run_server(settings))


if __name__ == "__main__":
    sys.exit(main())
