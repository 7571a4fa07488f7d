"""InternVL dynamic preprocessing: grid choice, 448 px tiles, thumbnail.

The grid choice reproduces InternVL's published ``dynamic_preprocess`` exactly (candidate order
and tie rule included) in both modes (``PREPROCESS``):

- ``exact``: the published pipeline's pixels, for a model fine-tuned on them: the image is
  decoded at full size as stored (``Image.open(...).convert("RGB")``), resized with Pillow's
  bicubic filter to the grid and to the thumbnail; slicing the resized array is the published
  ``crop``. With the engine's normalisation the tiles equal ``build_transform``'s bit for bit.
- ``fast``: a JPEG is decoded at a reduced DCT scale that stays at or above the grid size, the
  image is turned upright by its EXIF orientation, and the resize is torch's antialiased
  bicubic on uint8, a vectorised port of Pillow's filter that is much cheaper than
  ``Image.resize``. The tests bound its difference from ``exact``; ``bench.preprocess``
  measures the cost of both.

EXIF orientation is a separate choice (``EXIF_TRANSPOSE``): by default ``exact`` ignores it, as
the published pipeline does, and ``fast`` applies it.

Tiles leave here as uint8 bytes; the engine applies the ImageNet normalisation on its own
device (``engine.pixels``), with the same float32 operations as the published transform.
``bench.seed_style`` keeps the published per-tile path for comparison and benchmarks.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from inference_svc.domain.models import FetchedImage, PreparedImage
from inference_svc.imaging.decode import load_rgb, probe_image

DEFAULT_IMAGE_SIZE = 448

# Tile bytes (the engine normalises them on its device).
TileBytes = npt.NDArray[np.uint8]

ResizeMethod = Literal["torch", "pillow"]
RESIZE_METHODS: tuple[str, ...] = get_args(ResizeMethod)
PreprocessMode = Literal["exact", "fast"]
PREPROCESS_MODES: tuple[str, ...] = get_args(PreprocessMode)
# EXIF_TRANSPOSE: "auto" = the mode's default (see applies_exif).
ExifChoice = Literal["auto", "on", "off"]


def applies_exif(mode: PreprocessMode, exif: ExifChoice = "auto") -> bool:
    """Whether photos are turned upright by their EXIF orientation. By default ``exact`` does
    not (the published pipeline never reads EXIF) and ``fast`` does."""
    if exif == "auto":
        return mode == "fast"
    return exif == "on"


def resize_planar(image: Image.Image, size: tuple[int, int], method: ResizeMethod) -> TileBytes:
    """``image`` (RGB) resized to ``size`` (width, height) with an antialiased bicubic filter,
    in the tiles' planar layout: (3, height, width) uint8."""
    return resize_planar_sizes(image, [size], method)[0]


def resize_planar_sizes(
    image: Image.Image, sizes: Sequence[tuple[int, int]], method: ResizeMethod
) -> list[TileBytes]:
    """:func:`resize_planar` for several sizes, reading the pixels out of Pillow once."""
    if method == "pillow":
        return [
            np.asarray(image.resize(size, Image.Resampling.BICUBIC), dtype=np.uint8).transpose(
                2, 0, 1
            )
            for size in sizes
        ]
    if method != "torch":
        raise ValueError(f"resize method {method!r} is not one of {RESIZE_METHODS}")
    # np.array copies: a PIL buffer is read-only and torch wants writable memory. Pillow packs
    # its pixels holding the interpreter lock, hence once per image. The (H, W, 3) array viewed
    # as NCHW is channels-last, the layout torch's vectorised uint8 kernel reads.
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0)
    out = []
    with torch.inference_mode():
        for width, height in sizes:
            resized = torch.nn.functional.interpolate(
                pixels, size=(height, width), mode="bicubic", antialias=True
            )
            # The kernel answers in contiguous (planar) NCHW, the tiles' own layout: going
            # through (H, W, 3) cost a strided copy each way, twice the resize itself.
            out.append(resized[0].contiguous().numpy())
    return out


@functools.cache
def target_ratios(min_num: int, max_num: int) -> tuple[tuple[int, int], ...]:
    """Candidate grids (columns, rows) with min_num <= columns*rows <= max_num.

    Built and sorted exactly as InternVL does (a set sorted by tile count; the stable sort keeps
    the set's iteration order among equal counts), because the tie rule depends on the order.
    """
    ratios = {
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_num <= i * j <= max_num
    }
    return tuple(sorted(ratios, key=lambda r: r[0] * r[1]))


def find_closest_aspect_ratio(
    aspect_ratio: float,
    ratios: tuple[tuple[int, int], ...] | list[tuple[int, int]],
    width: int,
    height: int,
    image_size: int,
) -> tuple[int, int]:
    """InternVL's rule: the grid with the nearest aspect ratio; on a tie the later candidate
    wins when the image's area exceeds half the candidate grid's pixel area."""
    best_diff = float("inf")
    best = (1, 1)
    area = width * height
    for ratio in ratios:
        diff = abs(aspect_ratio - ratio[0] / ratio[1])
        if diff < best_diff:
            best_diff = diff
            best = ratio
        elif diff == best_diff and area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
            best = ratio
    return best


def choose_grid(
    width: int, height: int, min_num: int, max_num: int, image_size: int
) -> tuple[int, int]:
    """(columns, rows) of tiles for an image of this size."""
    return find_closest_aspect_ratio(
        width / height, target_ratios(min_num, max_num), width, height, image_size
    )


def tiles_for_grid(
    image: Image.Image,
    grid: tuple[int, int],
    image_size: int,
    use_thumbnail: bool = True,
    resize: ResizeMethod = "torch",
) -> TileBytes:
    """Resize ``image`` once to the grid, slice row-major tiles, add the thumbnail when there is
    more than one tile; uint8 array (tiles, 3, S, S) of RGB bytes, which the engine normalises
    (``inference_svc.engine.pixels``)."""
    cols, rows = grid
    s = image_size
    count = cols * rows
    thumbnail = use_thumbnail and count > 1
    out = np.empty((count + int(thumbnail), 3, s, s), dtype=np.uint8)
    sizes = [(cols * s, rows * s)] + ([(s, s)] if thumbnail else [])
    planes = resize_planar_sizes(image, sizes, resize)
    # One copy from the planar image into the row-major tiles.
    out[:count].reshape(rows, cols, 3, s, s)[...] = (
        planes[0].reshape(3, rows, s, cols, s).transpose(1, 3, 0, 2, 4)
    )
    if thumbnail:
        out[count] = planes[1]
    return out


def image_to_tiles(
    image: Image.Image,
    max_num: int,
    image_size: int = DEFAULT_IMAGE_SIZE,
    use_thumbnail: bool = True,
    min_num: int = 1,
    resize: ResizeMethod = "torch",
) -> TileBytes:
    """Model tiles (uint8) of an RGB image, the grid chosen from its own size."""
    grid = choose_grid(image.width, image.height, min_num, max_num, image_size)
    return tiles_for_grid(image, grid, image_size, use_thumbnail, resize)


def prepare_image(
    fetched: FetchedImage,
    max_tiles: int,
    image_size: int = DEFAULT_IMAGE_SIZE,
    max_pixels: int = 64_000_000,
    mode: PreprocessMode = "exact",
    exif: ExifChoice = "auto",
) -> PreparedImage:
    """Decode and tile one image (CPU-bound and synchronous: run it in a worker thread).

    ``mode``: see the module docstring; ``exif``: :func:`applies_exif`. The grid is chosen
    from the full size (upright when the EXIF orientation is applied), as InternVL does on the
    full image; in ``fast`` mode the JPEG draft only changes how the pixels for that grid are
    produced.
    """
    if mode not in PREPROCESS_MODES:
        raise ValueError(f"preprocessing mode {mode!r} is not one of {PREPROCESS_MODES}")
    exact = mode == "exact"
    upright = applies_exif(mode, exif)
    field_path = fetched.source.field_path
    probed = probe_image(fetched.data, field_path, max_pixels, exif_transpose=upright)
    grid = choose_grid(probed.width, probed.height, 1, max_tiles, image_size)
    draft = None if exact else (grid[0] * image_size, grid[1] * image_size)
    image = load_rgb(probed, field_path, draft_size=draft, plain_convert=exact)
    resize: ResizeMethod = "pillow" if exact else "torch"
    tiles = tiles_for_grid(image, grid, image_size, use_thumbnail=True, resize=resize)
    return PreparedImage(
        source=fetched.source,
        tiles=tiles,
        num_tiles=int(tiles.shape[0]),
        width=probed.width,
        height=probed.height,
        format=probed.format,
        size_bytes=len(fetched.data),
        sha256=fetched.sha256 or hashlib.sha256(fetched.data).hexdigest(),
        fetched_uri=fetched.fetched_uri,
    )
