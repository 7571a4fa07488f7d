"""Synthetic, photo-like JPEGs: smooth lighting gradients, a few objects with hard edges,
fine texture and sensor noise, saved at phone-camera quality.

Flat synthetic images compress to almost nothing and decode unrealistically fast; these have
roughly the entropy (and so the file size and decode cost) of real 12-megapixel photos.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

TWELVE_MP = (4000, 3000)


def photo_jpeg(size: tuple[int, int] = TWELVE_MP, seed: int = 0, quality: int = 90) -> bytes:
    """A deterministic photo-like RGB JPEG of ``size`` (width, height)."""
    rng = np.random.default_rng(seed)
    w, h = size
    # Lighting: a smooth two-axis gradient per channel around a random base colour.
    ys = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    xs = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :, None]
    base = rng.uniform(70, 190, 3).astype(np.float32)
    gx = rng.uniform(-50, 50, 3).astype(np.float32)
    gy = rng.uniform(-50, 50, 3).astype(np.float32)
    background = base + gx * xs + gy * ys
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8), "RGB")
    # Objects: filled shapes with outlines give the hard edges a product photo has.
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = int(rng.uniform(0, w * 0.8)), int(rng.uniform(0, h * 0.8))
        x1 = x0 + int(rng.uniform(w * 0.05, w * 0.4))
        y1 = y0 + int(rng.uniform(h * 0.05, h * 0.4))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        outline = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x1, y1), fill=fill, outline=outline, width=max(2, w // 400))
    for _ in range(20):  # thin lines: text-like and seam-like detail
        pts = [(int(rng.uniform(0, w)), int(rng.uniform(0, h))) for _ in range(2)]
        draw.line(pts, fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=3)
    # Optics: a slight blur, then texture and noise on top (as a sensor adds it).
    image = image.filter(ImageFilter.GaussianBlur(1.2))
    pixels = np.asarray(image, dtype=np.int16)
    small = rng.standard_normal((h // 4 + 1, w // 4 + 1), dtype=np.float32) * np.float32(10.0)
    texture = np.asarray(
        Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR), np.float32
    )[:, :, None]
    noise = rng.standard_normal((h, w, 3), dtype=np.float32) * np.float32(4.0)
    out = np.clip(pixels + texture + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(out, "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


def flat_png(width: int, height: int, shade: int = 0x80) -> bytes:
    """The decode-amplification worst case: a valid one-colour RGB PNG that compresses to
    almost nothing (about 200 KB at 7900 x 7900) and decodes at full size (PNG has no draft
    mode), so its decoded pixels outweigh its bytes about a thousand to one."""
    row = b"\x00" + bytes([shade]) * (width * 3)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", body)
        + _png_chunk(b"IEND", b"")
    )
