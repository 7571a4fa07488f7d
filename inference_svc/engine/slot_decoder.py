"""Iteration-level decoding over a native InternVL model: a slotted KV cache and a lean step.

Continuous batching needs what ``generate`` cannot give: rows that join and leave a running
batch between two tokens. Each row owns a *slot* (one batch index of a preallocated KV
cache, filled from column 0), so rows of different lengths sit side by side without padding
their prompts to each other. A row enters with its own prefill (transformers' own
``InternVLModel.forward``: vision tower, image-token merge and the language model, exactly
as ``generate`` runs it, on one unpadded row) and then advances one token per ``decode``
call together with every other live row.

The decode step runs the language model's own modules (norms, projections, rotary tables,
MLP) but does the attention itself: one grouped matmul per layer against the slot cache,
masked per row to that row's length. transformers' attention path would repeat the KV heads
and build a float mask per layer, which dominated a step on CPU. Keys are cached by column
(slot, head, dim, position), so the query-key product reads each head's keys as the plain
row-major right operand a matrix product wants; cached by position it read them transposed,
which cost 6-16% more CPU per 16-row step at the production prompt's width
(``bench.decode_step``). With prompts of ~1,800 tokens the step's attention reads the whole
cache, which bounds it by memory bandwidth on CPU. Only the Qwen2/Llama
decoder layer shape (InternVL2.5-1B's language model) is supported; :func:`supports` says
whether a model has it, and the engine falls back to request-level batching otherwise.
Outputs are the same as ``generate``'s (greedy tokens identical; tested).

The step multiplies by each layer's query/key/value projections at once, and by its MLP's
gate and up projections at once (:mod:`.fused_layers`).

Every operation runs without autograd (``torch.no_grad``): with it each decode step would
record an autograd graph and keep prefill activations alive for it.
``no_grad`` rather than ``inference_mode``, because torch.compile refuses the inference
tensors a cache made under ``inference_mode`` would be. With ``compile_step`` (TORCH_COMPILE)
the decode step is compiled with dynamic shapes (rows and cache width vary step to step),
which pays off on small batches at the price of a compilation during the warm-up
(``bench.decode_step --compile``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from .fused_layers import FusedLayer, fuse_layer
from .pixels import PixelStaging
from .vision_cache import VisionFeatureCache, VisionPlan, encoder_outputs

logger = logging.getLogger(__name__)

_SUPPORTED_TEXT_MODELS = ("qwen2", "llama")
# Cache columns are allocated in chunks so that growth (a copy) is rare.
_CAPACITY_CHUNK = 256


@dataclass(frozen=True)
class Prefilled:
    """One row's prompt run through the model, not yet in a slot."""

    length: int
    keys: list[torch.Tensor]  # per layer (kv_heads, length, head_dim)
    values: list[torch.Tensor]
    logits: torch.Tensor  # next-token logits (vocab,)


def supports(model: Any) -> str | None:
    """``None`` when ``model`` can be driven by :class:`SlotDecoder`, else why not."""
    inner = getattr(model, "model", None)
    language_model = getattr(inner, "language_model", None)
    if language_model is None or not hasattr(model, "lm_head"):
        return "not a transformers-native InternVL model"
    config = language_model.config
    model_type = getattr(config, "model_type", "")
    if model_type not in _SUPPORTED_TEXT_MODELS:
        return f"language model type {model_type!r} is not one of {_SUPPORTED_TEXT_MODELS}"
    if getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None):
        return "sliding-window attention is not supported"
    for layer in language_model.layers:
        attention = getattr(layer, "self_attn", None)
        needed = ("q_proj", "k_proj", "v_proj", "o_proj")
        if attention is None or not all(hasattr(attention, name) for name in needed):
            return "decoder layer without q/k/v/o projections"
        if hasattr(attention, "q_norm") or getattr(attention, "sliding_window", None):
            return "decoder layer with query/key norms or a sliding window"
        if not all(hasattr(layer, n) for n in ("input_layernorm", "post_attention_layernorm")):
            return "decoder layer without the pre-norm layout"
    return None


class SlotDecoder:
    """A KV cache of ``max_rows`` slots and the prefill/decode operations on it.

    Not thread-safe: one model thread owns it. Slots ``0 .. n-1`` are the live rows of a
    step (the engine keeps them contiguous with :meth:`move`), so a step reads one prefix
    of the cache instead of gathering scattered rows.
    """

    def __init__(
        self,
        model: Any,
        max_rows: int,
        *,
        device: str,
        dtype: torch.dtype,
        compile_step: bool = False,
        fuse: bool = True,
        keys_by_column: bool = True,
    ) -> None:
        reason = supports(model)
        if reason is not None:
            raise ValueError(reason)
        self.model = model
        self.language_model = model.model.language_model
        self.layers = list(self.language_model.layers)
        first = self.layers[0].self_attn
        self.head_dim = int(first.head_dim)
        self.heads = int(first.config.num_attention_heads)
        self.kv_heads = int(first.config.num_key_value_heads)
        self.groups = self.heads // self.kv_heads
        self.scaling = float(first.scaling)
        self.max_rows = max_rows
        self.device = torch.device(device)
        self.dtype = dtype
        self.capacity = 0
        # Keys stored (slot, head, dim, position): a step's query-key product then reads each
        # head's keys as one row-major (dim x width) block, the layout a matrix product wants
        # as its right operand. Stored by position, the same product reads them transposed
        # (6-16% more CPU per 16-row step, bench.decode_step). ``keys_by_column=False`` is
        # that baseline.
        self.keys_by_column = keys_by_column
        self._keys: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []
        self._columns = torch.zeros(0, dtype=torch.long, device=self.device)
        self.pixels = PixelStaging(self.device)
        # ``fuse=False`` (benchmarks' baseline) keeps the module calls and the model untouched.
        self._fused = [
            fuse_layer(layer) if fuse else FusedLayer(None, None, None) for layer in self.layers
        ]
        self._decode = torch.compile(self._step, dynamic=True) if compile_step else self._step
        self.compiled = compile_step

    # --- cache management ------------------------------------------------------------------
    @torch.no_grad()
    def reserve(self, columns: int) -> None:
        """Make every slot hold at least ``columns`` positions (grows by copying)."""
        if columns <= self.capacity:
            return
        capacity = -(-columns // _CAPACITY_CHUNK) * _CAPACITY_CHUNK
        shape = (self.max_rows, self.kv_heads, capacity, self.head_dim)
        key_shape = (*shape[:2], self.head_dim, capacity) if self.keys_by_column else shape
        keys = [torch.zeros(key_shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        values = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        if self.capacity:
            for old, new in zip(self._keys, keys, strict=True):
                self._key_columns(new, slice(None), self.capacity).copy_(
                    self._key_columns(old, slice(None), self.capacity)
                )
            for old, new in zip(self._values, values, strict=True):
                new[:, :, : self.capacity] = old
        self._keys, self._values = keys, values
        self._columns = torch.arange(capacity, device=self.device)
        if self.capacity:
            logger.info("KV cache grown to %d positions per slot", capacity)
        self.capacity = capacity

    def release(self) -> None:
        self._keys, self._values = [], []
        self.capacity = 0
        self.pixels.release()

    @torch.no_grad()
    def move(self, source: int, target: int, length: int) -> None:
        """Copy slot ``source``'s first ``length`` positions to slot ``target``."""
        if source == target or length <= 0:
            return
        for keys in self._keys:
            self._key_columns(keys, target, length).copy_(self._key_columns(keys, source, length))
        for values in self._values:
            values[target, :, :length] = values[source, :, :length]

    def _key_columns(self, keys: torch.Tensor, slot: int | slice, length: int) -> torch.Tensor:
        """Slot(s) ``slot``'s first ``length`` keys, viewed (..., length, head_dim) whichever
        the layout."""
        if self.keys_by_column:
            return keys[slot, :, :, :length].transpose(-1, -2)
        return keys[slot, :, :length]

    # --- model operations ------------------------------------------------------------------
    @torch.no_grad()
    def prefill(
        self, slot: int, input_ids: Sequence[int], pixel_values: torch.Tensor | None
    ) -> torch.Tensor:
        """Run one row's prompt into ``slot``; returns the next-token logits (vocab,)."""
        prefilled = self.prefill_detached(input_ids, pixel_values)
        self.install(slot, prefilled)
        return prefilled.logits

    @torch.no_grad()
    def prefill_detached(
        self,
        input_ids: Sequence[int],
        pixel_values: torch.Tensor | None,
        pixels: PixelStaging | None = None,
        vision: VisionPlan | None = None,
        vision_cache: VisionFeatureCache | None = None,
    ) -> Prefilled:
        """Run one row's prompt without touching the slot cache, so another thread may do
        it while steps run; :meth:`install` puts the result in a slot. ``pixels`` is the
        calling thread's staging buffer (default: the decoder's own). With a ``vision`` plan
        the images' features are the ones it holds and ``pixel_values`` (the other images'
        tiles) through the vision tower, stored in ``vision_cache``."""
        ids = torch.tensor([list(input_ids)], dtype=torch.long, device=self.device)
        kwargs: dict[str, Any] = {}
        staging = pixels if pixels is not None else self.pixels
        staged = None if pixel_values is None else staging.stage([pixel_values], self.dtype)
        if vision is not None:
            kwargs["mm_encoder_outputs"] = encoder_outputs(self.model, vision_cache, vision, staged)
        elif staged is not None:
            kwargs["pixel_values"] = staged
        cache = DynamicCache(config=self.language_model.config)
        out = self.model.model(input_ids=ids, past_key_values=cache, use_cache=True, **kwargs)
        layers = [_layer_kv(cache, index) for index in range(len(self.layers))]
        hidden = out.last_hidden_state[:, -1]
        logits = torch.as_tensor(self.model.lm_head(hidden)[0])
        return Prefilled(
            len(input_ids), [k[0] for k, _ in layers], [v[0] for _, v in layers], logits
        )

    @torch.no_grad()
    def install(self, slot: int, prefilled: Prefilled) -> None:
        """Copy a detached prefill into ``slot`` (the cache grows if it must)."""
        length = prefilled.length
        self.reserve(length + 1)
        for index in range(len(self.layers)):
            self._key_columns(self._keys[index], slot, length).copy_(prefilled.keys[index])
            self._values[index][slot, :, :length] = prefilled.values[index]

    @torch.no_grad()
    def decode(self, tokens: Sequence[int], positions: Sequence[int]) -> torch.Tensor:
        """One step for slots ``0 .. len(tokens)-1``: write each row's ``tokens[i]`` at
        ``positions[i]`` and return the next-token logits (rows, vocab)."""
        width = max(positions) + 1
        if width > self.capacity:
            raise ValueError(f"position {width - 1} is beyond the cache ({self.capacity})")
        token_ids = torch.tensor(tokens, dtype=torch.long, device=self.device)
        pos = torch.tensor(positions, dtype=torch.long, device=self.device)
        return self._decode(token_ids, pos, width)

    @torch.no_grad()
    def warm_up(self) -> None:
        """Compile the step for every shape serving will see, so no request waits for a
        compilation: one row and several rows (torch specialises size 1), at two cache
        widths (the width is then symbolic). A no-op without ``compile_step``.

        It writes into the first slots' cache beyond any live prompt: every row's prefill
        overwrites its slot, and a step never reads past a row's own position."""
        if not self.compiled:
            return
        self.reserve(4)
        for rows in sorted({1, min(2, self.max_rows)}):
            for width in (3, 4):
                self.decode([0] * rows, [width - 1] * rows)

    def _step(self, token_ids: torch.Tensor, pos: torch.Tensor, width: int) -> torch.Tensor:
        # Tensors, not lists: a list's length would be a static guard, and every batch size
        # a new compilation.
        rows = token_ids.shape[0]
        device = self.device
        row_index = torch.arange(rows, device=device)
        visible = self._columns[:width].unsqueeze(0) <= pos.unsqueeze(1)
        bias = torch.zeros((rows, 1, 1, width), dtype=self.dtype, device=device)
        bias.masked_fill_(~visible[:, None, None, :], float("-inf"))

        lm = self.language_model
        hidden = lm.embed_tokens(token_ids[:, None])
        cos, sin = lm.rotary_emb(hidden, pos[:, None])
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        query_width = self.heads * self.head_dim
        kv_width = self.kv_heads * self.head_dim
        for index, layer in enumerate(self.layers):
            attention = layer.self_attn
            fused = self._fused[index]
            x = layer.input_layernorm(hidden)
            if fused.qkv_weight is not None:
                projected = torch.nn.functional.linear(x, fused.qkv_weight, fused.qkv_bias)
                q, k, v = torch.split(projected, [query_width, kv_width, kv_width], dim=-1)
            else:
                q, k, v = attention.q_proj(x), attention.k_proj(x), attention.v_proj(x)
            q = q.view(rows, 1, self.heads, self.head_dim).transpose(1, 2)
            k = k.view(rows, 1, self.kv_heads, self.head_dim).transpose(1, 2)
            v = v.view(rows, self.kv_heads, self.head_dim)
            q = q * cos + _rotate_half(q) * sin
            k = (k * cos + _rotate_half(k) * sin)[:, :, 0]
            keys, values = self._keys[index], self._values[index]
            if self.keys_by_column:
                keys[row_index, :, :, pos] = k
                keys_t = keys[:rows, :, :, :width]
            else:
                keys[row_index, :, pos] = k
                keys_t = keys[:rows, :, :width].transpose(-1, -2)
            values[row_index, :, pos] = v
            # Query heads grouped by their key-value head: no repeat of the cache. Scaling the
            # query (heads x dim) is cheaper than scaling the scores (heads x width).
            grouped = (q * self.scaling).reshape(rows, self.kv_heads, self.groups, self.head_dim)
            scores = torch.matmul(grouped, keys_t).add_(bias)
            weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(self.dtype)
            context = torch.matmul(weights, values[:rows, :, :width])
            hidden = hidden + attention.o_proj(context.reshape(rows, 1, self.heads * self.head_dim))
            hidden = hidden + self._mlp(layer, fused, layer.post_attention_layernorm(hidden))
        hidden = lm.norm(hidden)
        return torch.as_tensor(self.model.lm_head(hidden[:, -1]))

    @staticmethod
    def _mlp(layer: Any, fused: FusedLayer, x: torch.Tensor) -> torch.Tensor:
        mlp = layer.mlp
        if fused.gate_up_weight is None:
            return torch.as_tensor(mlp(x))
        gate, up = torch.nn.functional.linear(x, fused.gate_up_weight).chunk(2, dim=-1)
        return torch.as_tensor(mlp.down_proj(mlp.act_fn(gate) * up))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _layer_kv(cache: Any, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    layer = cache.layers[index]
    return layer.keys, layer.values
