"""Preprocessing benchmark: 12-megapixel JPEG photos to model tiles, the replaced service's path
(``bench.seed_style``: full-resolution decode, then per-tile PIL transforms) against both of
ours (``PREPROCESS``): ``exact`` (full decode, Pillow's bicubic resize once, uint8 tiles) and
``fast`` (reduced-scale JPEG decode with Image.draft, torch's resize, EXIF applied), with each
one's pixel difference from the seed-style tiles. Ours are timed through the normalisation,
which the server leaves to the engine, so every path produces the float32 tensor the vision
tower reads. The photos carry no EXIF orientation, so the modes' EXIF defaults do not differ
here.

    .venv/bin/python -m bench.preprocess
    .venv/bin/python -m bench.preprocess --images 1 --repeats 1 --size 800x600
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from bench.common import argument_parser, fmt, machine, parse_size, percentile, table
from bench.photos import TWELVE_MP, photo_jpeg
from bench.seed_style import seed_style_prepare
from inference_svc.domain.models import FetchedImage, ImageRole, ImageSource
from inference_svc.engine.pixels import normalise_array
from inference_svc.imaging.tiling import PREPROCESS_MODES, PreprocessMode, prepare_image

# Tiles are ImageNet-normalised (1 unit = one std, about 57 grey levels). ``exact`` must equal
# the seed-style tiles; ``fast`` resamples differently (DCT-domain downscale + torch's
# bicubic), so its pixels differ a little everywhere: the bounds below are what "the same
# picture" means for it (mean within ~1 grey level, p99 within ~6).
TOLERANCE_MEAN = 0.02
TOLERANCE_P99 = 0.10


@dataclass
class ModeResult:
    ms: list[float] = field(default_factory=list)
    mean_abs: float = 0.0
    p99_abs: float = 0.0
    max_abs: float = 0.0

    def within_tolerance(self, mode: str) -> bool:
        if mode == "exact":
            return self.max_abs == 0.0
        return self.mean_abs <= TOLERANCE_MEAN and self.p99_abs <= TOLERANCE_P99


@dataclass
class CaseResult:
    role: str
    max_tiles: int
    tiles: int
    seed_ms: list[float]
    modes: dict[str, ModeResult]

    def speedup(self, mode: str) -> float:
        return statistics.median(self.seed_ms) / statistics.median(self.modes[mode].ms)

    @property
    def within_tolerance(self) -> bool:
        return all(r.within_tolerance(m) for m, r in self.modes.items())


def _time(fn: Callable[[], np.ndarray], repeats: int) -> tuple[list[float], np.ndarray]:
    out: list[float] = []
    result = None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        out.append((time.perf_counter() - started) * 1000)
    assert isinstance(result, np.ndarray)
    return out, result


def _ours(fetched: FetchedImage, max_tiles: int, mode: PreprocessMode) -> np.ndarray:
    return normalise_array(np.asarray(prepare_image(fetched, max_tiles, mode=mode).tiles))


def run_case(
    photos: list[bytes],
    role: ImageRole,
    max_tiles: int,
    repeats: int,
    modes: Sequence[PreprocessMode] = ("exact", "fast"),
) -> CaseResult:
    seed_ms: list[float] = []
    results: dict[str, ModeResult] = {mode: ModeResult() for mode in modes}
    diffs: dict[str, list[np.ndarray]] = {mode: [] for mode in modes}
    tiles = 0
    for i, data in enumerate(photos):
        fetched = FetchedImage(ImageSource(role, i, content=data), data, sha256="-")
        s_ms, seed_tiles = _time(functools.partial(seed_style_prepare, data, max_tiles), repeats)
        seed_ms += s_ms
        for mode in modes:
            o_ms, ours_tiles = _time(functools.partial(_ours, fetched, max_tiles, mode), repeats)
            if seed_tiles.shape != ours_tiles.shape:
                raise AssertionError(
                    f"{mode}: tile shapes differ: {seed_tiles.shape} {ours_tiles.shape}"
                )
            tiles = int(ours_tiles.shape[0])
            results[mode].ms += o_ms
            diffs[mode].append(np.abs(seed_tiles - ours_tiles).ravel())
    for mode in modes:
        diff = np.concatenate(diffs[mode])
        result = results[mode]
        result.mean_abs = float(diff.mean())
        result.p99_abs = float(np.percentile(diff, 99))
        result.max_abs = float(diff.max())
    return CaseResult(role.value, max_tiles, tiles, seed_ms, results)


def report(cases: list[CaseResult]) -> str:
    body = []
    for c in cases:
        for mode, r in c.modes.items():
            body.append(
                [
                    f"{c.role} (max_tiles={c.max_tiles})",
                    str(c.tiles),
                    fmt(statistics.median(c.seed_ms), 1),
                    mode,
                    fmt(statistics.median(r.ms), 1),
                    fmt(percentile(r.ms, 99), 1),
                    f"{c.speedup(mode):.2f}x",
                    f"{r.mean_abs:.4f}",
                    f"{r.p99_abs:.4f}",
                    f"{r.max_abs:.3f}",
                    "yes" if r.within_tolerance(mode) else "NO",
                ]
            )
    headers = [
        "case",
        "tiles",
        "seed p50 ms",
        "mode",
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
        "--modes",
        nargs="+",
        choices=PREPROCESS_MODES,
        default=list(PREPROCESS_MODES),
        help="ours: the PREPROCESS modes to run",
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
        f"one thread, one image at a time; ours: PREPROCESS={'/'.join(args.modes)}",
        flush=True,
    )
    # Each path once untimed, so lazy imports and first-call allocations are not measured.
    seed_style_prepare(photos[0], 1)
    warm = FetchedImage(ImageSource(ImageRole.PICKUP, 0, content=photos[0]), photos[0], sha256="-")
    for mode in args.modes:
        prepare_image(warm, 1, mode=mode)
    cases = [
        run_case(photos, ImageRole.REFERENCE, 1, args.repeats, args.modes),
        run_case(portrait, ImageRole.PICKUP, 2, args.repeats, args.modes),
    ]
    print()
    print(report(cases))
    print(
        f"\ntolerance (normalised units): exact max |diff| == 0; fast mean |diff| <= "
        f"{TOLERANCE_MEAN}, p99 |diff| <= {TOLERANCE_P99}"
    )
    print(
        "RATIOS seed-style/ours time: "
        + "; ".join(f"{c.role} {m} {c.speedup(m):.2f}x" for c in cases for m in c.modes)
        + "; tiles within tolerance: "
        + ("yes" if all(c.within_tolerance for c in cases) else "NO")
    )
    return cases


if __name__ == "__main__":
    main()
