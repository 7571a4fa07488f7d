"""Prefill overlap: prefills run on their own model thread beside the decode steps."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from inference_svc.engine.api import GenerationRequest, NullListener
from inference_svc.engine.local import LocalEngine
from inference_svc.engine.slot_runner import SlotRunner, overlaps_prefill

from .conftest import EngineFactory, Recorder, make_request, until


async def _solo(engine_factory: EngineFactory, requests: list[GenerationRequest]) -> list[str]:
    alone = await engine_factory(engine_mode="sequential")
    return [(await alone.generate(r, NullListener())).text for r in requests]


def test_prefill_overlap_is_on_for_cpu_unless_configured() -> None:
    assert overlaps_prefill("auto", "cpu")
    assert not overlaps_prefill("auto", "cuda")
    assert not overlaps_prefill("auto", "cuda:1")
    assert overlaps_prefill("on", "cuda") and not overlaps_prefill("off", "cpu")
    with pytest.raises(ValueError, match="prefill overlap"):
        overlaps_prefill("sometimes", "cpu")


@pytest.fixture
def held_prefill() -> Iterator[Callable[[LocalEngine], tuple[threading.Event, threading.Event]]]:
    """Holds the engine's next prefills until released; (entered, release) events."""
    releases: list[threading.Event] = []

    def hold(engine: LocalEngine) -> tuple[threading.Event, threading.Event]:
        decoder = engine.runner.decoder
        assert decoder is not None
        entered, release = threading.Event(), threading.Event()
        releases.append(release)
        prefill = decoder.prefill_detached

        def held(*args: Any) -> Any:
            entered.set()
            release.wait()
            return prefill(*args)

        decoder.prefill_detached = held  # type: ignore[method-assign]
        return entered, release

    yield hold
    for release in releases:  # never leave an engine thread waiting
        release.set()


HeldPrefill = Callable[[LocalEngine], tuple[threading.Event, threading.Event]]


async def _overlapping(engine_factory: EngineFactory, **overrides: Any) -> LocalEngine:
    engine = await engine_factory(engine_mode="continuous", **overrides)
    assert isinstance(engine, LocalEngine) and isinstance(engine.runner, SlotRunner)
    assert engine.runner.overlapping_prefill
    return engine


async def test_serial_prefill_when_configured_off(engine_factory: EngineFactory) -> None:
    engine = await engine_factory(engine_mode="continuous", prefill_overlap="off")
    assert isinstance(engine.runner, SlotRunner) and not engine.runner.overlapping_prefill
    result = await engine.generate(make_request("r", max_new_tokens=9), NullListener())
    assert result.completion_tokens == 9


async def test_running_rows_keep_stepping_while_a_prefill_runs(
    engine_factory: EngineFactory, held_prefill: HeldPrefill
) -> None:
    engine = await _overlapping(engine_factory, max_batch_size=4, progress_every_tokens=1)
    first = make_request("first", max_new_tokens=120, seed=1)
    listener = Recorder()
    running = asyncio.create_task(engine.generate(first, listener))
    await until(lambda: len(listener.tokens) >= 2)
    entered, release = held_prefill(engine)
    late_request = make_request("late", max_new_tokens=8, seed=2)
    late_listener = Recorder()
    late = asyncio.create_task(engine.generate(late_request, late_listener))
    await until(entered.is_set)
    # The first row finishes all its steps while the late prefill is held: steps never wait
    # for a prefill (with serial prefill this await would never return).
    result = await running
    assert result.completion_tokens == 120
    assert late_listener.started == 1 and not late.done()
    await until(lambda: engine.running_rows() == 1)  # the held prefill keeps its slot
    release.set()
    assert (await late).completion_tokens == 8
    assert [result.text, (await late).text] == await _solo(engine_factory, [first, late_request])


async def test_request_cancelled_during_its_prefill_frees_its_slot(
    engine_factory: EngineFactory, held_prefill: HeldPrefill
) -> None:
    engine = await _overlapping(engine_factory, max_batch_size=1)
    entered, release = held_prefill(engine)
    doomed = asyncio.create_task(engine.generate(make_request("doomed"), NullListener()))
    await until(entered.is_set)
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    release.set()
    await until(lambda: engine.running_rows() == 0)
    assert engine.stats().cancelled_rows == 1
    # One slot in all: the next request runs only if the cancelled one gave it back.
    result = await engine.generate(make_request("next", max_new_tokens=5), NullListener())
    assert result.completion_tokens == 5


async def test_failed_prefill_answers_its_request_and_frees_its_slot(
    engine_factory: EngineFactory,
) -> None:
    engine = await _overlapping(engine_factory, max_batch_size=1)
    decoder = engine.runner.decoder
    assert decoder is not None
    prefill = decoder.prefill_detached
    calls = 0

    def failing_once(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("vision tower exploded")
        return prefill(*args)

    decoder.prefill_detached = failing_once  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="vision tower exploded"):
        await engine.generate(make_request("bad"), NullListener())
    result = await engine.generate(make_request("good", max_new_tokens=6), NullListener())
    assert result.completion_tokens == 6
    await until(lambda: engine.running_rows() == 0)


async def test_stop_waits_for_a_prefill_in_progress_and_finishes_its_row(
    engine_factory: EngineFactory, held_prefill: HeldPrefill
) -> None:
    engine = await _overlapping(engine_factory, max_batch_size=2)
    entered, release = held_prefill(engine)
    taken = asyncio.create_task(
        engine.generate(make_request("taken", max_new_tokens=7), NullListener())
    )
    await until(entered.is_set)
    stopping = asyncio.create_task(engine.stop())
    await asyncio.sleep(0.05)
    assert not stopping.done()  # the row in prefill is not dropped
    release.set()
    await stopping
    assert (await taken).completion_tokens == 7
