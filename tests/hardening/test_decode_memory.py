"""Decode amplification (issue 18 item 5): ten 7900 x 7900 PNGs of about 200 KB each in one
request. Each is under MAX_IMAGE_PIXELS, but every one decodes at full size; the request's pixel
budget refuses the image that would exceed it before it is decoded, so the server's peak memory
follows the budget, not the number of images. Measured in a subprocess running the server."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from bench.photos import flat_png
from inference_svc.allocator import fix_mmap_threshold

ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("decode_memory_probe.py")
SIDE = 7900
# What one full-size decode costs at its peak, per pixel: Pillow holds 8-bit RGB at 4 bytes,
# and the tiler reads it into a 3-byte array that torch's resize copies once more.
BYTES_PER_PIXEL = 4 + 3 + 3
ONE_IMAGE_MIB = SIDE * SIDE * 3 / 2**20  # the RGB pixels of one decode


def run_probe(
    tmp_path: Path,
    png: bytes,
    count: int,
    budget: int,
    mmap_threshold: int | None = None,
    preprocess: str | None = None,
) -> dict[str, object]:
    path = tmp_path / "big.png"
    path.write_bytes(png)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(ROOT / "gen" / "python"), str(ROOT / "tests")]
    )
    done = subprocess.run(
        [sys.executable, str(PROBE), str(path), str(count), str(budget), str(tmp_path)]
        + ([] if mmap_threshold is None else [str(mmap_threshold)])
        + ([] if preprocess is None else [preprocess]),
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


def _held_mib(result: dict[str, object]) -> float:
    after_kib, baseline_kib = result["after_kib"], result["baseline_kib"]
    assert isinstance(after_kib, int) and isinstance(baseline_kib, int)
    return (after_kib - baseline_kib) / 1024


@pytest.mark.slow
@pytest.mark.parametrize("preprocess", ["fast", "exact"])
def test_memory_of_decoded_images_is_returned_when_the_request_ends(
    tmp_path: Path, preprocess: str
) -> None:
    """Six full-size decodes in four preprocessing threads: with the service's allocator
    setting the memory goes back to the OS once the call is answered, in either preprocessing
    mode."""
    count = 6
    fixed = run_probe(
        tmp_path, flat_png(SIDE, SIDE), count, count * SIDE * SIDE, 1 << 20, preprocess
    )
    assert fixed["code"] == "OK", fixed
    # Six decodes peak at about four images' worth per thread; what stays is small change
    # (what the trims leave, 15-30 MiB seen), under half an image's pixels.
    assert _held_mib(fixed) < ONE_IMAGE_MIB / 2, fixed


@pytest.mark.slow
def test_without_the_setting_the_memory_stays(tmp_path: Path) -> None:
    """The control: with glibc's adaptive default (MALLOC_MMAP_THRESHOLD_BYTES=0) the fast
    path's decodes after the first big free come from the threads' heap arenas and stay there,
    which is what the setting prevents (the exact path's Pillow-only resize happens not to
    fragment them as much, so it is no control)."""
    count = 6
    adaptive = run_probe(tmp_path, flat_png(SIDE, SIDE), count, count * SIDE * SIDE, 0, "fast")
    assert adaptive["code"] == "OK", adaptive
    # What glibc keeps varies with thread scheduling; the control is that the bound the
    # setting meets is not met without it.
    assert _held_mib(adaptive) > ONE_IMAGE_MIB / 2, adaptive


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting applies to glibc")
def test_the_allocator_takes_the_threshold_and_zero_leaves_it() -> None:
    assert fix_mmap_threshold(1 << 20) is True
    assert fix_mmap_threshold(0) is False
