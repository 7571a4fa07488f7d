"""Settings reach the parts the composition root builds."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from inference_svc.app import InferenceApp, engine_config
from inference_svc.domain.models import FetchedImage, ImageRole, ImageSource, OutputLimits
from inference_svc.engine.config import EngineConfig
from inference_svc.imaging.tiling import prepare_image
from inference_svc.settings import InferenceSettings
from tests.support.e2e import inference_settings
from tests.support.imaging import encode, textured


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_app_prepares_tiles_with_the_configured_preprocessing(tmp_path: Path, mode: str) -> None:
    data = encode(textured(1000, 700), "PNG", compress_level=1)
    fetched = FetchedImage(ImageSource(ImageRole.PICKUP, 0, uri="inline"), data, "inline")
    app = InferenceApp(inference_settings(tmp_path, "", preprocess=mode))
    try:
        tiles = app.prepare(fetched, 2).tiles
        budget = app.pixel_budget()
    finally:
        app.executor.shutdown()
        app.prepare_executor.shutdown()
    other = "exact" if mode == "fast" else "fast"
    assert isinstance(tiles, np.ndarray)
    assert np.array_equal(tiles, prepare_image(fetched, 2, mode=mode).tiles)  # type: ignore[arg-type]
    assert not np.array_equal(tiles, prepare_image(fetched, 2, mode=other).tiles)  # type: ignore[arg-type]
    # Exact mode decodes JPEGs at full size, so the request's pixel budget counts them.
    assert budget.full_size_jpeg is (mode == "exact")


def test_engine_settings_reach_the_engine_config(tmp_path: Path) -> None:
    # Every EngineConfig field with a setting of the same name takes the setting's value;
    # non-default values make a forgotten mapping visible.
    settings = inference_settings(
        tmp_path,
        "",
        prefill_overlap="off",
        grammar_overlap=False,
        pixel_buffer_mb=7,
        torch_threads=3,
        max_batch_size=5,
        worker_nice=4,
        model_trust_remote_code=True,
        system_message="",
        engine_process=False,
        constrained_decoding=False,
    )
    config = engine_config(settings)
    shared = [
        f.name for f in dataclasses.fields(EngineConfig) if f.name in type(settings).model_fields
    ]
    assert {
        "prefill_overlap",
        "grammar_overlap",
        "torch_threads",
        "worker_nice",
        "model_trust_remote_code",
        "system_message",
        "engine_process",
        "pixel_buffer_mb",
    } <= set(shared)
    for name in shared:
        assert getattr(config, name) == getattr(settings, name), name


def test_output_limits_are_the_prompt_templates_not_settings(tmp_path: Path) -> None:
    # What the model is asked to write is part of the versioned prompt template: the app takes
    # the limits from the template it loads, and no setting can change them behind its back.
    assert not {"max_evidence_chars", "max_analysis_chars", "max_result_chars"} & set(
        InferenceSettings.model_fields
    )
    limits = OutputLimits(max_evidence_chars=7, max_analysis_chars=9, max_result_chars=5)
    app = InferenceApp(inference_settings(tmp_path, "", output_limits=limits))
    try:
        assert app.template.limits == limits
    finally:
        app.executor.shutdown()
        app.prepare_executor.shutdown()
