"""Hostile and unusual images: every one decodes to upright 8-bit RGB or fails naming the
image: IMAGE_UNDECODABLE, or IMAGE_TOO_LARGE (with the configured limit) for too many pixels."""

from __future__ import annotations

import io
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from inference_svc.domain.errors import InspectionError, Reason
from inference_svc.imaging.decode import decode_image, load_rgb, probe_image
from tests.support.imaging import crafted_png, encode, jpeg_with_size, png_chunk, textured

FIELD = "pickup_images[1]"
LIMIT = 64_000_000


def undecodable(
    data: bytes, max_pixels: int = LIMIT, reason: Reason = Reason.IMAGE_UNDECODABLE
) -> InspectionError:
    with pytest.raises(InspectionError) as info:
        decode_image(data, FIELD, max_pixels)
    err = info.value
    assert err.reason is reason, str(err)
    assert err.metadata["image"] == FIELD
    assert err.message.startswith(f"{FIELD}: ")
    assert err.stage == "decode"
    # Messages speak of the service's limits, never of the decoder's internals.
    assert "Error" not in err.message and "178956970" not in err.message
    return err


def too_many_pixels(data: bytes, max_pixels: int = LIMIT) -> InspectionError:
    err = undecodable(data, max_pixels, Reason.IMAGE_TOO_LARGE)
    assert f"over the limit of {max_pixels} pixels" in err.message
    return err


def halves(width: int, height: int) -> Image.Image:
    """Left half red, right half blue."""
    img = Image.new("RGB", (width, height), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, width // 2, height))
    return img


def mean_colour(img: Image.Image, box: tuple[int, int, int, int]) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(img.crop(box)).reshape(-1, 3).mean(axis=0).round())


def close_to(got: tuple[int, ...], want: tuple[int, ...], tol: int = 12) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(got, want, strict=True))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_allowed_formats_decode(fmt: str) -> None:
    img, got_fmt = decode_image(encode(textured(40, 30), fmt), FIELD, LIMIT)
    assert (img.mode, img.size, got_fmt) == ("RGB", (40, 30), fmt)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated_files(fmt: str) -> None:
    data = encode(textured(300, 200), fmt)
    for cut in (40, len(data) // 2, len(data) * 9 // 10):
        undecodable(data[:cut])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xd8\xff",
        b"GIF89a" + b"\x00" * 100,
        b"<html><body>Access denied</body></html>",
        b"\x00" * 1000,
        bytes(range(256)) * 4,
        b"RIFF\x00\x00\x00\x00WAVEfmt ",
    ],
    ids=["empty", "jpeg-magic-only", "gif-header", "html", "zeros", "random", "riff-wave"],
)
def test_garbage(data: bytes) -> None:
    undecodable(data)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "ICO", "PPM"])
def test_formats_outside_the_allowlist(fmt: str) -> None:
    # Pillow could decode these; the allowlist keeps the attack surface to three decoders.
    err = undecodable(encode(Image.new("RGB", (16, 16), "red"), fmt))
    assert "not a JPEG, PNG or WebP" in err.message


def test_magic_and_content_must_agree() -> None:
    jpeg = encode(textured(32, 32), "JPEG")
    undecodable(b"\x89PNG\r\n\x1a\n" + jpeg[8:])
    undecodable(b"RIFF\x10\x00\x00\x00WEBP" + jpeg)


def test_bomb_dimensions_beyond_pillow_limit() -> None:
    # Pillow refuses this itself (its own ceiling is 178956970 pixels); the message quotes
    # the configured limit all the same.
    err = too_many_pixels(crafted_png(100_000, 100_000))
    assert "100000x100000" in err.message


def test_bomb_dimensions_beyond_configured_limit() -> None:
    # 9000 x 9000 = 81 M pixels: under Pillow's own limit, over ours; refused from the header.
    err = too_many_pixels(crafted_png(9000, 9000))
    assert "81000000 pixels" in err.message
    err = too_many_pixels(jpeg_with_size(encode(textured(64, 64), "JPEG"), 8_000, 9_000))
    assert "72000000 pixels" in err.message


def test_bomb_dimensions_in_pillow_warning_range() -> None:
    # 12000 x 12000 = 144 M: Pillow only warns; the configured limit refuses it.
    with pytest.warns(Image.DecompressionBombWarning):
        too_many_pixels(crafted_png(12_000, 12_000))


def test_small_limit_applies_to_real_images() -> None:
    data = encode(textured(100, 100), "PNG")
    too_many_pixels(data, max_pixels=9_999)
    img, _ = decode_image(data, FIELD, max_pixels=10_000)
    assert img.size == (100, 100)


def test_header_size_larger_than_data() -> None:
    undecodable(crafted_png(2000, 2000, rows=b"\x00" * 10))


def exif_bytes(orientation: int | None, maker_note_size: int = 0) -> bytes:
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    if maker_note_size:
        exif[0x927C] = b"\x5a" * maker_note_size
    return exif.tobytes()


@pytest.mark.parametrize(
    ("orientation", "size", "red_box"),
    [
        (1, (60, 30), (0, 0, 28, 30)),  # red on the left
        (3, (60, 30), (32, 0, 60, 30)),  # rotated 180: red on the right
        (6, (30, 60), (0, 0, 30, 28)),  # rotated 90 clockwise: red on top
        (8, (30, 60), (0, 32, 30, 60)),  # rotated 90 anticlockwise: red at the bottom
        (2, (60, 30), (32, 0, 60, 30)),  # mirrored: red on the right
    ],
)
def test_exif_orientation_is_applied(
    orientation: int, size: tuple[int, int], red_box: tuple[int, int, int, int]
) -> None:
    data = encode(halves(60, 30), "JPEG", quality=95, exif=exif_bytes(orientation))
    img, _ = decode_image(data, FIELD, LIMIT)
    assert img.size == size
    assert close_to(mean_colour(img, red_box), (255, 0, 0))
    probed = probe_image(data, FIELD, LIMIT)
    assert (probed.width, probed.height) == size


def test_huge_exif_block() -> None:
    # A maximal APP1 segment (about 64 KiB of maker note) next to a real orientation tag.
    data = encode(halves(60, 30), "JPEG", exif=exif_bytes(6, maker_note_size=65_000))
    assert len(data) > 65_000
    img, _ = decode_image(data, FIELD, LIMIT)
    assert img.size == (30, 60)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")
def test_corrupt_exif_block_is_ignored() -> None:
    jpeg = encode(halves(60, 30), "JPEG")
    app1 = b"Exif\x00\x00" + b"MM\x00\x2a\xff\xff\xff\xff" + b"\xee" * 60_000
    data = jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]
    img, _ = decode_image(data, FIELD, LIMIT)
    assert img.size == (60, 30)


def test_huge_exif_chunk_in_png() -> None:
    png = encode(halves(60, 30), "PNG")
    exif = b"MM\x00\x2a\x00\x00\x00\x08" + b"\x00" * 2_000_000
    data = png[:33] + png_chunk(b"eXIf", exif) + png[33:]
    img, _ = decode_image(data, FIELD, LIMIT)
    assert img.size == (60, 30)


def test_cmyk_jpeg() -> None:
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # red ink
    img, fmt = decode_image(encode(cmyk, "JPEG", quality=95), FIELD, LIMIT)
    assert (img.mode, fmt) == ("RGB", "JPEG")
    assert close_to(mean_colour(img, (0, 0, 32, 32)), (255, 0, 0))


def test_grayscale_16_bit_png_is_rescaled() -> None:
    levels = np.array([[0, 257 * 100, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    img, _ = decode_image(encode(Image.fromarray(levels), "PNG"), FIELD, LIMIT)
    assert img.mode == "RGB"
    assert np.asarray(img)[0, :, 0].tolist() == [0, 100, 128, 255]


def test_rgb_16_bit_png() -> None:
    row = b"\x00" + struct.pack(">3H", 0xFFFF, 0x8000, 0x0000) * 4
    data = crafted_png(4, 2, bit_depth=16, colour_type=2, rows=row * 2)
    img, _ = decode_image(data, FIELD, LIMIT)
    assert img.mode == "RGB"
    assert close_to(tuple(int(v) for v in np.asarray(img)[0, 0]), (255, 128, 0), tol=1)


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGBA", (8, 8), (10, 20, 30, 0)),
        Image.new("LA", (8, 8), (77, 0)),
        Image.new("L", (8, 8), 77),
        Image.new("1", (8, 8), 1),
        Image.new("P", (8, 8), 3),
    ],
    ids=["RGBA", "LA", "L", "1", "P"],
)
def test_other_modes_become_rgb(image: Image.Image) -> None:
    expected = np.asarray(image.convert("RGBA").convert("RGB"))
    img, _ = decode_image(encode(image, "PNG"), FIELD, LIMIT)
    assert img.mode == "RGB"
    assert np.array_equal(np.asarray(img), expected)


def test_palette_with_transparency() -> None:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    img, _ = decode_image(encode(image, "PNG", transparency=0), FIELD, LIMIT)
    assert tuple(np.asarray(img)[0, 0]) == (200, 100, 50)


def test_animated_webp_gives_first_frame() -> None:
    frames = [Image.new("RGB", (24, 24), c) for c in ("red", "lime", "blue")]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(io.BytesIO(data)).n_frames == 3  # type: ignore[attr-defined]
    img, fmt = decode_image(data, FIELD, LIMIT)
    assert fmt == "WEBP"
    assert close_to(mean_colour(img, (0, 0, 24, 24)), (255, 0, 0))


def test_animated_png_gives_first_frame() -> None:
    frames = [Image.new("RGB", (24, 24), c) for c in ("red", "lime")]
    data = encode(frames[0], "PNG", save_all=True, append_images=frames[1:])
    img, fmt = decode_image(data, FIELD, LIMIT)
    assert fmt == "PNG"
    assert close_to(mean_colour(img, (0, 0, 24, 24)), (255, 0, 0))


def test_progressive_jpeg() -> None:
    src = textured(120, 80)
    img, _ = decode_image(encode(src, "JPEG", progressive=True, quality=95), FIELD, LIMIT)
    assert np.abs(np.asarray(img).astype(int) - np.asarray(src).astype(int)).mean() < 4


def test_jpeg_draft_never_goes_below_the_requested_size() -> None:
    data = encode(textured(1000, 700), "JPEG")
    for target in [(448, 448), (896, 448), (448, 672), (124, 87), (1000, 700), (250, 175)]:
        probed = probe_image(data, FIELD, LIMIT)
        img = load_rgb(probed, FIELD, draft_size=target)
        assert img.width >= target[0] and img.height >= target[1], target
    probed = probe_image(data, FIELD, LIMIT)
    assert load_rgb(probed, FIELD, draft_size=(124, 87)).size == (125, 88)  # 1/8 scale


def test_concurrent_decoding_from_threads() -> None:
    good = [
        encode(textured(200 + i, 150, seed=i), fmt)
        for i, fmt in enumerate(["JPEG", "PNG", "WEBP"] * 4)
    ]
    bad = [crafted_png(9000, 9000), b"junk", good[0][:100]]
    expected = [decode_image(d, FIELD, LIMIT)[0].tobytes() for d in good]

    def run(data: bytes) -> bytes | str:
        try:
            return decode_image(data, FIELD, LIMIT)[0].tobytes()
        except InspectionError as exc:
            return exc.reason.value

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(run, (good + bad) * 3))
    refused = ["IMAGE_TOO_LARGE", "IMAGE_UNDECODABLE", "IMAGE_UNDECODABLE"]
    assert results == [*expected, *refused] * 3


def test_zlib_bomb_in_png_data_is_bounded_by_header() -> None:
    # 1 GB of zeros compresses to about 1 MB; Pillow stops at the declared 100 x 100 rows.
    rows = zlib.compress(b"\x00" * 10_000_000)
    ihdr = struct.pack(">IIBBBBB", 100, 100, 8, 0, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", rows)
        + png_chunk(b"IEND", b"")
    )
    img, _ = decode_image(data, FIELD, LIMIT)
    assert img.size == (100, 100)
