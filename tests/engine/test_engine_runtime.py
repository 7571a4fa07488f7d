from __future__ import annotations

import pytest
import torch

from inference_svc.engine.devices import select_runtime


@pytest.mark.parametrize(
    ("device", "dtype", "attn", "cuda", "flash", "expected"),
    [
        ("auto", "auto", "auto", False, False, ("cpu", torch.float32, "sdpa")),
        ("auto", "auto", "auto", False, True, ("cpu", torch.float32, "sdpa")),
        ("auto", "auto", "auto", True, True, ("cuda", torch.bfloat16, "flash_attention_2")),
        ("auto", "auto", "auto", True, False, ("cuda", torch.bfloat16, "sdpa")),
        ("cuda:1", "auto", "auto", True, True, ("cuda:1", torch.bfloat16, "flash_attention_2")),
        ("cpu", "auto", "auto", True, True, ("cpu", torch.float32, "sdpa")),
        ("cpu", "auto", "flash_attention_2", True, True, ("cpu", torch.float32, "sdpa")),
        ("auto", "auto", "flash_attention_2", True, False, ("cuda", torch.bfloat16, "sdpa")),
        ("cuda", "float32", "flash_attention_2", True, True, ("cuda", torch.float32, "sdpa")),
        ("cuda", "float16", "auto", True, True, ("cuda", torch.float16, "flash_attention_2")),
        ("cpu", "float16", "auto", False, False, ("cpu", torch.float32, "sdpa")),
        ("cpu", "bfloat16", "eager", False, False, ("cpu", torch.bfloat16, "eager")),
    ],
)
def test_runtime_selection(
    device: str,
    dtype: str,
    attn: str,
    cuda: bool,
    flash: bool,
    expected: tuple[str, torch.dtype, str],
) -> None:
    runtime = select_runtime(device, dtype, attn, cuda_available=cuda, flash_available=flash)
    assert (runtime.device, runtime.dtype, runtime.attn_implementation) == expected
    requested_flash_not_used = attn == "flash_attention_2" and expected[2] != attn
    assert bool(runtime.notes) == (requested_flash_not_used or (dtype, cuda) == ("float16", False))


@pytest.mark.parametrize(
    ("device", "dtype", "attn"),
    [
        ("cuda", "auto", "auto"),
        ("tpu", "auto", "auto"),
        ("cpu", "int8", "auto"),
        ("cpu", "auto", "magic"),
    ],
)
def test_invalid_or_unavailable_runtime(device: str, dtype: str, attn: str) -> None:
    with pytest.raises(ValueError):
        select_runtime(device, dtype, attn, cuda_available=False, flash_available=False)
