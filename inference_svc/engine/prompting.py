"""InternVL chat format and image-token expansion.

The same prompt serves the transformers-native model and the original remote-code
``InternVLChatModel``: each ``<image>`` becomes ``<img>`` + ``<IMG_CONTEXT>`` x (tokens per tile
x tiles) + ``</img>``, and the model replaces the context tokens with the image features in
order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from inference_svc.model_inputs import IMAGE_PLACEHOLDER, INTERNVL25_SYSTEM_MESSAGE

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IMG_START = "<img>"
IMG_END = "</img>"
IMG_CONTEXT = "<IMG_CONTEXT>"

_RESERVED = (IM_START, IM_END, "<|endoftext|>", IMG_START, IMG_END, IMG_CONTEXT)


class PromptError(ValueError):
    """The prompt does not fit its images (placeholder count, tile counts)."""


def tokens_per_tile(config: Any) -> int:
    """Image tokens per 448 px tile, from a native ``InternVLConfig`` or an original-layout
    config (object or dict with ``force_image_size``/``vision_config``)."""
    get = config.get if isinstance(config, Mapping) else lambda k, d=None: getattr(config, k, d)
    seq_len = get("image_seq_length")
    if seq_len:
        return int(seq_len)
    vision = get("vision_config")
    vget = vision.get if isinstance(vision, Mapping) else lambda k, d=None: getattr(vision, k, d)
    image_size = get("force_image_size") or vget("image_size")
    patch_size = vget("patch_size")
    image_size = image_size[0] if isinstance(image_size, list | tuple) else image_size
    patch_size = patch_size[0] if isinstance(patch_size, list | tuple) else patch_size
    ratio = float(get("downsample_ratio", 0.5))
    if image_size is None or patch_size is None:
        raise ValueError("config has neither image_seq_length nor image/patch sizes")
    return int((int(image_size) // int(patch_size)) ** 2 * ratio**2)


def neutralise_reserved(text: str) -> str:
    """Keep caller-supplied text from forging chat or image tokens."""
    for token in _RESERVED:
        if token in text:
            text = text.replace(token, token[0] + " " + token[1:])
    return text


def expand_images(
    user_text: str, tiles_per_image: Sequence[int], image_tokens_per_tile: int
) -> str:
    count = user_text.count(IMAGE_PLACEHOLDER)
    if count != len(tiles_per_image):
        raise PromptError(
            f"prompt has {count} {IMAGE_PLACEHOLDER} placeholders for {len(tiles_per_image)} images"
        )
    if any(t < 1 for t in tiles_per_image):
        raise PromptError("every image needs at least one tile")
    parts = user_text.split(IMAGE_PLACEHOLDER)
    out = [parts[0]]
    for tiles, tail in zip(tiles_per_image, parts[1:], strict=True):
        out.append(IMG_START + IMG_CONTEXT * (image_tokens_per_tile * tiles) + IMG_END)
        out.append(tail)
    return "".join(out)


def chat_prompt(user_content: str, system_message: str | None) -> str:
    parts = []
    if system_message:
        parts.append(f"{IM_START}system\n{system_message}{IM_END}\n")
    parts.append(f"{IM_START}user\n{user_content}{IM_END}\n{IM_START}assistant\n")
    return "".join(parts)


def answer_text(decoded: str) -> str:
    """The answer as ``InternVLChatModel.chat()`` returns it: the decoded text up to the
    template separator, stripped (the model's leading newline or space is not part of it)."""
    return decoded.split(IM_END, maxsplit=1)[0].strip()


def build_prompt(
    user_text: str,
    tiles_per_image: Sequence[int],
    image_tokens_per_tile: int,
    system_message: str | None = INTERNVL25_SYSTEM_MESSAGE,
) -> str:
    """The full model input text for one request."""
    safe = neutralise_reserved(user_text)
    return chat_prompt(expand_images(safe, tiles_per_image, image_tokens_per_tile), system_message)
