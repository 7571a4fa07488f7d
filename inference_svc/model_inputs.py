"""What the pipeline, image intake, the settings and the engine agree on about the model's
inputs. Neutral ground: each of them takes these constants from here, so none has to import
another for a constant (the import contracts in pyproject.toml)."""

from __future__ import annotations

# Marks one image in a user prompt, in image order; the engine expands each to the image tokens.
IMAGE_PLACEHOLDER = "<image>"

# InternVL2.5's default system message (template "internvl2_5"), which model.chat() sends.
INTERNVL25_SYSTEM_MESSAGE = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的"
    "多模态大语言模型。"
)

# InternVL's vision tower was trained on ImageNet-normalised pixels.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
