"""PREPROCESS=exact gives the published InternVL pipeline's tiles byte for byte; fast stays
within its documented tolerance of exact (docs/preprocessing.md).

The published pipeline is re-implemented in ``tests/imaging/published.py`` (``Image.open(...)
.convert("RGB")``, ``dynamic_preprocess``, ``build_transform``); the photos are photo-like
JPEGs of phone-camera size and quality (``bench.photos``)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from bench.photos import photo_jpeg
from inference_svc.domain.errors import InspectionError
from inference_svc.domain.models import FetchedImage, ImageRole, ImageSource
from inference_svc.engine.pixels import normalise_array
from inference_svc.imaging.decode import PixelBudget, header_dimensions
from inference_svc.imaging.tiling import PreprocessMode, applies_exif, prepare_image
from tests.imaging.published import ref_load, ref_open, ref_tile_bytes
from tests.support.imaging import encode, textured

S = 448


def fetched(data: bytes) -> FetchedImage:
    return FetchedImage(ImageSource(ImageRole.PICKUP, 0, uri="https://a.test/x"), data, "x")


def with_orientation(jpeg: bytes, orientation: int) -> bytes:
    """The same JPEG with an EXIF APP1 segment carrying ``orientation`` (as a phone writes
    it: pixels stored as the sensor saw them, the tag says how to show them)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    payload = exif.tobytes()
    segment = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    return jpeg[:2] + segment + jpeg[2:]


@pytest.fixture(scope="module")
def photo_12mp() -> bytes:
    return photo_jpeg((4032, 3024), seed=1)


@pytest.fixture(scope="module")
def portrait_12mp() -> bytes:
    return photo_jpeg((3024, 4032), seed=2)


def assert_published(data: bytes, max_tiles: int, mode: PreprocessMode = "exact") -> np.ndarray:
    """``data``'s tiles in ``mode`` equal the published pipeline's: bytes, then normalised."""
    tiles = prepare_image(fetched(data), max_tiles, S, mode=mode).tiles
    assert isinstance(tiles, np.ndarray) and tiles.dtype == np.uint8
    image = ref_open(data)
    want = ref_tile_bytes(image, max_tiles, S)
    assert tiles.shape == want.shape
    assert tiles.tobytes() == want.tobytes()
    # The engine's normalisation of those bytes is build_transform's ToTensor + Normalize.
    assert np.array_equal(normalise_array(tiles), ref_load(image, max_tiles, S))
    return tiles


# ---------------------------------------------------------------- exact: byte for byte


@pytest.mark.parametrize("max_tiles", [1, 2, 6])
def test_exact_12mp_jpeg(photo_12mp: bytes, max_tiles: int) -> None:
    assert_published(photo_12mp, max_tiles)


def test_exact_12mp_portrait_jpeg(portrait_12mp: bytes) -> None:
    assert assert_published(portrait_12mp, 2).shape[0] == 3  # (1, 2) grid + thumbnail


def test_exact_ignores_exif_orientation_as_the_published_pipeline(photo_12mp: bytes) -> None:
    phone = with_orientation(photo_12mp, 6)  # stored landscape, shown portrait
    assert Image.open(io.BytesIO(phone)).getexif()[0x0112] == 6
    tiles = assert_published(phone, 2)
    assert tiles.shape[0] == 1  # the stored 4:3 landscape: grid (1, 1)
    prepared = prepare_image(fetched(phone), 2, S)
    assert (prepared.width, prepared.height) == (4032, 3024)


def test_exif_is_its_own_choice_in_each_mode(photo_12mp: bytes) -> None:
    phone = with_orientation(photo_12mp, 6)
    assert not applies_exif("exact") and applies_exif("fast")
    assert applies_exif("exact", "on") and not applies_exif("fast", "off")
    # exact + EXIF on: the published pixels of the upright photo (grid (1, 2) + thumbnail).
    upright = prepare_image(fetched(phone), 2, S, mode="exact", exif="on")
    want = ref_tile_bytes(ImageOps.exif_transpose(ref_open(phone)), 2, S)
    assert (upright.width, upright.height) == (3024, 4032)
    assert np.asarray(upright.tiles).tobytes() == want.tobytes()
    # fast turns it upright by default and keeps it as stored when told to.
    assert prepare_image(fetched(phone), 2, S, mode="fast").num_tiles == 3
    assert prepare_image(fetched(phone), 2, S, mode="fast", exif="off").num_tiles == 1


@pytest.mark.parametrize("max_tiles", [1, 2])
def test_exact_png(max_tiles: int) -> None:
    assert_published(encode(textured(1500, 700, seed=3), "PNG", compress_level=1), max_tiles)


def test_exact_png_with_alpha_and_palette() -> None:
    rgba = textured(900, 600, seed=4).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((900, 600)))
    assert_published(encode(rgba, "PNG"), 2)
    assert_published(encode(textured(700, 500, seed=5).quantize(64), "PNG"), 2)


def test_exact_sixteen_bit_png_converts_as_pillow_does() -> None:
    # Pillow's convert("RGB") clips 16-bit values at 255; the published pipeline trains on that.
    wide = (np.arange(600 * 400, dtype=np.uint32).reshape(400, 600) % 1024).astype(np.uint16)
    assert_published(encode(Image.fromarray(wide), "PNG"), 2)


@pytest.mark.parametrize(("size", "max_tiles"), [((320, 240), 2), ((200, 300), 2), ((96, 64), 1)])
def test_exact_small_upscaled_photo(size: tuple[int, int], max_tiles: int) -> None:
    assert_published(photo_jpeg(size, seed=size[0]), max_tiles)


# ---------------------------------------------------------------- fast: within tolerance

# fast vs exact, per image, in levels of 255 (docs/preprocessing.md states these bounds; the
# figures measured on the cases below are there too).
FAST_MEAN_LEVELS, FAST_P99_LEVELS, FAST_MAX_LEVELS = 1.0, 8.0, 32.0


def _levels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).astype(np.float64)


def _assert_fast_within_tolerance(data: bytes, max_tiles: int) -> None:
    exact = np.asarray(prepare_image(fetched(data), max_tiles, S, mode="exact").tiles)
    fast = np.asarray(prepare_image(fetched(data), max_tiles, S, mode="fast").tiles)
    assert fast.shape == exact.shape
    diff = _levels(fast, exact)
    assert diff.mean() <= FAST_MEAN_LEVELS
    assert np.quantile(diff, 0.99) <= FAST_P99_LEVELS
    assert diff.max() <= FAST_MAX_LEVELS


@pytest.mark.parametrize("max_tiles", [1, 2])
def test_fast_12mp_within_tolerance(
    photo_12mp: bytes, portrait_12mp: bytes, max_tiles: int
) -> None:
    _assert_fast_within_tolerance(photo_12mp, max_tiles)
    _assert_fast_within_tolerance(portrait_12mp, max_tiles)


@pytest.mark.parametrize(
    ("size", "max_tiles"),
    [((2000, 900), 6), ((1600, 1600), 2), ((1200, 1600), 2), ((320, 240), 2), ((200, 300), 2)],
)
def test_fast_photo_shapes_within_tolerance(size: tuple[int, int], max_tiles: int) -> None:
    _assert_fast_within_tolerance(photo_jpeg(size, seed=size[1]), max_tiles)


def test_fast_png_within_tolerance() -> None:
    _assert_fast_within_tolerance(encode(textured(1500, 700, seed=6), "PNG", compress_level=1), 2)


def test_fast_is_not_exact(photo_12mp: bytes) -> None:
    # The tolerance tests would pass for two identical paths; fast must differ (draft decode,
    # torch's resize), or the mode would buy nothing.
    exact = prepare_image(fetched(photo_12mp), 2, S, mode="exact").tiles
    fast = prepare_image(fetched(photo_12mp), 2, S, mode="fast").tiles
    assert not np.array_equal(np.asarray(exact), np.asarray(fast))


def test_unknown_mode_is_refused(photo_12mp: bytes) -> None:
    with pytest.raises(ValueError, match="preprocessing mode"):
        prepare_image(fetched(photo_12mp), 2, S, mode="pillow")  # type: ignore[arg-type]


# ---------------------------------------------------------------- exact mode's pixel budget


def test_exact_mode_charges_jpegs_at_full_size(photo_12mp: bytes) -> None:
    phone = with_orientation(photo_12mp, 6)
    assert header_dimensions(phone) == (4032, 3024)  # the APP1 segment is walked past
    exact = PixelBudget(request_limit=30_000_000, image_limit=64_000_000, full_size_jpeg=True)
    exact.charge(fetched(phone))
    exact.charge(fetched(photo_12mp))
    assert exact.used == 2 * 4032 * 3024
    with pytest.raises(InspectionError, match="pixels per request"):
        exact.charge(fetched(photo_12mp))
    fast = PixelBudget(request_limit=30_000_000, image_limit=64_000_000)
    for _ in range(3):
        fast.charge(fetched(photo_12mp))
    assert fast.used == 0  # draft-decoded JPEGs do not count
