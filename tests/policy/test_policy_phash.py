"""The perceptual hash: a catalogue photo re-encoded, resized to 90 % and recompressed at JPEG
quality 60 stays within the default distance; other photos of the same product (another crop of
the scene) and unrelated photos do not."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from inference_svc.domain.policy import FraudChecks
from inference_svc.imaging.phash import dhash, dhash_of_grey, from_signed, hamming, to_signed
from inference_svc.imaging.quality import overview
from tests.support.imaging import encode, textured

THRESHOLD = FraudChecks().catalogue_max_distance
REUSE_THRESHOLD = FraudChecks().reused_max_distance
SEEDS = range(8)


def decoded(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def reworked(reference: Image.Image) -> Image.Image:
    """What an agent uploading the catalogue photo sends: re-encoded, 90 %, JPEG quality 60."""
    again = decoded(encode(reference, "PNG", compress_level=1))
    width, height = again.size
    smaller = again.resize((width * 9 // 10, height * 9 // 10), Image.Resampling.BICUBIC)
    return decoded(encode(smaller, "JPEG", quality=60))


@pytest.mark.parametrize("seed", SEEDS)
def test_the_reworked_catalogue_photo_is_caught(seed: int) -> None:
    reference = decoded(encode(textured(800, 600, seed=seed), "JPEG", quality=90))
    distance = hamming(dhash(reference), dhash(reworked(reference)))
    assert distance <= REUSE_THRESHOLD <= THRESHOLD


@pytest.mark.parametrize("seed", SEEDS)
def test_another_photo_of_the_same_scene_is_not(seed: int) -> None:
    scene = textured(1200, 900, seed=seed)
    catalogue = scene.crop((0, 0, 800, 600))
    pickup = scene.crop((300, 200, 1100, 800))
    assert hamming(dhash(catalogue), dhash(pickup)) > THRESHOLD


@pytest.mark.parametrize("seed", SEEDS)
def test_an_unrelated_photo_is_not(seed: int) -> None:
    a = textured(800, 600, seed=seed)
    b = textured(800, 600, seed=seed + 1000)
    assert hamming(dhash(a), dhash(b)) > THRESHOLD


def test_hash_is_64_bits_and_deterministic() -> None:
    image = textured(640, 480, seed=7)
    value = dhash(image)
    assert 0 <= value < 1 << 64
    assert dhash(image) == value == dhash_of_grey(overview(image))
    assert dhash(image.convert("L")) == value


def test_a_flat_image_hashes_to_zero_and_a_gradient_to_all_ones() -> None:
    assert dhash(Image.new("RGB", (64, 64), (120, 120, 120))) == 0
    ramp = Image.linear_gradient("L").rotate(90).resize((90, 80))  # brighter to the right
    assert dhash(ramp) == (1 << 64) - 1


@pytest.mark.parametrize("value", [0, 1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1])
def test_signed_storage_round_trips(value: int) -> None:
    signed = to_signed(value)
    assert -(1 << 63) <= signed < 1 << 63
    assert from_signed(signed) == value


def test_signed_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match="64-bit"):
        to_signed(1 << 64)
    with pytest.raises(ValueError, match="64-bit"):
        to_signed(-1)
