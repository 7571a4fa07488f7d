"""Shared pieces of the benchmarks: the in-process service, requests, statistics, tables."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import platform
import tempfile
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from rpi.inspection.v1 import inspection_pb2 as pb

from inference_svc.app import InferenceApp, engine_config
from inference_svc.domain.models import OutputLimits
from inference_svc.domain.prompt import PromptTemplate, with_output_limits
from inference_svc.settings import InferenceSettings

from .baseline import ForcedLength, bench_engine

ROOT = Path(__file__).resolve().parents[1]
MODEL_CACHE = ROOT / "var" / "models"

QUESTIONS = (
    pb.Question(type="Colour", label="Is the colour red?", value_to_check="Yes", mandatory=True),
    pb.Question(
        type="Brand", label="Is the brand ACME visible?", value_to_check="Yes", mandatory=True
    ),
    pb.Question(
        type="Damage", label="Is the product damaged?", value_to_check="No", mandatory=True
    ),
)


def quiet_logs() -> None:
    """Per-request warnings (every forced-length output is 'invalid') would drown the tables."""
    logging.basicConfig(level=logging.ERROR)
    for name in ("inference_svc", "svc_common", "persistence_svc", "transformers", "grpc"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with contextlib.suppress(Exception):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]


DEFAULT_TORCH_THREADS = 1


def argument_parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's command line: ``python -m bench.<module>``, its docstring as the help."""
    return argparse.ArgumentParser(
        prog=f"python -m bench.{module}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_torch_threads_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=DEFAULT_TORCH_THREADS,
        help="torch intra-op threads in the server process (0 = torch's default, one per "
        "core). Default 1: on a small machine shared with other work, 2-thread OpenMP regions "
        "stall whenever one of their threads is descheduled (see BENCHMARKS.md).",
    )


def apply_torch_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


def settings(spool_dir: Path, **overrides: object) -> InferenceSettings:
    """Service settings for a benchmark: loopback only, no metrics port, the demo model, no
    recording unless ``persistence_target`` is given. An ``output_limits`` override (an
    OutputLimits: they belong to the prompt template) runs the bundled template with other
    string bounds."""
    values: dict[str, object] = {
        "grpc_listen": "127.0.0.1:0",
        "metrics_port": -1,
        "model_cache_dir": MODEL_CACHE,
        "persistence_target": "",
        "event_spool_dir": spool_dir,
        "allow_http": True,
        "allowed_networks": ["127.0.0.1/32"],
        "drain_grace_s": 5.0,
        "log_level": "ERROR",
    }
    output_limits = overrides.pop("output_limits", None)
    if isinstance(output_limits, OutputLimits):
        template = spool_dir.parent / "prompt.j2"
        template.parent.mkdir(parents=True, exist_ok=True)
        source = with_output_limits(PromptTemplate.bundled_source(), output_limits)
        template.write_text(source, encoding="utf-8")
        values["prompt_template_path"] = template
    values.update(overrides)
    return InferenceSettings(**values)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def serving_app(
    engine: ForcedLength | None, overrides: dict[str, object]
) -> AsyncIterator[InferenceApp]:
    """The whole inference service in this process, on a free loopback port; ``engine``: the
    benchmark engine it serves with (None: the service's own)."""
    with tempfile.TemporaryDirectory(prefix="rpi-bench-") as tmp:
        values = settings(Path(tmp) / "spool", **overrides)
        chosen = None
        if engine is not None:
            chosen = bench_engine(engine, engine_config(values), values.log_level)
        app = InferenceApp(values, engine=chosen)
        await app.start()
        try:
            yield app
        finally:
            await app.stop(5)


def running_app(**overrides: object) -> contextlib.AbstractAsyncContextManager[InferenceApp]:
    """The service with its own engine and these settings."""
    return serving_app(None, overrides)


def make_request(
    references: Sequence[pb.Image],
    pickups: Sequence[pb.Image],
    shipping_id: str = "SHIP-BENCH-1",
) -> pb.InspectRequest:
    return pb.InspectRequest(
        shipping_id=shipping_id,
        product_id="SKU-BENCH",
        product_name="ACME ceramic mug, red",
        reference_images=list(references),
        pickup_images=list(pickups),
        questions=list(QUESTIONS),
    )


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values. p99 of fewer than 100
    samples is the maximum, which is what a reader should assume anyway."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True)
class LatencySummary:
    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> LatencySummary:
        ms = [s * 1000.0 for s in seconds]
        mean = sum(ms) / len(ms) if ms else math.nan
        return cls(len(ms), percentile(ms, 50), percentile(ms, 99), max(ms, default=math.nan), mean)


def ratio(ours: float, baseline: float) -> float:
    return ours / baseline if baseline else math.nan


def fmt(value: float, digits: int = 1) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table (pasted as is into BENCHMARKS.md)."""
    body = [list(map(str, r)) for r in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)
    ]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(list(headers)), "| " + " | ".join("-" * w for w in widths) + " |"]
    out.extend(line(r) for r in body)
    return "\n".join(out)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for text_line in Path("/proc/cpuinfo").read_text().splitlines():
            if text_line.startswith("model name"):
                cpu = text_line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, CUDA {'yes' if torch.cuda.is_available() else 'no'}"
    )


def parse_size(text: str) -> tuple[int, int]:
    """ "4000x3000" -> (4000, 3000), for the benchmarks' --size flags."""
    w, _, h = text.lower().partition("x")
    return int(w), int(h)
