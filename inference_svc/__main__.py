"""``python -m inference_svc``: run the inference service with settings from the environment."""

from __future__ import annotations

import asyncio

from inference_svc.app import serve
from inference_svc.settings import InferenceSettings
from svc_common.logging import configure_logging


def main() -> None:
    settings = InferenceSettings()
    configure_logging("inference_svc", settings.log_level)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
