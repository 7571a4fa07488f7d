"""TORCH_COMPILE: the slot runner's decode step compiled with dynamic shapes (CPU here)."""

from __future__ import annotations

import asyncio

import torch

from inference_svc.engine.api import NullListener
from inference_svc.engine.local import LocalEngine
from inference_svc.engine.slot_runner import SlotRunner

from .conftest import (
    EngineFactory,
    Recorder,
    assert_decode_matches_forward,
    make_request,
    until,
)


def _compiled_graphs() -> int:
    # dynamo's own counter of the graphs it compiled in this process (internal, test-only).
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


async def test_compiled_decode_step_serves_and_matches_the_model_forward(
    engine_factory: EngineFactory,
) -> None:
    # One engine, one compilation (in its warm-up): the slowest test of the engine suite.
    engine = await engine_factory(
        engine_mode="continuous", torch_compile=True, max_batch_size=3, progress_every_tokens=1
    )
    assert isinstance(engine, LocalEngine) and isinstance(engine.runner, SlotRunner)
    decoder = engine.runner.decoder
    assert decoder is not None and decoder.compiled
    # The warm-up compiled every shape: serving 1 to 3 rows at ever-changing cache widths
    # compiles nothing more (a request never waits for a compilation).
    graphs = _compiled_graphs()
    steps, row_steps = engine.stats().steps, engine.stats().row_steps
    first = Recorder()
    running = asyncio.create_task(
        engine.generate(make_request("a", max_new_tokens=120, seed=1), first)
    )
    await until(lambda: len(first.tokens) >= 2)  # "a" is mid-generation; the others join it
    late = [
        make_request("b", "Only text here.", (), max_new_tokens=9, seed=2),
        make_request("c", max_new_tokens=15, seed=3),
    ]
    joined = await asyncio.gather(*(engine.generate(r, NullListener()) for r in late))
    result = await running
    assert [result.completion_tokens] + [r.completion_tokens for r in joined] == [120, 9, 15]
    # Some steps ran several rows: the batch size changed under the compiled step.
    assert engine.stats().row_steps - row_steps > engine.stats().steps - steps
    assert _compiled_graphs() == graphs

    # Numerics of the compiled step, on the idle engine's own decoder, against the model.
    assert_decode_matches_forward(decoder, engine.loaded.model)
