"""Shared fixtures: one demo model built per test session (offline, from the bundled config)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import DynamicCache

from bench.baseline import EngineKind, ForcedLength
from inference_svc.engine import token_rules
from inference_svc.engine.api import GenerationRequest
from inference_svc.engine.config import EngineConfig
from inference_svc.engine.local import LocalEngine
from inference_svc.engine.model_builder import ensure_demo_model

TILE = 448


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def demo_model_dir(model_cache: Path) -> Path:
    return ensure_demo_model(model_cache)


def tiles(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, TILE, TILE)).astype(np.float32)


def make_request(
    request_id: str,
    prompt: str = "<image>\nIs the seal intact?",
    tiles_per_image: tuple[int, ...] = (1,),
    max_new_tokens: int = 16,
    seed: int = 0,
    **kwargs: Any,
) -> GenerationRequest:
    return GenerationRequest(
        request_id=request_id,
        prompt=prompt,
        pixel_values=tiles(sum(tiles_per_image), seed),
        tiles_per_image=tiles_per_image,
        max_new_tokens=max_new_tokens,
        **kwargs,
    )


class Recorder:
    """A GenerationListener that records what it was told."""

    def __init__(self) -> None:
        self.queued: list[int] = []
        self.started = 0
        self.tokens: list[tuple[int, str]] = []

    def on_queued(self, position: int) -> None:
        self.queued.append(position)

    def on_started(self) -> None:
        self.started += 1

    def on_tokens(self, tokens_generated: int, text_so_far: str) -> None:
        self.tokens.append((tokens_generated, text_so_far))


EngineFactory = Callable[..., Any]


def assert_decode_matches_forward(decoder: Any, model: Any) -> None:
    """Three rows of different lengths prefilled into ``decoder`` (a SlotDecoder), one step:
    each row's logits equal the model's own forward over the whole sequence."""
    lengths = (29, 8, 17)
    prompts = [torch.randint(20, 900, (n,)).tolist() for n in lengths]
    for slot, ids in enumerate(prompts):
        decoder.prefill(slot, ids, None)
    nxt = [9, 10, 11]
    logits = decoder.decode(nxt, list(lengths))
    with torch.no_grad():
        for row, ids in enumerate(prompts):
            full = torch.tensor([[*ids, nxt[row]]])
            out = model(input_ids=full, past_key_values=DynamicCache(config=model.config))
            torch.testing.assert_close(logits[row], out.logits[0, -1], rtol=1e-4, atol=1e-4)


async def until(predicate: Callable[[], bool]) -> None:
    """Waits for an engine state; synchronisation only (pytest's timeout bounds it), never a
    timing assertion."""
    while not predicate():  # noqa: ASYNC110 - the engines expose no event for these states
        await asyncio.sleep(0.005)


@pytest.fixture
def engine_mode() -> str:
    """The engine_mode engine_factory uses unless a test names one (modules override this)."""
    return "continuous"


_KINDS: dict[str, EngineKind] = {
    "continuous": "local",
    "continuous-serial-prefill": "local",
    "batched": "batched",
    "sequential": "sequential",
}


@pytest.fixture
async def engine_factory(
    model_cache: Path, engine_mode: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[EngineFactory]:
    """In-process engines of ``engine_mode``: the service's local engine ("continuous", its
    step thread prefilling with "continuous-serial-prefill"), the generate runner only
    ("batched") or the sequential baseline. Rows run to their max_new_tokens (the untrained
    model's stop tokens would otherwise end them at random points) unless their grammar ends
    them. ``batch_wait_ms``, ``kv_cache`` and ``progress_every_tokens`` set the engine's
    internal constants."""
    engines: list[LocalEngine] = []

    async def make(**overrides: Any) -> LocalEngine:
        overrides.setdefault("device", "cpu")
        overrides.setdefault("engine_process", False)
        mode = overrides.pop("engine_mode", engine_mode)
        if mode == "continuous-serial-prefill":
            overrides.setdefault("prefill_overlap", "off")
        wait_ms = overrides.pop("batch_wait_ms", None)
        kv_cache = overrides.pop("kv_cache", None)
        every = overrides.pop("progress_every_tokens", None)
        if every is not None:
            monkeypatch.setattr(token_rules, "PROGRESS_EVERY_TOKENS", every)
        config = EngineConfig(model_cache_dir=model_cache, **overrides)
        engine = ForcedLength(_KINDS[mode])(config)
        if wait_ms is not None:
            engine._batch_wait_s = wait_ms / 1000
        if kv_cache is not None:
            engine.kv_cache = kv_cache
        await engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.stop()


@pytest.fixture
def worker_blocker() -> Iterator[Callable[[LocalEngine], threading.Event]]:
    """Occupies an engine's model thread until the returned event is set."""
    events: list[threading.Event] = []

    def block(engine: LocalEngine) -> threading.Event:
        release = threading.Event()
        events.append(release)
        decoder = getattr(engine.runner, "decoder", None)
        if decoder is not None:
            # The slot runner's model thread never returns to the executor: hold it in
            # the next prefill instead (the request is taken from the queue, then waits). Both
            # the step thread's prefill and the prefill thread's go through prefill_detached.
            prefill = decoder.prefill_detached

            def held(*args: Any) -> Any:
                release.wait()
                return prefill(*args)

            decoder.prefill_detached = held
            return release
        executor = engine._host.executor
        assert executor is not None
        executor.submit(release.wait)
        return release

    yield block
    for event in events:
        event.set()
