"""Tiles travel as bytes and are normalised by the engine, on the model's device."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from inference_svc.engine.api import NullListener
from inference_svc.engine.pixels import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PixelStaging,
    check_dtype,
    normalise,
    normalise_array,
)

from .conftest import EngineFactory, make_request


def _reference(pixels: np.ndarray) -> np.ndarray:
    """torchvision's ToTensor + Normalize written out in NumPy float32."""
    mean = np.array(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
    std = np.array(IMAGENET_STD, dtype=np.float32)[:, None, None]
    out: np.ndarray = (pixels.astype(np.float32) / np.float32(255) - mean) / std
    return out


def _bytes(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 448, 448), dtype=np.uint8)


def test_normalise_equals_the_published_transform_bit_for_bit() -> None:
    pixels = _bytes(2)
    every_value = np.arange(256, dtype=np.uint8).repeat(3).reshape(1, 3, 16, 16)
    for sample in (pixels, every_value):
        assert np.array_equal(normalise_array(sample), _reference(sample))
    assert normalise(torch.from_numpy(pixels)).dtype == torch.float32


def test_staging_normalises_bytes_and_passes_normalised_tiles_through() -> None:
    raw = _bytes(2, seed=1)
    ready = np.random.default_rng(2).standard_normal((1, 3, 448, 448)).astype(np.float32)
    staging = PixelStaging("cpu")
    out = staging.stage([torch.from_numpy(raw), torch.from_numpy(ready)], torch.float32)
    assert out.shape == (3, 3, 448, 448) and out.dtype == torch.float32
    assert np.array_equal(out[:2].numpy(), _reference(raw))
    assert np.array_equal(out[2:].numpy(), ready)
    half = staging.stage([torch.from_numpy(raw)], torch.bfloat16)
    assert half.dtype == torch.bfloat16
    assert torch.allclose(half.float(), torch.from_numpy(_reference(raw)), atol=0.02)
    with pytest.raises(ValueError, match="no tiles"):
        staging.stage([], torch.float32)


def test_staging_reuses_its_buffer_and_grows_only_when_needed() -> None:
    staging = PixelStaging("cpu")
    first = staging.stage([torch.from_numpy(_bytes(3))], torch.float32)
    again = staging.stage([torch.from_numpy(_bytes(2, seed=3))], torch.float32)
    assert again.data_ptr() == first.data_ptr() and staging.capacity == 3
    assert np.array_equal(again.numpy(), _reference(_bytes(2, seed=3)))
    bigger = staging.stage([torch.from_numpy(_bytes(5, seed=4))], torch.float32)
    assert staging.capacity == 5
    assert np.array_equal(bigger.numpy(), _reference(_bytes(5, seed=4)))
    staging.release()
    assert staging.capacity == 0


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.float16])
def test_other_dtypes_are_refused(dtype: type) -> None:
    with pytest.raises(ValueError, match="uint8"):
        check_dtype(np.zeros((1, 3, 4, 4), dtype=dtype))
    check_dtype(np.zeros((1, 3, 4, 4), dtype=np.uint8))
    check_dtype(np.zeros((1, 3, 4, 4), dtype=np.float32))


@pytest.fixture(params=["batched", "continuous"])
def engine_mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_byte_tiles_and_their_normalised_twin_give_the_same_answer(
    engine_factory: EngineFactory,
) -> None:
    engine = await engine_factory()
    raw = _bytes(3, seed=4)
    base = make_request("bytes", prompt="<image>\n<image>\nSame?", tiles_per_image=(1, 2))
    as_bytes = dataclasses.replace(base, pixel_values=raw)
    as_floats = dataclasses.replace(base, request_id="floats", pixel_values=_reference(raw))
    other = dataclasses.replace(base, request_id="other", pixel_values=_bytes(3, seed=5))
    first = await engine.generate(as_bytes, NullListener())
    second = await engine.generate(as_floats, NullListener())
    assert first.text == second.text
    assert first.completion_tokens == second.completion_tokens
    # The pixels do reach the model: other pictures, other logits, other tokens here.
    third = await engine.generate(other, NullListener())
    assert third.text != first.text


async def test_engine_refuses_pixels_of_another_dtype(engine_factory: EngineFactory) -> None:
    engine = await engine_factory()
    bad = make_request("f64")
    bad = dataclasses.replace(bad, pixel_values=bad.pixel_values.astype(np.float64))
    with pytest.raises(ValueError, match="pixel_values dtype float64"):
        await engine.generate(bad, NullListener())
