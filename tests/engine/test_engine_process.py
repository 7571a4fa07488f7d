"""The engine in its own process: same answers, same contract, and a dead child is reported."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import psutil
import pytest

from bench.baseline import ForcedLength, bench_engine
from inference_svc.engine.api import (
    EngineNotReady,
    EngineOverloaded,
    GenerationRequest,
    NullListener,
)
from inference_svc.engine.config import EngineConfig
from inference_svc.engine.process_client import ProcessEngine
from inference_svc.engine.runtime import create_engine

from .conftest import EngineFactory, Recorder, make_request, until


@pytest.fixture(scope="module")
def process_config(model_cache: Path) -> EngineConfig:
    return EngineConfig(
        model_cache_dir=model_cache,
        device="cpu",
        engine_process=True,
        max_batch_size=2,
        max_queue_size=2,
        max_new_tokens=12_000,
        torch_threads=1,
        worker_nice=3,
    )


@pytest.fixture
async def engine(process_config: EngineConfig) -> AsyncIterator[ProcessEngine]:
    engine = bench_engine(ForcedLength("local"), process_config)
    assert isinstance(engine, ProcessEngine)
    await engine.start()
    yield engine
    await engine.stop()


async def test_answers_equal_the_in_process_engine(
    engine: ProcessEngine, engine_factory: EngineFactory
) -> None:
    assert engine.ready and engine.info.untrained
    assert engine.info.model_name == "internvl-demo-tiny" and engine.info.runner == "slot"
    assert engine.info.model_load_path == "native"
    # Bulk work: the child runs at a lower priority than the server that started it.
    assert engine.pid is not None and engine.pid != os.getpid()
    assert psutil.Process(engine.pid).nice() == min(19, os.nice(0) + 3)
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    requests = [
        make_request("a", max_new_tokens=20, seed=1),
        make_request("b", "A: <image>\nB: <image>\nSame?", (1, 2), 30, seed=2),
        make_request("c", max_new_tokens=64, json_schema=schema, seed=3),
    ]
    listener = Recorder()
    remote = await asyncio.gather(
        engine.generate(requests[0], listener),
        *(engine.generate(r, NullListener()) for r in requests[1:]),
    )
    local_engine = await engine_factory()
    local = [await local_engine.generate(r, NullListener()) for r in requests]
    assert [r.text for r in remote] == [r.text for r in local]
    assert [r.completion_tokens for r in remote] == [r.completion_tokens for r in local]
    assert remote[2].constrained and remote[2].schema_complete is True
    # The listener saw the child's events, in order, on this event loop.
    assert listener.queued[0] >= 1 and listener.started == 1
    counts = [count for count, _ in listener.tokens]
    assert counts == sorted(counts) and counts[-1] == 20
    assert listener.tokens[-1][1] == remote[0].text
    # Counting tokens in the parent agrees with the child's tokenizer.
    assert engine.count_prompt_tokens(requests[1].prompt, (1, 2)) == remote[1].prompt_tokens
    assert engine.stats().rows >= 4
    # The tiles went through shared memory (the equal answers above say they arrived intact).
    assert engine.stats().tiles_shared == len(requests)


async def test_tiles_beyond_the_shared_memory_budget_are_pickled(
    process_config: EngineConfig, engine_factory: EngineFactory
) -> None:
    # 3 MiB of slabs hold a 1-tile request (float32 tiles: 2.4 MB), not a 3-tile one.
    engine = bench_engine(
        ForcedLength("local"), dataclasses.replace(process_config, pixel_buffer_mb=3)
    )
    assert isinstance(engine, ProcessEngine)
    await engine.start()
    try:
        requests = [
            make_request("small", max_new_tokens=6, seed=7),
            make_request("large", "A: <image>\nB: <image>\nSame?", (1, 2), 6, seed=8),
        ]
        remote = [await engine.generate(r, NullListener()) for r in requests]
        stats = engine.stats()
        assert (stats.tiles_shared, stats.tiles_pickled, stats.slab_bytes) == (1, 1, 3 << 20)
    finally:
        await engine.stop()
    local_engine = await engine_factory()
    local = [await local_engine.generate(r, NullListener()) for r in requests]
    assert [r.text for r in remote] == [r.text for r in local]


async def test_cancel_deadline_and_full_queue(engine: ProcessEngine) -> None:
    endless = dict(max_new_tokens=12_000)
    first, second = Recorder(), Recorder()
    running = [
        asyncio.create_task(engine.generate(make_request("r0", **endless), first)),  # type: ignore[arg-type]
        asyncio.create_task(engine.generate(make_request("r1", **endless), second)),  # type: ignore[arg-type]
    ]
    await until(lambda: bool(first.tokens) and bool(second.tokens))  # both slots busy
    queued = [
        asyncio.create_task(
            engine.generate(make_request(f"q{i}", max_new_tokens=4), NullListener())
        )
        for i in range(2)
    ]
    await until(lambda: engine.queue_depth() == 2)
    with pytest.raises(EngineOverloaded):
        await engine.generate(make_request("too-many"), NullListener())

    for task in running:
        task.cancel()
    for task in running:
        with pytest.raises(asyncio.CancelledError):
            await task
    await until(lambda: engine.queue_depth() == 0)  # the freed slots took q0 and q1
    late = make_request("late", **endless, deadline=time.monotonic() + 0.5)  # type: ignore[arg-type]
    with pytest.raises(TimeoutError):
        await engine.generate(late, NullListener())
    done = await asyncio.gather(*queued)
    assert [r.completion_tokens for r in done] == [4, 4]
    assert engine.stats().cancelled_rows >= 2


async def test_bad_requests_keep_their_error_types(engine: ProcessEngine) -> None:
    with pytest.raises(ValueError, match="placeholders"):
        await engine.generate(make_request("bad", prompt="no placeholder"), NullListener())
    wrong = GenerationRequest("px", "<image>", np.zeros((1, 3, 224, 224), np.float32), (1,), 4)
    with pytest.raises(ValueError, match="pixel_values"):
        await engine.generate(wrong, NullListener())
    ok = await engine.generate(make_request("after", max_new_tokens=3), NullListener())
    assert ok.completion_tokens == 3


async def test_a_dead_engine_process_fails_calls_and_reports_not_ready(
    process_config: EngineConfig,
) -> None:
    engine = bench_engine(ForcedLength("local"), process_config)
    assert isinstance(engine, ProcessEngine)
    await engine.start()
    try:
        listener = Recorder()
        endless = make_request("r", max_new_tokens=12_000)
        call = asyncio.create_task(engine.generate(endless, listener))
        await until(lambda: bool(listener.tokens))
        assert engine._process is not None
        os.kill(engine._process.pid, signal.SIGKILL)
        with pytest.raises(EngineNotReady, match="exited"):
            await call
        assert not engine.ready
        with pytest.raises(EngineNotReady):
            await engine.generate(make_request("after"), NullListener())
    finally:
        await engine.stop()


async def test_a_child_that_cannot_load_fails_start(tmp_path: Path) -> None:
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "bert"}')
    engine = create_engine(EngineConfig(model_path=broken, device="cpu", engine_process=True))
    with pytest.raises(RuntimeError, match="not an InternVL checkpoint"):
        await engine.start()
    assert not engine.ready
    await engine.stop()
