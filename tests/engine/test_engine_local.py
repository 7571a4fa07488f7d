from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from inference_svc.engine.api import (
    EngineNotReady,
    EngineOverloaded,
    GenerationRequest,
    NullListener,
)
from inference_svc.engine.config import EngineConfig
from inference_svc.engine.local import LocalEngine
from inference_svc.engine.runtime import create_engine

from .conftest import EngineFactory, Recorder, make_request, until

Blocker = Callable[[LocalEngine], threading.Event]


SERIAL_PREFILL = "continuous-serial-prefill"


def _depth_is(engine: LocalEngine, depth: int) -> bool:
    return engine.queue_depth() == depth


@pytest.fixture(params=["batched", "continuous", SERIAL_PREFILL])
def engine_mode(request: pytest.FixtureRequest) -> str:
    """Every test here runs on both batching engines (the continuous one with and without
    prefill overlap) unless it names one."""
    return str(request.param)


async def _worker_idle(engine: LocalEngine) -> None:
    await until(lambda: engine.running_rows() == 0 and engine.queue_depth() == 0)


def _variety() -> list[GenerationRequest]:
    return [
        make_request("a", "<image>\nIs the seal intact?", (1,), max_new_tokens=12, seed=1),
        make_request("b", "Image-1: <image>\nImage-2: <image>\nSame colour?", (1, 2), 40, seed=2),
        make_request("c", "No image here, just text.", (), max_new_tokens=25, seed=3),
        make_request(
            "d",
            "<image>\nHow many units are in the package? Answer briefly.",
            (2,),
            max_new_tokens=33,
            seed=4,
        ),
    ]


async def test_concurrent_requests_share_one_batch_and_match_solo_runs(
    engine_factory: EngineFactory,
) -> None:
    engine = await engine_factory(engine_mode="batched", max_batch_size=4, batch_wait_ms=60_000)
    requests = _variety()
    batched = await asyncio.gather(*(engine.generate(r, NullListener()) for r in requests))
    assert [r.batch_size for r in batched] == [4, 4, 4, 4]
    assert engine.stats().batches == 1 + 1  # the warm-up batch + one for all four
    assert [r.completion_tokens for r in batched] == [12, 40, 25, 33]
    assert all(r.finish_reason == "length" for r in batched)
    assert batched[1].prompt_tokens > batched[0].prompt_tokens > batched[2].prompt_tokens

    solo_engine = await engine_factory(engine_mode="sequential")
    assert solo_engine.info.max_batch_size == 1 and solo_engine.info.runner == "generate"
    for request, together in zip(requests, batched, strict=True):
        alone = await solo_engine.generate(request, NullListener())
        assert alone.batch_size == 1
        assert alone.text == together.text, request.request_id
        assert alone.completion_tokens == together.completion_tokens


async def test_static_kv_cache_gives_the_dynamic_cache_outputs(
    engine_factory: EngineFactory,
) -> None:
    # Left padding (prompts of different lengths), a text-only row and rows that stop at
    # different lengths, in one batch each way.
    results = {}
    for kv_cache in ("static", "dynamic"):
        engine = await engine_factory(
            engine_mode="batched", kv_cache=kv_cache, max_batch_size=4, batch_wait_ms=60_000
        )
        assert engine.loaded.kv_cache == kv_cache
        results[kv_cache] = await asyncio.gather(
            *(engine.generate(r, NullListener()) for r in _variety())
        )
    assert [r.batch_size for r in results["static"]] == [4, 4, 4, 4]
    assert [r.text for r in results["static"]] == [r.text for r in results["dynamic"]]
    assert [r.completion_tokens for r in results["static"]] == [12, 40, 25, 33]


async def test_timings_are_reported(engine_factory: EngineFactory) -> None:
    engine = await engine_factory(max_batch_size=2, batch_wait_ms=0)
    result = await engine.generate(make_request("t", max_new_tokens=20), NullListener())
    assert result.timings.prefill_seconds > 0
    assert result.timings.decode_seconds > 0
    assert result.timings.ttft_seconds >= result.timings.prefill_seconds
    assert result.timings.queue_seconds >= 0
    assert engine.stats().tokens_generated >= 20


async def test_full_queue_rejects_at_once(
    engine_factory: EngineFactory, worker_blocker: Blocker
) -> None:
    engine = await engine_factory(max_batch_size=1, batch_wait_ms=0, max_queue_size=2)
    release = worker_blocker(engine)
    first = Recorder()
    tasks = [asyncio.create_task(engine.generate(make_request("r0"), first))]
    await until(lambda: first.started == 1)  # popped into a batch, waiting for the worker
    tasks += [
        asyncio.create_task(engine.generate(make_request(f"r{i}"), NullListener())) for i in (1, 2)
    ]
    await until(lambda: engine.queue_depth() == 2)
    with pytest.raises(EngineOverloaded):
        await engine.generate(make_request("r3"), NullListener())
    release.set()
    results = await asyncio.gather(*tasks)
    assert [r.completion_tokens for r in results] == [16, 16, 16]


async def test_queue_positions_move_and_cancelled_request_leaves_queue(
    engine_factory: EngineFactory, worker_blocker: Blocker
) -> None:
    engine = await engine_factory(max_batch_size=1, batch_wait_ms=0, max_queue_size=8)
    release = worker_blocker(engine)
    listeners = [Recorder() for _ in range(4)]
    tasks = [asyncio.create_task(engine.generate(make_request("r0"), listeners[0]))]
    await until(lambda: listeners[0].started == 1)
    for i in (1, 2, 3):
        tasks.append(asyncio.create_task(engine.generate(make_request(f"r{i}"), listeners[i])))
        await until(functools.partial(_depth_is, engine, i))
    assert [listeners[i].queued for i in (1, 2, 3)] == [[1], [2], [3]]

    tasks[2].cancel()  # r2 leaves the queue at once; r3 moves up
    with pytest.raises(asyncio.CancelledError):
        await tasks[2]
    assert engine.queue_depth() == 2
    assert listeners[3].queued == [3, 2]

    release.set()
    done = await asyncio.gather(tasks[0], tasks[1], tasks[3])
    assert all(r.completion_tokens == 16 for r in done)
    assert listeners[3].queued[-1] == 1
    assert listeners[2].started == 0 and listeners[2].tokens == []
    await _worker_idle(engine)
    assert engine.stats().rows == 1 + 3  # the warm-up row + r0, r1, r3


async def test_cancelled_running_row_stops_and_frees_the_engine(
    engine_factory: EngineFactory,
) -> None:
    engine = await engine_factory(
        max_batch_size=2, batch_wait_ms=0, progress_every_tokens=4, max_new_tokens=12_000
    )
    listener = Recorder()
    # Seconds of forced generation, so the cancellation certainly lands mid-row.
    long = make_request("long", max_new_tokens=12_000)
    task = asyncio.create_task(engine.generate(long, listener))
    await until(lambda: len(listener.tokens) >= 1)
    before = engine.stats().tokens_generated
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _worker_idle(engine)
    assert engine.stats().cancelled_rows == 1
    assert engine.stats().tokens_generated - before < 12_000
    after = await engine.generate(make_request("next", max_new_tokens=5), NullListener())
    assert after.completion_tokens == 5


async def test_deadline_abandons_request(engine_factory: EngineFactory) -> None:
    engine = await engine_factory(max_batch_size=1, batch_wait_ms=0, max_new_tokens=12_000)
    expired = make_request("late", deadline=time.monotonic() - 1)
    with pytest.raises(TimeoutError):
        await engine.generate(expired, NullListener())
    soon = make_request(
        # Long enough to be started even on a loaded machine, far shorter than 12,000 forced
        # tokens take (seconds even with the preallocated cache).
        "soon",
        max_new_tokens=12_000,
        deadline=time.monotonic() + 1.5,
    )
    with pytest.raises(TimeoutError):
        await engine.generate(soon, NullListener())
    await _worker_idle(engine)
    assert engine.stats().cancelled_rows == 1


async def test_progress_is_monotonic_and_ends_at_completion(engine_factory: EngineFactory) -> None:
    engine = await engine_factory(max_batch_size=2, batch_wait_ms=0, progress_every_tokens=3)
    listener = Recorder()
    result = await engine.generate(make_request("p", max_new_tokens=50), listener)
    counts = [count for count, _ in listener.tokens]
    assert counts == sorted(set(counts))
    assert len(counts) >= 50 // 3
    assert counts[-1] == result.completion_tokens == 50
    assert listener.tokens[-1][1] == result.text
    assert listener.queued == [1] and listener.started == 1


async def test_per_row_budgets_and_min_tokens(engine_factory: EngineFactory) -> None:
    engine = await engine_factory(max_batch_size=3, batch_wait_ms=60_000, max_new_tokens=120)
    requests = [
        make_request("x", max_new_tokens=7, seed=5),
        make_request("y", max_new_tokens=60, seed=6),
        make_request("z", max_new_tokens=3000, seed=7),
    ]
    results = await asyncio.gather(*(engine.generate(r, NullListener()) for r in requests))
    # Rows of different budgets share steps. With prefill overlap the short row may run its 7
    # steps before the next prefill is handed over (it does not wait for the others').
    assert results[1].batch_size >= 2
    if not getattr(engine.runner, "overlapping_prefill", False):
        assert all(r.batch_size >= 2 for r in results)
    assert results[0].completion_tokens == 7
    assert results[1].completion_tokens == 60
    # Capped by the engine's max_new_tokens.
    assert 10 <= results[2].completion_tokens <= 120


async def test_invalid_requests_and_lifecycle(
    engine_factory: EngineFactory, model_cache: Path
) -> None:
    engine = create_engine(EngineConfig(model_cache_dir=model_cache, device="cpu"))
    assert not engine.ready
    with pytest.raises(EngineNotReady):
        await engine.generate(make_request("early"), NullListener())
    started = await engine_factory()
    assert started.ready and started.info.untrained and started.info.constrained
    assert started.info.model_name == "internvl-demo-tiny"
    assert started.info.model_revision.startswith("cfg-")
    with pytest.raises(ValueError, match="placeholders"):
        await started.generate(make_request("bad", prompt="no placeholder"), NullListener())
    wrong_size = GenerationRequest("px", "<image>", np.zeros((1, 3, 224, 224), np.float32), (1,), 4)
    with pytest.raises(ValueError, match="pixel_values"):
        await started.generate(wrong_size, NullListener())
    await started.stop()
    assert not started.ready
    with pytest.raises(EngineNotReady):
        await started.generate(make_request("late"), NullListener())
