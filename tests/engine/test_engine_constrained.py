from __future__ import annotations

import asyncio
import json
from typing import Any

import jsonschema
import pytest
import torch

from inference_svc.engine import constrained
from inference_svc.engine.constrained import SchemaError, unpack_bitmask

from .conftest import EngineFactory, make_request

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "kind": {"const": "inspection"},
        "recommendation": {"enum": ["Accept", "Reject", "Partial", "Retry"]},
        "confidence": {"type": "integer", "minimum": 0, "maximum": 100},
        "answers": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "Label": {"const": "Is the seal intact?"},
                    "Result": {"enum": ["Yes", "No"]},
                },
                "required": ["Label", "Result"],
                "additionalProperties": False,
            },
            "minItems": 1,
            "maxItems": 2,
        },
    },
    "required": ["kind", "recommendation", "confidence", "answers"],
    "additionalProperties": False,
    "x-guidance": {"whitespace_flexible": False},
}


@pytest.mark.parametrize("mode", ["continuous", "batched"])
async def test_random_model_output_validates_against_schema(
    engine_factory: EngineFactory, mode: str
) -> None:
    engine = await engine_factory(engine_mode=mode, max_batch_size=4, batch_wait_ms=10_000)
    requests = [
        make_request(f"c{i}", max_new_tokens=200, seed=i, json_schema=SCHEMA) for i in range(3)
    ] + [make_request("free", max_new_tokens=30)]
    results = await asyncio.gather(*(engine.generate(r, _Null()) for r in requests))
    for result in results[:3]:
        assert result.constrained
        assert result.finish_reason == "stop"
        assert result.schema_complete is True
        assert result.constraint_error is None
        jsonschema.validate(json.loads(result.text), SCHEMA)
    assert results[3].constrained is False
    assert results[3].completion_tokens == 30
    if mode == "batched":
        # One generate for all four (the wait window outlasts their arrival). The continuous
        # engine admits each row when its prefill is done, so how many steps rows share there
        # depends on timing; its batching is tested in test_engine_slot_runner.py.
        assert all(r.batch_size == 4 for r in results)


def _labelled(label: str) -> dict[str, Any]:
    """SCHEMA with its own answer label: a row given another row's mask breaks its schema."""
    schema = json.loads(json.dumps(SCHEMA))
    schema["properties"]["answers"]["items"]["properties"]["Label"] = {"const": label}
    return schema


async def test_masks_computed_beside_the_step_are_the_masks_after_it(
    engine_factory: EngineFactory,
) -> None:
    schemas = [_labelled(f"Question {i}: is part {i} present?") for i in range(3)]
    requests = [
        make_request(f"g{i}", max_new_tokens=200, seed=i, json_schema=schemas[i]) for i in range(3)
    ] + [make_request("free", max_new_tokens=24, seed=7)]
    texts: dict[bool, list[str]] = {}
    for overlap in (False, True):
        engine = await engine_factory(grammar_overlap=overlap, max_batch_size=4)
        results = await asyncio.gather(*(engine.generate(r, _Null()) for r in requests))
        texts[overlap] = [r.text for r in results]
        # Steps with masked rows had their masks computed on the helper thread, or none did.
        assert (engine.stats().overlapped_masks > 0) is overlap
        for result, schema in zip(results[:3], schemas, strict=True):
            assert result.schema_complete is True, result
            jsonschema.validate(json.loads(result.text), schema)
        assert results[3].constrained is False
        await engine.stop()
    assert texts[True] == texts[False]


async def test_a_lone_row_computes_its_mask_on_the_step_thread(
    engine_factory: EngineFactory,
) -> None:
    # llguidance computes one matcher's mask holding the interpreter lock: on the helper
    # thread it would stall the step, so a step with one masked row keeps it at home.
    schema = _labelled("Question 0: is the seal intact?")
    engine = await engine_factory(grammar_overlap=True, max_batch_size=4)
    result = await engine.generate(
        make_request("alone", max_new_tokens=200, seed=3, json_schema=schema), _Null()
    )
    assert result.schema_complete is True, result
    jsonschema.validate(json.loads(result.text), schema)
    assert engine.stats().overlapped_masks == 0
    assert engine.stats().steps > 0


def test_bad_schema_is_rejected() -> None:
    with pytest.raises(SchemaError):
        constrained.compile_json_schema({"type": "object", "properties": {"a": {"type": "nope"}}})


def test_bitmask_unpacking() -> None:
    mask = torch.tensor([[0b101, 0]], dtype=torch.int32)
    allowed = unpack_bitmask(mask, 40)
    assert allowed.shape == (1, 40)
    assert allowed[0].nonzero().flatten().tolist() == [0, 2]
    # A model vocabulary wider than the mask: the extra ids are never allowed.
    assert unpack_bitmask(mask, 80)[0, 64:].any().item() is False


class _Null:
    def on_queued(self, position: int) -> None:
        pass

    def on_started(self) -> None:
        pass

    def on_tokens(self, tokens_generated: int, text_so_far: str) -> None:
        pass
