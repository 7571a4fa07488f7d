"""Where and how the model runs: device, dtype, attention implementation, KV cache kind."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    device: str
    dtype: torch.dtype
    attn_implementation: str
    # Why a requested setting was not used (logged at load).
    notes: tuple[str, ...] = ()


def select_runtime(
    device: str, dtype: str, attn: str, cuda_available: bool, flash_available: bool
) -> Runtime:
    """Device, dtype and attention kernel for the requested settings on this machine.

    ``auto`` means: CUDA with bf16 and flash-attention 2 (SDPA without flash_attn) when a GPU
    is present, else CPU with float32 and SDPA. An explicit CUDA device without CUDA is a
    configuration error, not something to silently run far slower on.
    """
    notes: list[str] = []
    if device == "auto":
        resolved = "cuda" if cuda_available else "cpu"
    elif device.startswith("cuda"):
        if not cuda_available:
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        resolved = device
    elif device == "cpu":
        resolved = "cpu"
    else:
        raise ValueError(f"unknown device {device!r}")
    on_cuda = resolved.startswith("cuda")

    if dtype == "auto":
        torch_dtype = torch.bfloat16 if on_cuda else torch.float32
    elif dtype in _DTYPES:
        torch_dtype = _DTYPES[dtype]
        if not on_cuda and torch_dtype is torch.float16:
            notes.append("float16 on CPU is slow and inexact; using float32")
            torch_dtype = torch.float32
    else:
        raise ValueError(f"unknown dtype {dtype!r}")

    if attn == "auto":
        attn_impl = "flash_attention_2" if on_cuda and flash_available else "sdpa"
    elif attn == "flash_attention_2":
        if not on_cuda:
            notes.append("flash_attention_2 needs CUDA; using sdpa")
            attn_impl = "sdpa"
        elif not flash_available:
            notes.append("flash_attn is not installed; using sdpa")
            attn_impl = "sdpa"
        elif torch_dtype is torch.float32:
            notes.append("flash_attention_2 needs fp16/bf16; using sdpa")
            attn_impl = "sdpa"
        else:
            attn_impl = attn
    elif attn in ("sdpa", "eager"):
        attn_impl = attn
    else:
        raise ValueError(f"unknown attention implementation {attn!r}")
    return Runtime(resolved, torch_dtype, attn_impl, tuple(notes))


def resolve_kv_cache(kv_cache: str, runtime: Runtime) -> str:
    """``auto``: a static (preallocated) KV cache on CPU, where growing the dynamic cache by
    concatenation costs a full copy per step; transformers' dynamic cache elsewhere (flash
    attention on CUDA is not validated with the static cache here)."""
    if kv_cache == "auto":
        return "static" if runtime.device == "cpu" else "dynamic"
    if kv_cache not in ("dynamic", "static"):
        raise ValueError(f"unknown kv cache {kv_cache!r}")
    return kv_cache


def detect_runtime(device: str, dtype: str, attn: str) -> Runtime:
    return select_runtime(
        device,
        dtype,
        attn,
        cuda_available=torch.cuda.is_available(),
        flash_available=importlib.util.find_spec("flash_attn") is not None,
    )
