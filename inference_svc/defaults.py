"""Defaults shared by the service settings and the engine configuration (one value each).

A neutral module: settings.py must not import the engine, and the engine must not import the
service's settings.
"""

from __future__ import annotations

from inference_svc.model_inputs import INTERNVL25_SYSTEM_MESSAGE

MAX_NEW_TOKENS = 2000
MAX_BATCH_SIZE = 16
MAX_QUEUE_SIZE = 64
ENGINE_PROCESS = True
PIXEL_BUFFER_MB = 128
WORKER_NICE = 10
VISION_CACHE_BYTES = 256 << 20
FETCH_CACHE_BYTES = 64 << 20

__all__ = [
    "ENGINE_PROCESS",
    "FETCH_CACHE_BYTES",
    "INTERNVL25_SYSTEM_MESSAGE",
    "MAX_BATCH_SIZE",
    "MAX_NEW_TOKENS",
    "MAX_QUEUE_SIZE",
    "PIXEL_BUFFER_MB",
    "VISION_CACHE_BYTES",
    "WORKER_NICE",
]
