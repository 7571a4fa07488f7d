"""Decoding untrusted image bytes with Pillow into an upright RGB image.

Safe to call from several threads at once: nothing here changes Pillow's global settings
(``Image.MAX_IMAGE_PIXELS``, ``ImageFile.LOAD_TRUNCATED_IMAGES``, warning filters), so the pixel
limit is enforced by checking the header's size before any pixel is decoded.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

from inference_svc.domain.errors import InspectionError, Reason, Stage, image_error

logger = logging.getLogger(__name__)

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP")
# Importing the plugins registers them, so Image.open never runs Pillow's lazy plugin
# initialisation from worker threads.
_PLUGINS = (JpegImagePlugin, PngImagePlugin, WebPImagePlugin)
_STAGE = Stage.DECODE
_EXIF_ORIENTATION = 0x0112
# The transposition that makes each EXIF orientation upright (as in ImageOps.exif_transpose).
_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = frozenset({5, 6, 7, 8})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def sniff_format(data: bytes) -> str | None:
    """The allowed format announced by the file's magic bytes, or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


@dataclass
class ProbedImage:
    """An image whose header has been read and vetted; no pixel decoded yet."""

    image: Image.Image
    format: str  # one of ALLOWED_FORMATS
    orientation: int  # EXIF orientation, 1 when absent or unreadable
    width: int  # upright size (after the EXIF orientation is applied)
    height: int


def _undecodable(field_path: str, message: str) -> InspectionError:
    return image_error(Reason.IMAGE_UNDECODABLE, field_path, message, stage=_STAGE)


def probe_image(data: bytes, field_path: str, max_pixels: int) -> ProbedImage:
    """Check magic bytes, format and pixel count from the header, without decoding pixels."""
    sniffed = sniff_format(data)
    if sniffed is None:
        raise _undecodable(field_path, "not a JPEG, PNG or WebP image (unrecognised file header)")
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _undecodable(
            field_path, f"image dimensions exceed the decompression-bomb limit: {exc}"
        ) from None
    except Exception as exc:
        raise _undecodable(
            field_path, f"cannot read {sniffed} header ({type(exc).__name__})"
        ) from None
    # MPO is Pillow's name for JPEGs carrying extra pictures; the first one is a plain JPEG.
    fmt = "JPEG" if image.format == "MPO" else (image.format or "")
    if fmt != sniffed or fmt not in ALLOWED_FORMATS:
        raise _undecodable(field_path, f"format {image.format} is not allowed")
    width, height = image.size
    if width <= 0 or height <= 0:
        raise _undecodable(field_path, "image has no pixels")
    if width * height > max_pixels:
        raise _undecodable(
            field_path,
            f"image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_pixels} (decompression-bomb guard)",
        )
    orientation = _orientation(image)
    if orientation in _SWAPS_AXES:
        width, height = height, width
    return ProbedImage(image, fmt, orientation, width, height)


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a corrupt EXIF block does not spoil the pixels; keep them as stored
        logger.debug("unreadable EXIF block ignored", exc_info=True)
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def load_rgb(
    probed: ProbedImage, field_path: str, draft_size: tuple[int, int] | None = None
) -> Image.Image:
    """Decode the first frame, upright, as 8-bit RGB.

    ``draft_size`` (upright width, height) lets a JPEG be decoded at a reduced DCT scale, never
    below that size.
    """
    image = probed.image
    try:
        if draft_size is not None and probed.format == "JPEG":
            w, h = draft_size
            if probed.orientation in _SWAPS_AXES:
                w, h = h, w
            image.draft("RGB", (w, h))
        image.load()
        transpose = _TRANSPOSE.get(probed.orientation)
        upright = image.transpose(transpose) if transpose is not None else image
        return _to_rgb(upright)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _undecodable(field_path, f"decompression-bomb limit exceeded: {exc}") from None
    except Exception as exc:
        raise _undecodable(
            field_path, f"cannot decode {probed.format} data ({type(exc).__name__}: {exc})"
        ) from None


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES:
        # Pillow clips 16-bit values to 255 when converting; rescale to 8 bits instead.
        wide = np.asarray(image).astype(np.int64)
        narrow = ((np.clip(wide, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(narrow).convert("RGB")
    if mode == "F":
        values = np.clip(np.asarray(image), 0.0, 255.0).round().astype(np.uint8)
        return Image.fromarray(values).convert("RGB")
    if mode in ("PA", "La"):
        image = image.convert("RGBA")
    # Transparency is dropped, as the replaced service's convert("RGB") did, so a model
    # fine-tuned on its inputs sees the same pixels.
    return image.convert("RGB")


def decode_image(data: bytes, field_path: str, max_pixels: int) -> tuple[Image.Image, str]:
    """Decode untrusted bytes into an upright RGB image; returns (image, format)."""
    probed = probe_image(data, field_path, max_pixels)
    return load_rgb(probed, field_path), probed.format
