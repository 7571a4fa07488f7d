"""The full-size random model: InternVL2.5-1B's shapes with random weights (real compute, no
download), a benchmark model only: ``python -m bench.engine --model full_size``."""

from __future__ import annotations

from typing import Any

import torch
from transformers import InternVLConfig, InternVLForConditionalGeneration, PreTrainedTokenizerFast

from inference_svc.engine.config import EngineConfig
from inference_svc.engine.devices import Runtime
from inference_svc.engine.loader import LoadedModel, wrap_native_model
from inference_svc.engine.model_builder import (
    ENDOFTEXT,
    IM_END,
    IMG_CONTEXT,
    _finish_generation_config,
    _seeded,
    _token_id,
    build_tokenizer,
    internvl_config,
    load_spec,
)

# InternVL2.5-1B: InternViT-300M-448px + Qwen2.5-0.5B-Instruct.
FULL_SIZE_VISION: dict[str, Any] = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "image_size": 448,
    "patch_size": 14,
    "attention_bias": True,
    "layer_norm_eps": 1e-6,
    "hidden_act": "gelu",
    "norm_type": "layer_norm",
}
FULL_SIZE_TEXT: dict[str, Any] = {
    "hidden_size": 896,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "intermediate_size": 4864,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1_000_000.0,
    "hidden_act": "silu",
}
FULL_SIZE_VOCAB = 151_674
# Qwen2.5's ids in InternVL2.5-1B's tokenizer.
FULL_SIZE_IMAGE_TOKEN_ID = 151_667
FULL_SIZE_EOS_ID = 151_645
FULL_SIZE_PAD_ID = 151_643


def full_size_config(
    *,
    image_token_id: int = FULL_SIZE_IMAGE_TOKEN_ID,
    eos_token_id: int = FULL_SIZE_EOS_ID,
    pad_token_id: int = FULL_SIZE_PAD_ID,
) -> InternVLConfig:
    return internvl_config(
        FULL_SIZE_VISION,
        FULL_SIZE_TEXT,
        vocab_size=FULL_SIZE_VOCAB,
        image_token_id=image_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        # InternVL2.5-1B keeps a separate lm_head (938M parameters in all).
        tie_word_embeddings=False,
    )


def build_full_size_model(
    *,
    tokenizer: PreTrainedTokenizerFast | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> tuple[InternVLForConditionalGeneration, PreTrainedTokenizerFast]:
    """InternVL2.5-1B shapes with random weights, for benchmarks (real compute, no download).

    The tokenizer is the demo one (its ids fit in the real 151,674-entry vocabulary), so
    prompts are shorter in text tokens than with Qwen's tokenizer but image tokens (the bulk of
    a request) are the same. With ``device="meta"`` nothing is allocated.
    """
    if tokenizer is None:
        spec = load_spec()
        tokenizer = build_tokenizer(spec.corpus, int(spec.tokenizer["vocab_size"]))
    config = full_size_config(
        image_token_id=_token_id(tokenizer, IMG_CONTEXT),
        eos_token_id=_token_id(tokenizer, IM_END),
        pad_token_id=_token_id(tokenizer, ENDOFTEXT),
    )
    model_cls: Any = InternVLForConditionalGeneration
    with _seeded(seed), torch.device(device):
        model = model_cls._from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    model.eval()
    _finish_generation_config(model, tokenizer)
    return model, tokenizer


def load_full_size(cfg: EngineConfig, runtime: Runtime) -> LoadedModel:
    """An engine model loader (``LocalEngine(model_loader=...)``) for the full-size model."""
    model, tokenizer = build_full_size_model(
        device=runtime.device, dtype=runtime.dtype, attn_implementation=runtime.attn_implementation
    )
    return wrap_native_model(
        model,
        tokenizer,
        name="internvl2_5-1b-shapes-random",
        revision=cfg.model_revision or "random-full-size",
        untrained=True,
        runtime=runtime,
    )
