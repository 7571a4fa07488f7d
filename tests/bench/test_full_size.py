"""The benchmark's full-size random model (bench/full_size.py)."""

from __future__ import annotations

from typing import Any

from bench.full_size import build_full_size_model
from inference_svc.engine.prompting import tokens_per_tile


def test_full_size_model_has_internvl2_5_1b_shapes_without_allocating() -> None:
    model, _ = build_full_size_model(device="meta")
    params = sum(p.numel() for p in model.parameters())
    assert all(p.is_meta for p in model.parameters())
    assert 0.9e9 <= params <= 1.0e9  # InternVL2.5-1B: 938M
    vision = sum(p.numel() for p in model.model.vision_tower.parameters())
    language = sum(p.numel() for p in model.model.language_model.parameters())
    assert 300e6 < vision < 310e6  # InternViT-300M
    assert 490e6 < language < 500e6  # Qwen2.5-0.5B body (embeddings included)
    cfg: Any = model.config
    assert (cfg.vision_config.hidden_size, cfg.vision_config.num_hidden_layers) == (1024, 24)
    assert cfg.vision_config.num_attention_heads == 16
    assert cfg.vision_config.intermediate_size == 4096
    text: Any = cfg.text_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (896, 24, 14)
    assert (text.num_key_value_heads, text.intermediate_size, text.vocab_size) == (2, 4864, 151_674)
    assert tokens_per_tile(cfg) == 256
    projector = model.model.multi_modal_projector
    assert tuple(projector.layer_norm.normalized_shape) == (4096,)
    assert tuple(projector.linear_1.weight.shape) == (896, 4096)
    assert tuple(projector.linear_2.weight.shape) == (896, 896)
    assert tuple(model.lm_head.weight.shape) == (151_674, 896)
