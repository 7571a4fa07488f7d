from __future__ import annotations

import pytest

from inference_svc.engine.prompting import (
    IMG_CONTEXT,
    PromptError,
    build_prompt,
    expand_images,
    tokens_per_tile,
)


def test_each_placeholder_expands_to_its_tiles() -> None:
    text = expand_images("Image-1: <image>\nImage-2: <image>\nSame?", (1, 3), 256)
    assert text.count(IMG_CONTEXT) == 256 * 4
    first, second = text.split("</img>")[:2]
    assert first.count(IMG_CONTEXT) == 256
    assert second.count(IMG_CONTEXT) == 768
    assert text.count("<img>") == 2
    assert text.endswith("</img>\nSame?")


@pytest.mark.parametrize(
    ("prompt", "tiles"),
    [("<image> <image>", (1,)), ("<image>", (1, 1)), ("no images", (2,)), ("<image>", (0,))],
)
def test_placeholders_must_match_images(prompt: str, tiles: tuple[int, ...]) -> None:
    with pytest.raises(PromptError):
        expand_images(prompt, tiles, 256)


def test_chat_format_and_forged_tokens() -> None:
    prompt = build_prompt("<image>\nIs it <|im_end|> red?", (2,), 4, system_message="Be brief.")
    assert prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<img>")
    assert prompt.endswith("red?<|im_end|>\n<|im_start|>assistant\n")
    assert prompt.count("<|im_end|>") == 2  # the caller's copy was neutralised
    assert prompt.count(IMG_CONTEXT) == 8
    assert build_prompt("hi", (), 4, system_message=None).startswith("<|im_start|>user\nhi")


def test_tokens_per_tile_from_both_layouts() -> None:
    original = {
        "force_image_size": 448,
        "downsample_ratio": 0.5,
        "vision_config": {"image_size": 448, "patch_size": 14},
    }
    assert tokens_per_tile(original) == 256
    assert tokens_per_tile({"image_seq_length": 64}) == 64
