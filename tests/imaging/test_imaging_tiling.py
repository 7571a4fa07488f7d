"""Tiling against an independent transcription of InternVL's published preprocessing
(``tests/imaging/published.py``)."""

from __future__ import annotations

import hashlib
import itertools
import random

import numpy as np
import pytest
from PIL import Image

from bench.seed_style import seed_style_prepare, seed_style_tiles
from inference_svc.domain.errors import InspectionError, Reason
from inference_svc.domain.models import FetchedImage, ImageRole, ImageSource
from inference_svc.engine.pixels import normalise_array
from inference_svc.imaging.tiling import (
    choose_grid,
    image_to_tiles,
    prepare_image,
    resize_planar,
    target_ratios,
)
from inference_svc.model_inputs import IMAGENET_MEAN, IMAGENET_STD
from tests.imaging.published import ref_grid, ref_load, ref_target_ratios
from tests.support.imaging import encode, textured

# ---------------------------------------------------------------- size table

_EDGES = [
    1,
    2,
    7,
    100,
    223,
    224,
    225,
    300,
    447,
    448,
    449,
    500,
    672,
    673,
    896,
    1000,
    1344,
    1920,
    3000,
    4032,
]
_RATIOS = [
    (1, 1),
    (3, 2),
    (2, 3),
    (4, 3),
    (3, 4),
    (16, 9),
    (9, 16),
    (5, 4),
    (2, 1),
    (1, 2),
    (3, 1),
    (1, 3),
    (5, 2),
    (7, 3),
    (21, 9),
    (6, 1),
    (1, 6),
    (12, 1),
    (1, 12),
    (13, 10),
    (5, 3),
    (5, 6),
]
_rng = random.Random(20240611)
SIZES: list[tuple[int, int]] = sorted(
    set(itertools.product(_EDGES, _EDGES))
    | {(r[0] * k, r[1] * k) for r in _RATIOS for k in (1, 37, 112, 150, 224, 225, 448, 640)}
    | {(_rng.randint(1, 6000), _rng.randint(1, 6000)) for _ in range(400)}
    | {(_rng.randint(1, 800), _rng.randint(1, 800)) for _ in range(200)}
)
MAX_NUMS = [1, 2, 6, 12]


def test_table_is_large_and_contains_ties() -> None:
    # The table must exercise the tie rule both ways, or it proves little about it.
    ties_taken = ties_refused = 0
    for (w, h), max_num in itertools.product(SIZES, MAX_NUMS):
        diffs = [abs(w / h - i / j) for i, j in ref_target_ratios(1, max_num)]
        if diffs.count(min(diffs)) > 1:
            first = ref_target_ratios(1, max_num)[diffs.index(min(diffs))]
            if ref_grid(w, h, max_num, 448) == first:
                ties_refused += 1
            else:
                ties_taken += 1
    assert len(SIZES) > 1000
    assert ties_taken > 10 and ties_refused > 10


@pytest.mark.parametrize("max_num", MAX_NUMS)
@pytest.mark.parametrize("image_size", [448, 224, 28])
def test_grid_matches_published_algorithm(max_num: int, image_size: int) -> None:
    mismatches = [
        (w, h)
        for w, h in SIZES
        if choose_grid(w, h, 1, max_num, image_size) != ref_grid(w, h, max_num, image_size)
    ]
    assert mismatches == []


@pytest.mark.parametrize("min_num", [1, 2, 3])
def test_candidate_order_matches_published_algorithm(min_num: int) -> None:
    for max_num in range(min_num, 41):
        assert list(target_ratios(min_num, max_num)) == ref_target_ratios(min_num, max_num)


@pytest.mark.parametrize(
    ("size", "max_num", "grid"),
    [
        ((672, 448), 2, (2, 1)),  # aspect 1.5 ties (1,1) and (2,1); area > half of 2 tiles
        ((150, 100), 2, (1, 1)),  # same tie, small image: stays at one tile
        ((448, 672), 2, (1, 2)),
        ((4000, 3000), 2, (1, 1)),
        ((3000, 4000), 2, (1, 2)),  # 0.75 ties 1/1 and 1/2; big image takes (1, 2)
        ((1920, 1080), 6, (2, 1)),
        ((1920, 1080), 12, (4, 2)),  # 2/1 and 4/2 tie; the later, larger grid wins
        ((6000, 1000), 12, (6, 1)),
        ((100, 100), 12, (1, 1)),
        ((4032, 3024), 1, (1, 1)),
    ],
)
def test_known_grids(size: tuple[int, int], max_num: int, grid: tuple[int, int]) -> None:
    assert choose_grid(*size, 1, max_num, 448) == grid == ref_grid(*size, max_num, 448)


TILE_CASES = [
    ((w, h), m)
    for (w, h) in [
        (40, 40),
        (61, 30),
        (30, 61),
        (90, 30),
        (17, 100),
        (200, 57),
        (43, 28),
        (28, 43),
        (333, 111),
        (5, 3),
    ]
    for m in MAX_NUMS
]


def levels(normalised: np.ndarray) -> np.ndarray:
    """Normalised tiles back to 0..255 levels (float, unrounded)."""
    std = np.array(IMAGENET_STD, dtype=np.float64)[:, None, None]
    mean = np.array(IMAGENET_MEAN, dtype=np.float64)[:, None, None]
    return (normalised.astype(np.float64) * std + mean) * 255.0


@pytest.mark.parametrize(("size", "max_num"), TILE_CASES)
def test_tiles_match_published_pipeline_exactly(size: tuple[int, int], max_num: int) -> None:
    image = textured(*size, seed=size[0] * 7 + size[1])
    want = ref_load(image, max_num, 28)
    raw = image_to_tiles(image, max_num, image_size=28, resize="pillow")
    seed = seed_style_tiles(image, max_num, image_size=28)
    assert raw.dtype == np.uint8 and raw.shape == want.shape
    # Our bytes, normalised as the engine does, equal the published transform bit for bit.
    fast = normalise_array(raw)
    assert fast.dtype == np.float32
    assert np.array_equal(fast, want)
    assert np.array_equal(seed, want)


# torch's antialiased bicubic against Pillow's, in levels of 255. Measured on these cases: at
# 448 px (photo-like downscales) max 3 and mean <= 0.22; on the tiny 28 px cases, where a few
# rows are resampled by large factors, max 8 and mean <= 0.22.
TORCH_MAX_LEVELS_448, TORCH_MAX_LEVELS_SMALL, TORCH_MEAN_LEVELS = 3.0, 8.0, 0.25


@pytest.mark.parametrize(("size", "max_num"), TILE_CASES)
def test_torch_resize_stays_within_levels_of_the_published_pipeline(
    size: tuple[int, int], max_num: int
) -> None:
    image = textured(*size, seed=size[0] * 7 + size[1])
    want = levels(ref_load(image, max_num, 28))
    got = image_to_tiles(image, max_num, image_size=28, resize="torch")
    assert got.dtype == np.uint8 and got.shape == want.shape
    diff = np.abs(got.astype(np.float64) - want)
    assert diff.max() <= TORCH_MAX_LEVELS_SMALL + 1e-3
    assert diff.mean() <= TORCH_MEAN_LEVELS


@pytest.mark.parametrize(
    ("size", "max_num"), [((1000, 700), 2), ((700, 1000), 2), ((1200, 500), 6), ((640, 480), 1)]
)
def test_tiles_match_published_pipeline_at_448(size: tuple[int, int], max_num: int) -> None:
    image = textured(*size)
    want = ref_load(image, max_num, 448)
    exact = image_to_tiles(image, max_num, resize="pillow")
    assert np.array_equal(normalise_array(exact), want)
    fast = image_to_tiles(image, max_num, resize="torch")
    diff = np.abs(fast.astype(np.float64) - levels(want))
    assert diff.max() <= TORCH_MAX_LEVELS_448 + 1e-3
    assert diff.mean() <= TORCH_MEAN_LEVELS
    assert (diff < 0.5).mean() >= 0.75  # most bytes identical


def test_resize_methods_agree_on_size_and_refuse_unknown_names() -> None:
    image = textured(300, 200)
    # Pillow's own resize, (H, W, 3) as Pillow lays it out.
    reference = np.asarray(image.resize((120, 50), Image.Resampling.BICUBIC)).astype(np.int16)
    for method in ("torch", "pillow"):
        out = resize_planar(image, (120, 50), method)  # type: ignore[arg-type]
        assert out.shape == (3, 50, 120) and out.dtype == np.uint8
        # Planes in R, G, B order, each the whole image: a layout slip would move bytes by
        # far more than the filters' few levels.
        diff = np.abs(out.transpose(1, 2, 0).astype(np.int16) - reference)
        assert diff.max() <= (0 if method == "pillow" else TORCH_MAX_LEVELS_448 + 1)
    with pytest.raises(ValueError, match="resize method"):
        resize_planar(image, (10, 10), "lanczos")  # type: ignore[arg-type]


def test_thumbnail_only_with_more_than_one_tile() -> None:
    image = textured(120, 40)
    one = image_to_tiles(image, 1, image_size=28)
    assert one.shape == (1, 3, 28, 28)
    three = image_to_tiles(image, 6, image_size=28)
    assert three.shape == (4, 3, 28, 28)  # 3x1 grid + thumbnail
    # The thumbnail is the whole image resized to one tile, by the same filter.
    assert np.array_equal(three[-1], resize_planar(image, (28, 28), "torch"))
    assert image_to_tiles(image, 6, image_size=28, use_thumbnail=False).shape[0] == 3


def test_tiles_are_row_major() -> None:
    # A 3x2 grid of flat colours: tile k must carry colour k.
    colours = [(10, 0, 0), (20, 0, 0), (30, 0, 0), (40, 0, 0), (50, 0, 0), (60, 0, 0)]
    image = Image.new("RGB", (84, 56))
    for k, colour in enumerate(colours):
        image.paste(colour, ((k % 3) * 28, (k // 3) * 28, (k % 3 + 1) * 28, (k // 3 + 1) * 28))
    tiles = image_to_tiles(image, 6, image_size=28)
    assert tiles.shape[0] == 7
    assert tiles[:6, 0, 14, 14].tolist() == [c[0] for c in colours]
    red = normalise_array(tiles)[:6, 0, 14, 14] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    assert np.allclose(red * 255, [c[0] for c in colours], atol=0.5)


# ---------------------------------------------------------------- prepare_image


def fetched(data: bytes, role: ImageRole = ImageRole.PICKUP) -> FetchedImage:
    return FetchedImage(ImageSource(role, 0, uri="https://a.test/x"), data, "https://a.test/x")


def test_prepare_reference_and_pickup() -> None:
    data = encode(textured(1800, 800), "JPEG", quality=90)
    ref = prepare_image(
        fetched(data, ImageRole.REFERENCE), max_tiles=1, image_size=448, max_pixels=64_000_000
    )
    assert ref.num_tiles == 1 and ref.tiles.shape == (1, 3, 448, 448)  # type: ignore[attr-defined]
    pick = prepare_image(fetched(data), max_tiles=2, image_size=448, max_pixels=64_000_000)
    assert pick.num_tiles == 3  # 2x1 grid + thumbnail
    assert (pick.width, pick.height, pick.format, pick.size_bytes) == (1800, 800, "JPEG", len(data))
    assert pick.sha256 == hashlib.sha256(data).hexdigest()
    assert pick.fetched_uri == "https://a.test/x"


def test_prepare_uses_upright_size_for_the_grid() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    data = encode(textured(1000, 500), "JPEG", exif=exif.tobytes())
    prepared = prepare_image(
        fetched(data), max_tiles=2, image_size=448, max_pixels=64_000_000, exif="on"
    )
    assert (prepared.width, prepared.height) == (500, 1000)
    assert prepared.num_tiles == 3  # (1, 2) grid: portrait + thumbnail


def test_prepare_rejects_undecodable() -> None:
    with pytest.raises(InspectionError) as info:
        prepare_image(fetched(b"nope"), max_tiles=2, image_size=448, max_pixels=64_000_000)
    assert info.value.reason is Reason.IMAGE_UNDECODABLE
    assert info.value.metadata["image"] == "pickup_images[0]"


def test_prepare_png_equals_seed_path_exactly() -> None:
    data = encode(textured(1500, 700), "PNG", compress_level=1)
    prepared = prepare_image(
        fetched(data), max_tiles=2, image_size=448, max_pixels=64_000_000, mode="exact"
    )
    assert isinstance(prepared.tiles, np.ndarray) and prepared.tiles.dtype == np.uint8
    assert np.array_equal(normalise_array(prepared.tiles), seed_style_prepare(data, 2))


# Fast path (JPEG decoded at a reduced DCT scale) vs the seed path (full decode, bicubic from
# full size), in normalised units ((x/255 - mean)/std; 1 unit is about 58 levels of 255).
# Measured on these images: mean <= 0.010, 99th percentile <= 0.07, max <= 0.60 (the max sits
# on hard edges, where DCT downscaling and bicubic anti-aliasing differ most).
MEAN_TOL, P99_TOL, MAX_TOL = 0.015, 0.1, 0.75


@pytest.mark.parametrize(
    ("size", "max_tiles"),
    [((3200, 2400), 2), ((2400, 3200), 2), ((2000, 900), 2), ((1600, 1600), 1), ((2400, 1000), 6)],
)
def test_fast_path_matches_seed_path_within_tolerance(
    size: tuple[int, int], max_tiles: int
) -> None:
    data = encode(textured(*size, seed=size[0]), "JPEG", quality=90)
    raw = prepare_image(fetched(data), max_tiles, 448, 64_000_000, mode="fast").tiles
    assert isinstance(raw, np.ndarray)
    fast = normalise_array(raw)
    seed = seed_style_prepare(data, max_tiles)
    assert fast.shape == seed.shape
    diff = np.abs(fast - seed)
    assert diff.mean() <= MEAN_TOL
    assert np.quantile(diff, 0.99) <= P99_TOL
    assert diff.max() <= MAX_TOL
