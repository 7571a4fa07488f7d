from __future__ import annotations

import importlib.util

import pytest
import torch

from inference_svc.engine.api import NullListener

from .conftest import EngineFactory, make_request

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
async def test_cuda_runs_bf16_with_flash_or_sdpa(engine_factory: EngineFactory) -> None:
    engine = await engine_factory(device="auto")  # the fixture's CPU default overridden
    loaded = engine.loaded
    assert loaded.runtime.device.startswith("cuda")
    assert loaded.runtime.dtype is torch.bfloat16
    expected = "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"
    assert loaded.runtime.attn_implementation == expected
    assert next(loaded.model.parameters()).dtype is torch.bfloat16
    import asyncio

    results = await asyncio.gather(
        *(
            engine.generate(make_request(f"g{i}", max_new_tokens=20 + i, seed=i), NullListener())
            for i in range(4)
        )
    )
    assert [r.completion_tokens for r in results] == [20, 21, 22, 23]
