"""IMAGE_RESIZE reaches the preparer the pipeline runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference_svc.app import InferenceApp
from inference_svc.domain.models import FetchedImage, ImageRole, ImageSource
from inference_svc.imaging.testing import encode, textured
from inference_svc.imaging.tiling import prepare_image
from tests.e2e_support import inference_settings


@pytest.mark.parametrize("method", ["torch", "pillow"])
def test_app_prepares_tiles_with_the_configured_resize(tmp_path: Path, method: str) -> None:
    data = encode(textured(1000, 700), "PNG", compress_level=1)
    fetched = FetchedImage(ImageSource(ImageRole.PICKUP, 0, uri="inline"), data, "inline")
    app = InferenceApp(inference_settings(tmp_path, "", image_resize=method))
    try:
        tiles = app.pipeline._prepare(fetched, 2).tiles
    finally:
        app.executor.shutdown()
        app.prepare_executor.shutdown()
    other = "pillow" if method == "torch" else "torch"
    assert isinstance(tiles, np.ndarray)
    assert np.array_equal(tiles, prepare_image(fetched, 2, resize=method).tiles)  # type: ignore[arg-type]
    assert not np.array_equal(tiles, prepare_image(fetched, 2, resize=other).tiles)  # type: ignore[arg-type]
