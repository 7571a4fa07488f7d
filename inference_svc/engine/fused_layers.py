"""Fused projections for the decode step.

The step multiplies by each layer's query/key/value projections at once, and by its MLP's
gate and up projections at once (:class:`FusedLayer`): two matrix products a layer where the
modules take five: less CPU per step (``bench.decode_step`` compares the variants) and, on an
accelerator, three fewer kernel launches a layer. The modules'
weights become views into the fused matrices, so nothing is held twice and prefill (through
the modules) reads the same memory. Layers whose projections are not plain ``nn.Linear``
(quantised, offloaded) keep the module calls.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class FusedLayer:
    """One decoder layer's projections for the step: q/k/v stacked, gate/up stacked (either
    ``None`` when its modules cannot be fused; the step calls the modules then)."""

    qkv_weight: torch.Tensor | None
    qkv_bias: torch.Tensor | None
    gate_up_weight: torch.Tensor | None


def _fusable(linears: Sequence[Any]) -> bool:
    """Plain, materialised ``nn.Linear`` modules on one device and dtype, all with or all
    without a bias."""
    if not all(type(m) is torch.nn.Linear for m in linears):
        return False
    weights = [m.weight for m in linears]
    first = weights[0]
    return (
        first.device.type != "meta"
        and all(w.device == first.device and w.dtype == first.dtype for w in weights)
        and all(w.shape[1] == first.shape[1] for w in weights)
        and len({m.bias is None for m in linears}) == 1
    )


def _stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(tensors)``, or a view of it when they already lie end to end in one
    storage (a second decoder on the same model fuses nothing again)."""
    first = tensors[0]
    storage = first.untyped_storage().data_ptr()
    offset = first.storage_offset()
    adjacent = True
    for tensor in tensors:
        if (
            not tensor.is_contiguous()
            or tensor.untyped_storage().data_ptr() != storage
            or tensor.storage_offset() != offset
        ):
            adjacent = False
            break
        offset += tensor.numel()
    if adjacent:
        rows = sum(int(t.shape[0]) for t in tensors)
        shape = (rows, *first.shape[1:])
        strides = tuple(math.prod(shape[i + 1 :]) for i in range(len(shape)))
        return first.as_strided(shape, strides)
    return torch.cat(list(tensors))


def _share(linears: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stack the modules' weights (and biases) and make each module's own a view into the
    stack: one copy in memory, read by the fused step and by the modules alike.

    The stacks are parameters (not trainable) because torch.compile keeps parameter shapes
    static; a plain tensor's would be symbolic and could be guarded equal to a cache width."""
    weight = _parameter(_stack([m.weight for m in linears]))
    bias = None if linears[0].bias is None else _parameter(_stack([m.bias for m in linears]))
    start = 0
    for module in linears:
        rows = int(module.weight.shape[0])
        module.weight = _parameter(weight[start : start + rows])
        if bias is not None:
            module.bias = _parameter(bias[start : start + rows])
        start += rows
    return weight, bias


def _parameter(tensor: torch.Tensor) -> torch.nn.Parameter:
    return torch.nn.Parameter(tensor, requires_grad=False)


@torch.no_grad()
def fuse_layer(layer: Any) -> FusedLayer:
    attention = layer.self_attn
    qkv = [attention.q_proj, attention.k_proj, attention.v_proj]
    qkv_weight = qkv_bias = gate_up_weight = None
    if _fusable(qkv):
        qkv_weight, qkv_bias = _share(qkv)
    mlp = layer.mlp
    gate_up: list[Any] = [getattr(mlp, "gate_proj", None), getattr(mlp, "up_proj", None)]
    if (
        hasattr(mlp, "down_proj")
        and callable(getattr(mlp, "act_fn", None))
        and _fusable(gate_up)
        and gate_up[0].bias is None
        and gate_up[0].weight.shape == gate_up[1].weight.shape
    ):
        gate_up_weight, _ = _share(gate_up)
    return FusedLayer(qkv_weight, qkv_bias, gate_up_weight)
