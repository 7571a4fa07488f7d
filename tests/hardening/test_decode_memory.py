"""Decode amplification (issue 18 item 5): ten 7900 x 7900 PNGs of about 200 KB each in one
request. Each is under MAX_IMAGE_PIXELS, but every one decodes at full size; the request's pixel
budget refuses the image that would exceed it before it is decoded, so the server's peak memory
follows the budget, not the number of images. Measured in a subprocess running the server."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from tests.support.imaging import png_chunk

ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("decode_memory_probe.py")
SIDE = 7900
# What one full-size decode costs at its peak, per pixel: Pillow holds 8-bit RGB at 4 bytes,
# and the tiler reads it into a 3-byte array that torch's resize copies once more.
BYTES_PER_PIXEL = 4 + 3 + 3


def flat_png(width: int, height: int) -> bytes:
    """A valid PNG that compresses to almost nothing (about 200 KB at 7900 x 7900)."""
    row = b"\x00" + b"\x80" * (width * 3)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", body)
        + png_chunk(b"IEND", b"")
    )


def run_probe(tmp_path: Path, png: bytes, count: int, budget: int) -> dict[str, object]:
    path = tmp_path / "big.png"
    path.write_bytes(png)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(ROOT / "gen" / "python"), str(ROOT / "tests")]
    )
    done = subprocess.run(
        [sys.executable, str(PROBE), str(path), str(count), str(budget), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.slow
def test_ten_huge_pngs_stay_within_the_request_budget(tmp_path: Path) -> None:
    png = flat_png(SIDE, SIDE)
    assert len(png) < 300_000
    budget = SIDE * SIDE  # one such image per request
    result = run_probe(tmp_path, png, count=10, budget=budget)
    assert (result["code"], result["reason"]) == ("INVALID_ARGUMENT", "IMAGE_TOO_LARGE")
    peak_kib, baseline_kib = result["peak_kib"], result["baseline_kib"]
    assert isinstance(peak_kib, int) and isinstance(baseline_kib, int)
    growth_mib = (peak_kib - baseline_kib) / 1024
    # The budget allows one full-size decode (about 600 MiB at its peak); a quarter more covers
    # the decoder's buffers and the request itself. Without the budget four decode at once, one
    # per preprocessing thread: well over twice the bound.
    bound_mib = 1.25 * budget * BYTES_PER_PIXEL / 2**20
    assert growth_mib < bound_mib, result
