"""The image quality gate's measures: blur, exposure and resolution of an already decoded image.

Sharpness and exposure are measured on a greyscale preview scaled down to ``ANALYSIS_SIDE``
pixels on its longer side (never up), so one threshold holds for every camera resolution and the
cost stays a few milliseconds per image whatever its size. CPU-bound and synchronous: call it in
a worker thread, never on the event loop.

- sharpness: variance of the Laplacian (4-neighbour kernel) of the preview's luma; blur removes
  the high frequencies the Laplacian responds to, so the variance falls;
- exposure: mean luma (0-255) and the share of crushed (<= ``DARK_LUMA``) and blown
  (>= ``BRIGHT_LUMA``) pixels;
- resolution: the decoded image's shorter side.

Thresholds are the policy's (``QualityThresholds``).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from inference_svc.domain.models import ImageRole
from inference_svc.domain.outcome import ImageRef, QualityMeasures, QualityProblem, QualityReport
from inference_svc.domain.policy import QualityThresholds

ANALYSIS_SIDE = 512
DARK_LUMA = 16
BRIGHT_LUMA = 239


def preview(image: Image.Image, side: int = ANALYSIS_SIDE) -> Image.Image:
    """A greyscale ("L") copy at most ``side`` pixels on its longer side (also what the
    perceptual hash is computed from, so an image is scaled and converted once)."""
    width, height = image.size
    longer = max(width, height)
    factor = longer // side
    if factor >= 2:
        # Integer box reduction first (cheap), then a bilinear resize to the exact size.
        image = image.reduce(factor)
    grey = image if image.mode == "L" else image.convert("L")
    width, height = grey.size
    longer = max(width, height)
    if longer > side:
        size = (max(1, round(width * side / longer)), max(1, round(height * side / longer)))
        grey = grey.resize(size, Image.Resampling.BILINEAR)
    return grey


def measure(grey: Image.Image, width: int, height: int) -> QualityMeasures:
    """The measures of a ``preview``; ``width`` and ``height`` are the full decoded size."""
    luma = np.asarray(grey, dtype=np.float32)
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
    measures = measure(preview(image), width, height)
    return QualityReport(ImageRef(role, index), measures, problems(measures, limits))
