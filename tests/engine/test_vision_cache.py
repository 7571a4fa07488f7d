"""The vision-feature cache: an image sent by reference gives the same tokens as its pixels,
the cache is bounded in bytes (least recently used out), and a reference the engine does not
hold is refused with ImagesNotCached, in process and across the engine process."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import pytest
import torch

from bench.baseline import ForcedLength, bench_engine
from inference_svc.engine.api import GenerationRequest, ImagesNotCached, NullListener
from inference_svc.engine.config import EngineConfig
from inference_svc.engine.process_client import ProcessEngine
from inference_svc.engine.vision_cache import VisionFeatureCache
from inference_svc.imaging.tiling import prepare_image
from inference_svc.pipeline.reference_reuse import ReferenceReuse, fingerprint

from .conftest import EngineFactory, make_request

PROMPT = "Catalogue: <image>\nPickup: <image>\nIs it the same product?"
CACHE_BYTES = 64 << 20


def _requests() -> tuple[GenerationRequest, GenerationRequest, GenerationRequest]:
    """The same request three ways: plain, with the catalogue image keyed, and with that
    image by reference (its tile left out of pixel_values)."""
    plain = make_request("plain", PROMPT, (1, 2), max_new_tokens=24, seed=5)
    keyed = dataclasses.replace(plain, request_id="keyed", image_keys=("sku-1/ref-0", ""))
    by_reference = dataclasses.replace(
        keyed, request_id="by-ref", pixel_values=plain.pixel_values[1:], by_reference=(0,)
    )
    return plain, keyed, by_reference


@pytest.mark.parametrize("engine_mode", ["continuous", "continuous-serial-prefill"])
async def test_cached_features_give_the_same_tokens_as_pixels(
    engine_factory: EngineFactory,
) -> None:
    off = await engine_factory(vision_cache_bytes=0)
    on = await engine_factory(vision_cache_bytes=CACHE_BYTES)
    assert not off.info.vision_cache and on.info.vision_cache
    plain, keyed, by_reference = _requests()
    expected = await off.generate(plain, NullListener())
    first = await on.generate(keyed, NullListener())
    assert on.stats().vision_cache_misses == 1 and on.stats().vision_cache_entries == 1
    again = await on.generate(by_reference, NullListener())
    # Pixels sent although the engine holds the features: they are used, not re-encoded.
    resent = await on.generate(dataclasses.replace(keyed, request_id="resent"), NullListener())
    assert [first.text, again.text, resent.text] == [expected.text] * 3
    assert first.completion_tokens == expected.completion_tokens == 24
    assert again.prompt_tokens == expected.prompt_tokens
    stats = on.stats()
    assert (stats.vision_cache_hits, stats.vision_cache_misses) == (2, 1)
    assert stats.vision_cache_bytes > 0 and stats.vision_cache_evictions == 0
    # An unknown reference is refused before it is queued, naming the image.
    unknown = dataclasses.replace(by_reference, request_id="unknown", image_keys=("other", ""))
    with pytest.raises(ImagesNotCached) as refused:
        await on.generate(unknown, NullListener())
    assert refused.value.indexes == (0,)
    assert (await on.generate(plain, NullListener())).text == expected.text


async def test_engines_without_the_cache_refuse_references(engine_factory: EngineFactory) -> None:
    _, keyed, by_reference = _requests()
    for engine in (
        await engine_factory(vision_cache_bytes=0),
        await engine_factory(engine_mode="batched", vision_cache_bytes=CACHE_BYTES),
    ):
        assert not engine.info.vision_cache
        with pytest.raises(ImagesNotCached):
            await engine.generate(by_reference, NullListener())
        # Keys alone are harmless: the images are encoded from their pixels.
        assert (await engine.generate(keyed, NullListener())).completion_tokens == 24


async def test_bad_references_are_value_errors(engine_factory: EngineFactory) -> None:
    on = await engine_factory(vision_cache_bytes=CACHE_BYTES)
    _, keyed, by_reference = _requests()
    with pytest.raises(ValueError, match="image keys"):
        await on.generate(dataclasses.replace(keyed, image_keys=("a",)), NullListener())
    with pytest.raises(ValueError, match="names no image"):
        await on.generate(dataclasses.replace(by_reference, by_reference=(5,)), NullListener())
    with pytest.raises(ValueError, match="does not fit"):  # the referenced tile sent as well
        await on.generate(dataclasses.replace(keyed, by_reference=(0,)), NullListener())


def test_the_cache_is_bounded_in_bytes_least_recently_used_out() -> None:
    one = torch.zeros(1, 64, 16)  # 4 KiB
    size = one.numel() * one.element_size()
    cache = VisionFeatureCache(3 * size, "model@rev")
    assert cache.key("k") != VisionFeatureCache(size, "model@other").key("k")
    for name in ("a", "b", "c"):
        cache.put(name, one.clone())
    assert cache.get("a") is not None  # "a" is now the most recent: "b" goes first
    cache.put("d", one.clone())
    assert cache.get("b") is None and cache.get("c") is not None
    assert (len(cache), cache.bytes, cache.evictions) == (3, 3 * size, 1)
    cache.put("huge", torch.zeros(4, 64, 16))  # larger than the whole bound: not kept
    assert cache.get("huge") is None and len(cache) == 3
    cache.put("d", one.clone())  # replacing an entry does not count it twice
    assert cache.bytes == 3 * size
    assert cache.counters()["vision_cache_hits"] == 2


async def test_the_engine_process_keeps_the_cache_in_the_child(model_cache: Path) -> None:
    config = EngineConfig(
        model_cache_dir=model_cache,
        device="cpu",
        engine_process=True,
        max_batch_size=2,
        torch_threads=1,
        vision_cache_bytes=CACHE_BYTES,
    )
    engine = bench_engine(ForcedLength("local"), config)
    assert isinstance(engine, ProcessEngine)
    await engine.start()
    try:
        assert engine.info.vision_cache
        _, keyed, by_reference = _requests()
        first = await engine.generate(keyed, NullListener())
        again = await engine.generate(by_reference, NullListener())
        assert again.text == first.text
        assert engine.stats().vision_cache_hits == 1
        unknown = dataclasses.replace(by_reference, image_keys=("other", ""))
        with pytest.raises(ImagesNotCached) as refused:
            await engine.generate(unknown, NullListener())
        assert refused.value.indexes == (0,)
    finally:
        await engine.stop()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
async def test_cached_features_give_the_same_tokens_on_cuda(engine_factory: EngineFactory) -> None:
    """On the GPU (bf16) too: the vision tower's output for an image does not depend on the
    batch it was encoded in, or the cached features would change the answers."""
    off = await engine_factory(device="auto", vision_cache_bytes=0)
    on = await engine_factory(device="auto", vision_cache_bytes=CACHE_BYTES)
    assert on.loaded.runtime.device.startswith("cuda") and on.info.vision_cache
    plain, keyed, by_reference = _requests()
    expected = await off.generate(plain, NullListener())
    first = await on.generate(keyed, NullListener())
    again = await on.generate(by_reference, NullListener())
    assert [first.text, again.text] == [expected.text] * 2
    assert on.stats().vision_cache_hits == 1


def test_the_image_key_covers_content_tile_limit_and_preparer_arguments() -> None:
    prepare = functools.partial(prepare_image, image_size=448, resize="torch")
    tiling = fingerprint(prepare)
    assert tiling is not None
    reuse = ReferenceReuse(tiling)
    key = reuse.image_key("ab" * 32, 1)
    assert key == ReferenceReuse(tiling).image_key("ab" * 32, 1)
    assert key != reuse.image_key("cd" * 32, 1)
    assert key != reuse.image_key("ab" * 32, 2)
    for other in (
        functools.partial(prepare_image, image_size=448, resize="pillow"),
        functools.partial(prepare_image, image_size=448, resize="torch", max_pixels=1),
    ):
        other_tiling = fingerprint(other)
        assert other_tiling is not None
        assert ReferenceReuse(other_tiling).image_key("ab" * 32, 1) != key
    # A preparer whose configuration cannot be read is never reused.
    assert fingerprint(lambda fetched, tiles: fetched) is None
