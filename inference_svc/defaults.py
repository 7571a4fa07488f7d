"""Defaults shared by the service settings and the engine configuration (one value each).

A neutral module: settings.py must not import the engine, and the engine must not import the
service's settings.
"""

from __future__ import annotations

# InternVL2.5's default system message (template "internvl2_5"), which model.chat() sends.
INTERNVL25_SYSTEM_MESSAGE = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的"
    "多模态大语言模型。"
)

MAX_NEW_TOKENS = 2000
MAX_BATCH_SIZE = 16
MAX_QUEUE_SIZE = 64
ENGINE_PROCESS = True
PIXEL_BUFFER_MB = 128
WORKER_NICE = 10
