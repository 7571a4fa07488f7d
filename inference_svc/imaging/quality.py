"""The image quality gate's measures: blur, exposure and resolution of an already decoded image.

Sharpness and exposure are measured on the image's overview: the whole image scaled to
``OVERVIEW_SIZE`` x ``OVERVIEW_SIZE``, which is InternVL's thumbnail tile, so the model's own
overview of the image is what is judged, one threshold holds for every camera resolution, and
the pipeline measures the overview tile it already has (``assess_tile``) instead of decoding the
image again. CPU-bound and synchronous: call it in a worker thread, never on the event loop.

- sharpness: variance of the Laplacian (4-neighbour kernel) of the overview's luma; blur removes
  the high frequencies the Laplacian responds to, so the variance falls;
- exposure: mean luma (0-255) and the share of crushed (<= ``DARK_LUMA``) and blown
  (>= ``BRIGHT_LUMA``) pixels;
- resolution: the decoded image's shorter side.

Thresholds are the policy's (``QualityThresholds``).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from inference_svc.domain.models import (
    ImageRef,
    ImageRole,
    QualityMeasures,
    QualityProblem,
    QualityReport,
)
from inference_svc.domain.policy import QualityThresholds

OVERVIEW_SIZE = 448
DARK_LUMA = 16
BRIGHT_LUMA = 239
# ITU-R 601-2 luma, as Pillow's convert("L").
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)

Luma = NDArray[np.float32]


def overview(image: Image.Image, size: int = OVERVIEW_SIZE) -> Image.Image:
    """The whole image as a ``size`` x ``size`` greyscale ("L") overview (also what the
    perceptual hash is computed from)."""
    factor = min(image.size) // size
    if factor >= 2:
        # Integer box reduction first (cheap), then a bilinear resize to the exact size.
        image = image.reduce(factor)
    grey = image if image.mode == "L" else image.convert("L")
    return grey.resize((size, size), Image.Resampling.BILINEAR)


def tile_luma(tile: NDArray[np.uint8]) -> Luma:
    """The luma of an RGB tile laid out (3, S, S), as the image intake produces them."""
    planes = tile.astype(np.float32)
    # Element-wise, not np.tensordot: a BLAS call wakes OpenBLAS's thread pool, whose threads
    # then spin on the serving host's cores after every image.
    r, g, b = (float(w) for w in _LUMA_WEIGHTS)
    luma: Luma = planes[0] * r + planes[1] * g + planes[2] * b
    return luma


def measure(luma: Luma, width: int, height: int) -> QualityMeasures:
    """The measures of an overview's luma; ``width`` and ``height`` are the full decoded size."""
    if luma.shape[0] >= 3 and luma.shape[1] >= 3:
        centre = luma[1:-1, 1:-1]
        laplacian = (
            luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:] - 4.0 * centre
        )
        sharpness = float(laplacian.var())
    else:
        sharpness = 0.0
    return QualityMeasures(
        width=width,
        height=height,
        sharpness=sharpness,
        mean_luma=float(luma.mean()),
        dark_fraction=float(np.count_nonzero(luma <= DARK_LUMA)) / luma.size,
        bright_fraction=float(np.count_nonzero(luma >= BRIGHT_LUMA)) / luma.size,
    )


def problems(measures: QualityMeasures, limits: QualityThresholds) -> tuple[QualityProblem, ...]:
    found: list[QualityProblem] = []
    if measures.sharpness < limits.min_sharpness:
        found.append(QualityProblem.BLURRY)
    if (
        measures.mean_luma < limits.min_mean_luma
        or measures.dark_fraction > limits.max_dark_fraction
    ):
        found.append(QualityProblem.UNDEREXPOSED)
    if (
        measures.mean_luma > limits.max_mean_luma
        or measures.bright_fraction > limits.max_bright_fraction
    ):
        found.append(QualityProblem.OVEREXPOSED)
    if min(measures.width, measures.height) < limits.min_short_side:
        found.append(QualityProblem.LOW_RESOLUTION)
    return tuple(found)


def assess(
    image: Image.Image,
    limits: QualityThresholds,
    role: ImageRole = ImageRole.PICKUP,
    index: int = 0,
    size: tuple[int, int] | None = None,
) -> QualityReport:
    """Measure and judge one decoded image. ``size`` is the full upright size when ``image``
    was decoded at a reduced scale (JPEG draft); the image's own size otherwise."""
    width, height = size if size is not None else image.size
    luma = np.asarray(overview(image), dtype=np.float32)
    measures = measure(luma, width, height)
    return QualityReport(ImageRef(role, index), measures, problems(measures, limits))


def assess_tile(
    tile: NDArray[np.uint8],
    limits: QualityThresholds,
    role: ImageRole,
    index: int,
    size: tuple[int, int],
) -> QualityReport:
    """``assess`` on an image's overview tile (3, S, S) and its full upright ``size``."""
    measures = measure(tile_luma(tile), *size)
    return QualityReport(ImageRef(role, index), measures, problems(measures, limits))
