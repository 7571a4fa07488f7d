"""An independent transcription of InternVL's published preprocessing, for the tests only.

It follows the published ``load_image`` / ``dynamic_preprocess`` / ``find_closest_aspect_ratio``
/ ``build_transform`` code line by line, with Pillow and torch standing in for torchvision's
``Resize`` (Pillow's bicubic resize, which torchvision calls for a PIL image), ``ToTensor`` and
``Normalize``. It shares no code with the modules under test.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from inference_svc.model_inputs import IMAGENET_MEAN, IMAGENET_STD


def ref_find_closest_aspect_ratio(
    aspect_ratio: float,
    target_ratios: list[tuple[int, int]],
    width: int,
    height: int,
    image_size: int,
) -> tuple[int, int]:
    best_ratio_diff = float("inf")
    best_ratio = (1, 1)
    area = width * height
    for ratio in target_ratios:
        target_aspect_ratio = ratio[0] / ratio[1]
        ratio_diff = abs(aspect_ratio - target_aspect_ratio)
        if ratio_diff < best_ratio_diff:
            best_ratio_diff = ratio_diff
            best_ratio = ratio
        elif ratio_diff == best_ratio_diff:  # noqa: SIM102 - kept as published
            if area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
                best_ratio = ratio
    return best_ratio


def ref_target_ratios(min_num: int, max_num: int) -> list[tuple[int, int]]:
    ratios = set(
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if i * j <= max_num and i * j >= min_num
    )
    return sorted(ratios, key=lambda x: x[0] * x[1])


def ref_grid(width: int, height: int, max_num: int, image_size: int) -> tuple[int, int]:
    aspect_ratio = width / height
    return ref_find_closest_aspect_ratio(
        aspect_ratio, ref_target_ratios(1, max_num), width, height, image_size
    )


def ref_dynamic_preprocess(
    image: Image.Image, min_num: int, max_num: int, image_size: int, use_thumbnail: bool
) -> list[Image.Image]:
    orig_width, orig_height = image.size
    aspect_ratio = orig_width / orig_height
    target_ratios = ref_target_ratios(min_num, max_num)
    target_aspect_ratio = ref_find_closest_aspect_ratio(
        aspect_ratio, target_ratios, orig_width, orig_height, image_size
    )
    target_width = image_size * target_aspect_ratio[0]
    target_height = image_size * target_aspect_ratio[1]
    blocks = target_aspect_ratio[0] * target_aspect_ratio[1]
    resized_img = image.resize((target_width, target_height))
    processed_images = []
    for i in range(blocks):
        box = (
            (i % (target_width // image_size)) * image_size,
            (i // (target_width // image_size)) * image_size,
            ((i % (target_width // image_size)) + 1) * image_size,
            ((i // (target_width // image_size)) + 1) * image_size,
        )
        processed_images.append(resized_img.crop(box))
    assert len(processed_images) == blocks
    if use_thumbnail and len(processed_images) != 1:
        processed_images.append(image.resize((image_size, image_size)))
    return processed_images


def ref_transform(tile: Image.Image, image_size: int) -> torch.Tensor:
    tile = tile.convert("RGB").resize((image_size, image_size), Image.Resampling.BICUBIC)
    t = torch.from_numpy(np.array(tile, copy=True)).permute(2, 0, 1).contiguous()
    t = t.to(dtype=torch.float32).div(255)
    mean = torch.as_tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.as_tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]
    return t.sub_(mean).div_(std)


def ref_load(image: Image.Image, max_num: int, image_size: int) -> np.ndarray:
    tiles = ref_dynamic_preprocess(image, 1, max_num, image_size, use_thumbnail=True)
    return torch.stack([ref_transform(t, image_size) for t in tiles]).numpy()


def ref_open(data: bytes) -> Image.Image:
    """``Image.open(image_file).convert("RGB")``: no EXIF transpose, no draft decode."""
    return Image.open(io.BytesIO(data)).convert("RGB")


def ref_tile_images(image: Image.Image, max_num: int, image_size: int) -> list[Image.Image]:
    """The tiles as the transform's ``Resize`` leaves them (before ``ToTensor``)."""
    tiles = ref_dynamic_preprocess(image, 1, max_num, image_size, use_thumbnail=True)
    return [
        t.convert("RGB").resize((image_size, image_size), Image.Resampling.BICUBIC) for t in tiles
    ]


def ref_tile_bytes(image: Image.Image, max_num: int, image_size: int) -> np.ndarray:
    """The published tiles' bytes, (tiles, 3, S, S) uint8."""
    return np.stack(
        [
            np.asarray(t, dtype=np.uint8).transpose(2, 0, 1)
            for t in ref_tile_images(image, max_num, image_size)
        ]
    )
