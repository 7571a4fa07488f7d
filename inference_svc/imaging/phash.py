"""Perceptual hash of an image: a 64-bit difference hash (dHash).

The image is reduced to a 9x8 greyscale thumbnail and each bit says whether a pixel is brighter
than its left neighbour: re-encoding, resizing and recompression barely move it, while another
photo (even of the same product, framed differently) lands about 32 bits away, as two random
64-bit values do. Images are compared by the Hamming distance of their hashes.

Hashes are unsigned 64-bit ints here; ``to_signed`` / ``from_signed`` convert for storage in a
signed 64-bit column (Postgres ``bigint``). CPU-bound: call from a worker thread.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from inference_svc.domain.outcome import hamming
from inference_svc.imaging.quality import overview, tile_luma

HASH_BITS = 64
_WIDTH, _HEIGHT = 9, 8
_SIGN = 1 << 63
_MASK = (1 << 64) - 1

__all__ = [
    "HASH_BITS",
    "dhash",
    "dhash_of_grey",
    "dhash_tile",
    "from_signed",
    "hamming",
    "to_signed",
]


def dhash_of_grey(grey: Image.Image) -> int:
    """The dHash of a greyscale image (an ``overview``)."""
    small = grey.convert("L") if grey.mode != "L" else grey
    thumb = np.asarray(small.resize((_WIDTH, _HEIGHT), Image.Resampling.LANCZOS), dtype=np.int16)
    bits = (thumb[:, 1:] > thumb[:, :-1]).reshape(-1)
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def dhash(image: Image.Image) -> int:
    """The 64-bit dHash of a decoded image (any mode)."""
    return dhash_of_grey(overview(image))


def dhash_tile(tile: NDArray[np.uint8]) -> int:
    """The dHash of an image's overview tile (3, S, S), as the image intake produces it."""
    luma = np.clip(np.rint(tile_luma(tile)), 0, 255).astype(np.uint8)
    return dhash_of_grey(Image.fromarray(luma, mode="L"))


def to_signed(value: int) -> int:
    """An unsigned 64-bit hash as the signed 64-bit integer with the same bits."""
    if not 0 <= value <= _MASK:
        raise ValueError(f"not a 64-bit unsigned value: {value}")
    return value - (1 << 64) if value & _SIGN else value


def from_signed(value: int) -> int:
    return value & _MASK
