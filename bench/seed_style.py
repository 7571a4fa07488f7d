"""The replaced service's image path (float32 tiles normalised per tile on the CPU), kept as
the reference for tests and benchmarks, not for serving."""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
from PIL import Image

from inference_svc.imaging.tiling import DEFAULT_IMAGE_SIZE, choose_grid
from inference_svc.model_inputs import IMAGENET_MEAN, IMAGENET_STD

_MEAN32 = np.array(IMAGENET_MEAN, dtype=np.float32)
_STD32 = np.array(IMAGENET_STD, dtype=np.float32)

# Normalised float32 tiles.
Tiles = npt.NDArray[np.float32]


def seed_style_tiles(
    image: Image.Image,
    max_num: int,
    image_size: int = DEFAULT_IMAGE_SIZE,
    use_thumbnail: bool = True,
) -> Tiles:
    """The replaced service's path: InternVL's dynamic_preprocess (resize, crop each tile with
    PIL), then per tile the torchvision-style transform (resize to S, to float, normalise).

    Kept as the reference for tests and benchmarks, not for serving.
    """
    cols, rows = choose_grid(image.width, image.height, 1, max_num, image_size)
    s = image_size
    resized = image.resize((cols * s, rows * s))
    crops = [
        resized.crop(((i % cols) * s, (i // cols) * s, (i % cols + 1) * s, (i // cols + 1) * s))
        for i in range(cols * rows)
    ]
    if use_thumbnail and len(crops) != 1:
        crops.append(image.resize((s, s)))
    tensors = []
    for crop in crops:
        tile = crop.convert("RGB").resize((s, s), Image.Resampling.BICUBIC)
        chw = np.array(tile, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32)
        chw = chw / np.float32(255)
        tensors.append((chw - _MEAN32[:, None, None]) / _STD32[:, None, None])
    return np.stack(tensors).astype(np.float32, copy=False)


def seed_style_prepare(data: bytes, max_num: int, image_size: int = DEFAULT_IMAGE_SIZE) -> Tiles:
    """The replaced service end to end: full decode, convert("RGB"), seed-style tiles."""
    with Image.open(io.BytesIO(data)) as image:
        return seed_style_tiles(image.convert("RGB"), max_num, image_size)
