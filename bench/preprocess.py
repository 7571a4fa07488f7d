"""Preprocessing benchmark: 12-megapixel JPEG photos to model tiles, the replaced service's path
(full-resolution decode, then per-tile PIL transforms) against ours (reduced-scale JPEG decode
with Image.draft, one resize, uint8 tiles normalised as the engine does), with the pixel
difference of the tiles. Ours is timed through the normalisation, which the server leaves to the
engine, so both sides produce the float32 tensor the vision tower reads.

    .venv/bin/python -m bench.preprocess
    .venv/bin/python -m bench.preprocess --images 1 --repeats 1 --size 800x600
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench.common import argument_parser, fmt, machine, parse_size, percentile, table
from bench.photos import TWELVE_MP, photo_jpeg
from bench.seed_style import seed_style_prepare
from inference_svc.domain.models import FetchedImage, ImageRole, ImageSource
from inference_svc.engine.pixels import normalise_array
from inference_svc.imaging.tiling import (
    RESIZE_METHODS,
    ResizeMethod,
    prepare_image,
)

# Tiles are ImageNet-normalised (1 unit = one std, about 57 grey levels). The two paths resample
# differently (DCT-domain downscale + one bicubic resize vs. full decode + bicubic resize + a
# second resize per tile), so pixels differ a little everywhere; the bounds below are what "the
# same picture" means here: mean within ~1 grey level, p99 within ~5.
TOLERANCE_MEAN = 0.02
TOLERANCE_P99 = 0.10


@dataclass
class CaseResult:
    role: str
    max_tiles: int
    tiles: int
    seed_ms: list[float]
    ours_ms: list[float]
    mean_abs: float
    p99_abs: float
    max_abs: float

    @property
    def speedup(self) -> float:
        return statistics.median(self.seed_ms) / statistics.median(self.ours_ms)

    @property
    def within_tolerance(self) -> bool:
        return self.mean_abs <= TOLERANCE_MEAN and self.p99_abs <= TOLERANCE_P99


def _time(fn: object, repeats: int) -> tuple[list[float], np.ndarray]:
    out: list[float] = []
    result = None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()  # type: ignore[operator]
        out.append((time.perf_counter() - started) * 1000)
    assert isinstance(result, np.ndarray)
    return out, result


def run_case(
    photos: list[bytes],
    role: ImageRole,
    max_tiles: int,
    repeats: int,
    resize: ResizeMethod = "torch",
) -> CaseResult:
    seed_ms: list[float] = []
    ours_ms: list[float] = []
    diffs: list[np.ndarray] = []
    tiles = 0
    for i, data in enumerate(photos):
        fetched = FetchedImage(ImageSource(role, i, content=data), data, sha256="-")
        s_ms, seed_tiles = _time(lambda d=data: seed_style_prepare(d, max_tiles), repeats)
        o_ms, ours_tiles = _time(
            lambda f=fetched: normalise_array(
                np.asarray(prepare_image(f, max_tiles, resize=resize).tiles)
            ),
            repeats,
        )
        if seed_tiles.shape != ours_tiles.shape:
            raise AssertionError(f"tile shapes differ: {seed_tiles.shape} {ours_tiles.shape}")
        tiles = int(ours_tiles.shape[0])
        seed_ms += s_ms
        ours_ms += o_ms
        diffs.append(np.abs(seed_tiles - ours_tiles).ravel())
    diff = np.concatenate(diffs)
    return CaseResult(
        role=role.value,
        max_tiles=max_tiles,
        tiles=tiles,
        seed_ms=seed_ms,
        ours_ms=ours_ms,
        mean_abs=float(diff.mean()),
        p99_abs=float(np.percentile(diff, 99)),
        max_abs=float(diff.max()),
    )


def report(cases: list[CaseResult]) -> str:
    body = [
        [
            f"{c.role} (max_tiles={c.max_tiles})",
            str(c.tiles),
            fmt(statistics.median(c.seed_ms), 1),
            fmt(percentile(c.seed_ms, 99), 1),
            fmt(statistics.median(c.ours_ms), 1),
            fmt(percentile(c.ours_ms, 99), 1),
            f"{c.speedup:.2f}x",
            f"{c.mean_abs:.4f}",
            f"{c.p99_abs:.4f}",
            f"{c.max_abs:.3f}",
            "yes" if c.within_tolerance else "NO",
        ]
        for c in cases
    ]
    headers = [
        "case",
        "tiles",
        "seed p50 ms",
        "seed p99 ms",
        "ours p50 ms",
        "ours p99 ms",
        "speedup",
        "mean |diff|",
        "p99 |diff|",
        "max |diff|",
        "within tol.",
    ]
    return table(headers, body)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argument_parser("preprocess", __doc__)
    p.add_argument("--images", type=int, default=4, help="distinct photos per case")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per photo and path")
    p.add_argument("--size", type=parse_size, default=TWELVE_MP, help="WxH (default 12 MP)")
    p.add_argument("--quality", type=int, default=90)
    p.add_argument(
        "--resize",
        choices=RESIZE_METHODS,
        default="torch",
        help="ours: IMAGE_RESIZE (torch: the default; pillow: the published filter)",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[CaseResult]:
    args = parse_args(argv)
    print(f"machine: {machine()}")
    started = time.perf_counter()
    w, h = args.size
    # Catalogue photos landscape; pickup photos portrait (as taken on a phone), which is also
    # the orientation that gives a pickup its 2 tiles + thumbnail.
    photos = [photo_jpeg((w, h), seed=i, quality=args.quality) for i in range(args.images)]
    portrait = [photo_jpeg((h, w), seed=100 + i, quality=args.quality) for i in range(args.images)]
    sizes = [len(p) / 1e6 for p in photos + portrait]
    print(
        f"photos: {args.images} landscape {w}x{h} (reference) + {args.images} portrait "
        f"{h}x{w} (pickup), {w * h / 1e6:.1f} MP JPEG q{args.quality}, "
        f"{min(sizes):.2f}-{max(sizes):.2f} MB (generated in "
        f"{time.perf_counter() - started:.0f} s); {args.repeats} timed runs each, "
        f"one thread, one image at a time; ours resizes with {args.resize}",
        flush=True,
    )
    # Each path once untimed, so lazy imports and first-call allocations are not measured.
    seed_style_prepare(photos[0], 1)
    prepare_image(
        FetchedImage(ImageSource(ImageRole.PICKUP, 0, content=photos[0]), photos[0], sha256="-"), 1
    )
    cases = [
        run_case(photos, ImageRole.REFERENCE, 1, args.repeats, args.resize),
        run_case(portrait, ImageRole.PICKUP, 2, args.repeats, args.resize),
    ]
    print()
    print(report(cases))
    print(
        f"\ntolerance (normalised units): mean |diff| <= {TOLERANCE_MEAN}, "
        f"p99 |diff| <= {TOLERANCE_P99}"
    )
    print(
        "RATIOS seed-style/ours time: "
        + "; ".join(f"{c.role} {c.speedup:.2f}x" for c in cases)
        + "; tiles within tolerance: "
        + ("yes" if all(c.within_tolerance for c in cases) else "NO")
    )
    return cases


if __name__ == "__main__":
    main()
