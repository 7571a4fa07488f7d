"""Decoding untrusted image bytes with Pillow into an RGB image (upright when asked to be).

Safe to call from several threads at once: nothing here changes Pillow's global settings
(``Image.MAX_IMAGE_PIXELS``, ``ImageFile.LOAD_TRUNCATED_IMAGES``, warning filters), so the pixel
limit is enforced by checking the header's size before any pixel is decoded.
"""

from __future__ import annotations

import io
import logging
import struct
from dataclasses import dataclass

import numpy as np
from PIL import Image, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

from inference_svc.domain.errors import InspectionError, Reason, Stage, image_error
from inference_svc.domain.models import FetchedImage

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


# Formats Pillow can decode at a reduced scale (JPEG's DCT draft); every other one is decoded
# at full size, so its pixels count against the request's budget.
_REDUCIBLE_FORMATS = frozenset({"JPEG"})


# JPEG start-of-frame markers (the frame's size); C4, C8 and CC are other segments.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_SOS = 0xDA
# Real files have a few dozen segments before the first scan; the cap keeps a file of tiny
# segments from holding the event loop.
_JPEG_MAX_SEGMENTS = 256


def jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) as stored in a JPEG's frame header, found by walking the segments up to
    the first scan (an EXIF thumbnail inside APP1 is skipped with its segment). The last frame
    header before the scan counts, as in Pillow. None when there is none or the walk breaks."""
    if not data.startswith(b"\xff\xd8"):
        return None
    pos, size = 2, None
    for _ in range(_JPEG_MAX_SEGMENTS):
        if pos + 4 > len(data):
            return None
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == _JPEG_SOS:
            return size
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2:
            return None
        if marker in _JPEG_SOF and pos + 9 <= len(data):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            size = (int(width), int(height))
        pos += 2 + length
    return None


def header_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) as stored, read from a PNG, WebP or JPEG header without Pillow; None
    for other formats or a header too short to say. Cheap enough for the event loop."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    if data.startswith(b"\xff\xd8\xff"):
        return jpeg_dimensions(data)
    if sniff_format(data) != "WEBP" or len(data) < 30:
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":  # extended: the canvas size, 24-bit little-endian minus one
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L" and data[20] == 0x2F:  # lossless: two 14-bit fields minus one
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # lossy key frame
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


def _too_many_pixels(field_path: str, width: int, height: int, limit: int) -> InspectionError:
    return image_error(
        Reason.IMAGE_TOO_LARGE,
        field_path,
        f"image is {width}x{height} = {width * height} pixels, over the limit of {limit} pixels",
        stage=_STAGE,
    )


class PixelBudget:
    """The pixels one request may decode at full size, charged from each image's header
    before it is decoded, so ten huge PNGs cannot each take their full-size memory at once.

    JPEGs are charged only with ``full_size_jpeg`` (``PREPROCESS=exact``, which decodes them
    at full size as the published pipeline does); otherwise they decode at the reduced size
    the tiler needs (draft mode) and the per-image limit bounds them. Not thread-safe: charge
    from the event loop.
    """

    def __init__(self, request_limit: int, image_limit: int, full_size_jpeg: bool = False) -> None:
        self.request_limit = request_limit
        self.image_limit = image_limit
        self.full_size_jpeg = full_size_jpeg
        self.used = 0

    def charge(self, fetched: FetchedImage) -> None:
        """Count ``fetched``'s pixels or raise IMAGE_TOO_LARGE (nothing is counted then)."""
        fmt = sniff_format(fetched.data)
        dims = header_dimensions(fetched.data)
        reduced = fmt in _REDUCIBLE_FORMATS and not self.full_size_jpeg
        if fmt is None or reduced or dims is None:
            return  # the decode refuses what it cannot read; a draft JPEG is bounded per image
        width, height = dims
        field_path = fetched.source.field_path
        if width * height > self.image_limit:
            raise _too_many_pixels(field_path, width, height, self.image_limit)
        if self.used + width * height > self.request_limit:
            raise image_error(
                Reason.IMAGE_TOO_LARGE,
                field_path,
                f"image is {width}x{height} = {width * height} pixels; with the request's other "
                f"full-size images that is over the limit of {self.request_limit} "
                "pixels per request",
                stage=_STAGE,
            )
        self.used += width * height


@dataclass
class ProbedImage:
    """An image whose header has been read and vetted; no pixel decoded yet."""

    image: Image.Image
    format: str  # one of ALLOWED_FORMATS
    orientation: int  # EXIF orientation applied; 1 when absent, unreadable or ignored
    width: int  # size after the orientation is applied
    height: int


def _undecodable(field_path: str, message: str) -> InspectionError:
    return image_error(Reason.IMAGE_UNDECODABLE, field_path, message, stage=_STAGE)


def probe_image(
    data: bytes, field_path: str, max_pixels: int, exif_transpose: bool = True
) -> ProbedImage:
    """Check magic bytes, format and pixel count from the header, without decoding pixels.
    ``exif_transpose``: the image will be turned upright by its EXIF orientation (False: kept
    as stored, as the published InternVL pipeline keeps it)."""
    sniffed = sniff_format(data)
    if sniffed is None:
        raise _undecodable(field_path, "not a JPEG, PNG or WebP image (unrecognised file header)")
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError:
        # Pillow's own ceiling, above ours: report the configured limit, never Pillow's.
        dims = header_dimensions(data)
        if dims is not None and dims[0] * dims[1] > max_pixels:
            raise _too_many_pixels(field_path, *dims, max_pixels) from None
        raise image_error(
            Reason.IMAGE_TOO_LARGE,
            field_path,
            f"image is over the limit of {max_pixels} pixels",
            stage=_STAGE,
        ) from None
    except Exception:
        logger.debug("unreadable %s header", sniffed, exc_info=True)
        raise _undecodable(field_path, f"cannot read the {sniffed} header") from None
    # MPO is Pillow's name for JPEGs carrying extra pictures; the first one is a plain JPEG.
    fmt = "JPEG" if image.format == "MPO" else (image.format or "")
    if fmt != sniffed or fmt not in ALLOWED_FORMATS:
        raise _undecodable(field_path, f"format {image.format} is not allowed")
    width, height = image.size
    if width <= 0 or height <= 0:
        raise _undecodable(field_path, "image has no pixels")
    if width * height > max_pixels:
        raise _too_many_pixels(field_path, width, height, max_pixels)
    header = header_dimensions(data)
    # A JPEG whose segments the walk cannot follow is not charged (PixelBudget) and is bounded
    # by the per-image limit alone; every other format must have a readable header.
    if header != (width, height) and not (fmt == "JPEG" and header is None):
        # The request's pixel budget was charged from this header: a file whose decoder
        # reads another size (a second IHDR, say) would slip past it.
        raise _undecodable(field_path, f"inconsistent {fmt} header")
    orientation = _orientation(image) if exif_transpose else 1
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
    probed: ProbedImage,
    field_path: str,
    draft_size: tuple[int, int] | None = None,
    plain_convert: bool = False,
) -> Image.Image:
    """Decode the first frame, turned by ``probed.orientation``, as 8-bit RGB.

    ``draft_size`` (upright width, height) lets a JPEG be decoded at a reduced DCT scale, never
    below that size. ``plain_convert``: Pillow's own ``convert("RGB")`` for every mode, as the
    published pipeline does (16-bit values clip at 255); otherwise 16-bit and float images are
    rescaled to 8 bits.
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
        return _plain_rgb(upright) if plain_convert else _to_rgb(upright)
    except Exception:
        # Pillow's text names its own internals (limits, plugin names): logged, not returned.
        logger.debug("undecodable %s data", probed.format, exc_info=True)
        raise _undecodable(
            field_path, f"cannot decode the {probed.format} data (truncated or corrupt)"
        ) from None


def _plain_rgb(image: Image.Image) -> Image.Image:
    try:
        return image if image.mode == "RGB" else image.convert("RGB")
    except ValueError:  # a mode Pillow cannot convert directly (the published code fails)
        return _to_rgb(image)


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
