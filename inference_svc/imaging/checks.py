"""The per-image signals of the decision policy, from a prepared image: its perceptual hash and
quality measures, both from the overview tile tiling already made (the last tile is the whole
image at the tile size). CPU-bound: runs in the intake's worker thread beside tiling."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from inference_svc.domain.models import ImageRef, ImageSignal, PreparedImage
from inference_svc.domain.policy import QualityThresholds
from inference_svc.imaging.phash import dhash_tile
from inference_svc.imaging.quality import assess_tile


def image_signal(prepared: PreparedImage, limits: QualityThresholds | None) -> ImageSignal:
    """Hash and (when ``limits`` is given: the gate is not off) quality of one image."""
    tiles: NDArray[np.uint8] = np.asarray(prepared.tiles)
    source = prepared.source
    overview = tiles[-1]
    quality = (
        None
        if limits is None
        else assess_tile(
            overview, limits, source.role, source.index, (prepared.width, prepared.height)
        )
    )
    return ImageSignal(ImageRef(source.role, source.index), dhash_tile(overview), quality)
