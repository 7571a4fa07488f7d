"""Continuous batching: rows join and leave a running batch and still get their solo outputs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch
from transformers import DynamicCache

from inference_svc.engine import local
from inference_svc.engine.api import GenerationRequest, GenerationResult, NullListener
from inference_svc.engine.local import LocalEngine
from inference_svc.engine.slot_decoder import SlotDecoder, supports
from inference_svc.engine.slot_runner import SlotRunner

from .conftest import (
    EngineFactory,
    Recorder,
    assert_decode_matches_forward,
    make_request,
    until,
)

SERIAL_PREFILL = "continuous-serial-prefill"


@pytest.fixture(params=["continuous", SERIAL_PREFILL])
def engine_mode(request: pytest.FixtureRequest) -> str:
    """Tests here run with prefills on their own thread (the CPU default) and without."""
    return str(request.param)


async def _solo(engine_factory: EngineFactory, requests: list[GenerationRequest]) -> list[str]:
    alone = await engine_factory(engine_mode="sequential")
    return [(await alone.generate(r, NullListener())).text for r in requests]


async def test_rows_joining_a_running_batch_get_their_solo_outputs(
    engine_factory: EngineFactory,
) -> None:
    engine = await engine_factory(max_batch_size=4, progress_every_tokens=1)
    assert isinstance(engine, LocalEngine) and isinstance(engine.runner, SlotRunner)
    first = make_request("first", max_new_tokens=160, seed=1)
    # Admitted in this order, finishing in this order: each leaves a slot below live rows.
    late = [
        make_request("short", max_new_tokens=6, seed=4),
        make_request("text-only", "No image, just text.", (), max_new_tokens=25, seed=3),
        make_request("two-images", "A: <image>\nB: <image>\nSame?", (1, 2), 40, seed=2),
    ]
    listener = Recorder()
    running = asyncio.create_task(engine.generate(first, listener))
    await until(lambda: len(listener.tokens) >= 10)  # the first row is mid-generation
    joined = await asyncio.gather(*(engine.generate(r, NullListener()) for r in late))
    assert not running.done()  # they finished while the first row was still generating
    result = await running

    assert [r.completion_tokens for r in joined] == [6, 25, 40]
    assert all(r.batch_size >= 2 for r in joined)
    assert result.completion_tokens == 160
    # Rows left in the middle of the batch (slots compacted), yet every output is the solo one.
    solo = await _solo(engine_factory, [first, *late])
    assert [result.text] + [r.text for r in joined] == solo
    assert engine.stats().prefills == 1 + 4  # warm-up + four rows, each prefilled alone


async def test_cache_grows_while_rows_are_live(engine_factory: EngineFactory) -> None:
    engine = await engine_factory(max_batch_size=2)
    assert isinstance(engine, LocalEngine) and isinstance(engine.runner, SlotRunner)
    small = make_request("small", max_new_tokens=120, seed=5)
    listener = Recorder()
    running = asyncio.create_task(engine.generate(small, listener))
    await until(lambda: len(listener.tokens) >= 1)
    capacity = engine.runner.decoder.capacity
    big_prompt = "".join(f"Image-{i}: <image>\n" for i in range(4)) + "Compare them all."
    big = make_request("big", big_prompt, (2, 2, 2, 2), max_new_tokens=40, seed=6)
    grown = await engine.generate(big, NullListener())
    assert engine.runner.decoder.capacity > capacity
    kept = await running
    assert [kept.text, grown.text] == await _solo(engine_factory, [small, big])


async def test_grammar_rows_and_plain_rows_share_steps(engine_factory: EngineFactory) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "note": {"type": "string", "maxLength": 12}},
        "required": ["ok", "note"],
        "additionalProperties": False,
    }
    engine = await engine_factory(max_batch_size=4)
    requests = [
        make_request("json", max_new_tokens=200, json_schema=schema, seed=7),
        make_request("plain", max_new_tokens=30, seed=8),
    ]
    results = await asyncio.gather(*(engine.generate(r, NullListener()) for r in requests))
    constrained, plain = results
    assert constrained.constrained and constrained.schema_complete is True
    assert constrained.finish_reason == "stop"
    assert not plain.constrained and plain.completion_tokens == 30
    assert [r.text for r in results] == await _solo(engine_factory, requests)


async def test_cancelled_row_leaves_and_the_others_continue(engine_factory: EngineFactory) -> None:
    engine = await engine_factory(max_batch_size=4, max_new_tokens=12_000)
    doomed_listener, kept_listener = Recorder(), Recorder()
    doomed = asyncio.create_task(
        engine.generate(make_request("doomed", max_new_tokens=12_000), doomed_listener)
    )
    kept_request = make_request("kept", max_new_tokens=64, seed=9)
    kept = asyncio.create_task(engine.generate(kept_request, kept_listener))
    await until(lambda: bool(doomed_listener.tokens) and bool(kept_listener.tokens))
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    result: GenerationResult = await kept
    await until(lambda: engine.running_rows() == 0)
    assert engine.stats().cancelled_rows == 1
    assert result.completion_tokens == 64
    assert [result.text] == await _solo(engine_factory, [kept_request])


async def test_unsupported_model_falls_back_to_request_level_batching(
    engine_factory: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "supports", lambda model: "not this one")
    engine = await engine_factory(max_batch_size=2, batch_wait_ms=0)
    assert isinstance(engine, LocalEngine) and engine.runner.name == "generate"
    result = await engine.generate(make_request("r", max_new_tokens=9), NullListener())
    assert result.completion_tokens == 9
    assert engine.info.runner == "generate"  # answered by the request-level scheduler


def test_supports_names_what_it_cannot_drive(engine_factory: EngineFactory) -> None:
    class NotInternVL:
        pass

    assert supports(NotInternVL()) == "not a transformers-native InternVL model"


async def test_decode_step_logits_match_the_model_forward(engine_factory: EngineFactory) -> None:
    engine = await engine_factory(engine_mode="batched")
    assert isinstance(engine, LocalEngine)
    model: Any = engine.loaded.model
    assert supports(model) is None
    assert_decode_matches_forward(SlotDecoder(model, 3, device="cpu", dtype=torch.float32), model)


@pytest.mark.parametrize("keys_by_column", [True, False], ids=["keys-by-column", "keys-by-row"])
async def test_slot_cache_moves_and_grows_in_either_key_layout(
    engine_factory: EngineFactory, keys_by_column: bool
) -> None:
    engine = await engine_factory(engine_mode="batched")
    assert isinstance(engine, LocalEngine)
    model: Any = engine.loaded.model
    decoder = SlotDecoder(
        model, 3, device="cpu", dtype=torch.float32, keys_by_column=keys_by_column
    )
    assert_decode_matches_forward(decoder, model)
    assert decoder._keys[0].shape[-1 if keys_by_column else -2] == decoder.capacity
    # The third row moves to slot 0 (as when the rows before it retire), the cache grows
    # (every slot copied), and the row goes on where it was.
    prompts = [torch.randint(20, 900, (n,)).tolist() for n in (12, 30, 21)]
    for slot, ids in enumerate(prompts):
        decoder.prefill(slot, ids, None)
    decoder.decode([7, 8, 9], [12, 30, 21])
    decoder.move(2, 0, 22)
    capacity = decoder.capacity
    decoder.reserve(capacity + 1)
    assert decoder.capacity > capacity
    logits = decoder.decode([10], [22])
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor([[*prompts[2], 9, 10]]),
            past_key_values=DynamicCache(config=model.config),
        )
    torch.testing.assert_close(logits[0], out.logits[0, -1], rtol=1e-4, atol=1e-4)


def _storage_bytes(model: Any) -> int:
    storages = {
        p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()
    }
    return sum(storages.values())


async def test_decoder_fuses_projections_without_a_second_copy(
    engine_factory: EngineFactory,
) -> None:
    engine = await engine_factory(engine_mode="batched")
    assert isinstance(engine, LocalEngine)
    model: Any = engine.loaded.model
    before = _storage_bytes(model)
    decoder = SlotDecoder(model, 3, device="cpu", dtype=torch.float32)
    for layer, fused in zip(decoder.layers, decoder._fused, strict=True):
        attention, mlp = layer.self_attn, layer.mlp
        assert fused.qkv_weight is not None and fused.gate_up_weight is not None
        # The modules read the stacked matrices: same memory, q then k then v, gate then up.
        assert attention.q_proj.weight.data_ptr() == fused.qkv_weight.data_ptr()
        assert attention.v_proj.weight.data_ptr() + attention.v_proj.weight.nbytes == (
            fused.qkv_weight.data_ptr() + fused.qkv_weight.nbytes
        )
        assert mlp.gate_proj.weight.data_ptr() == fused.gate_up_weight.data_ptr()
    assert _storage_bytes(model) <= before  # the model's weights are not held twice
    # A second decoder on the same model finds the stacks in place and copies nothing.
    again = SlotDecoder(model, 3, device="cpu", dtype=torch.float32)
    assert [f.qkv_weight.data_ptr() for f in again._fused if f.qkv_weight is not None] == [
        f.qkv_weight.data_ptr() for f in decoder._fused if f.qkv_weight is not None
    ]
    assert_decode_matches_forward(again, model)


async def test_decoder_keeps_module_calls_for_projections_it_cannot_fuse(
    engine_factory: EngineFactory,
) -> None:
    class Wrapped(torch.nn.Linear):
        """Stands for a quantised or hooked projection: not a plain nn.Linear."""

    engine = await engine_factory(engine_mode="batched")
    assert isinstance(engine, LocalEngine)
    model: Any = engine.loaded.model
    for layer in model.model.language_model.layers:
        for owner, name in ((layer.self_attn, "k_proj"), (layer.mlp, "up_proj")):
            plain = getattr(owner, name)
            wrapped = Wrapped(plain.in_features, plain.out_features, bias=plain.bias is not None)
            wrapped.load_state_dict(plain.state_dict())
            setattr(owner, name, wrapped.requires_grad_(False))
    decoder = SlotDecoder(model, 3, device="cpu", dtype=torch.float32)
    assert all(f.qkv_weight is None and f.gate_up_weight is None for f in decoder._fused)
    assert_decode_matches_forward(decoder, model)


async def test_slot_decoder_records_no_autograd_graph(engine_factory: EngineFactory) -> None:
    engine = await engine_factory(engine_mode="batched")
    assert isinstance(engine, LocalEngine)
    model: Any = engine.loaded.model
    # Loaded models are frozen (no forward records a graph, whatever the caller's mode).
    assert not any(p.requires_grad for p in model.parameters())
    # The decoder does not rely on that: it turns autograd off itself, so even a model
    # whose parameters require grad builds no graph (and keeps no activations for one).
    model.requires_grad_(True)
    try:
        decoder = SlotDecoder(model, 2, device="cpu", dtype=torch.float32)
        assert torch.is_grad_enabled()
        first = decoder.prefill(0, torch.randint(20, 900, (9,)).tolist(), None)
        step = decoder.decode([5], [9])
    finally:
        model.requires_grad_(False)
    for logits in (first, step):
        assert not logits.requires_grad
        assert logits.grad_fn is None
