"""MODEL_TRUST_REMOTE_CODE with code of any age: an original-layout checkpoint whose shipped
modeling file never calls ``post_init()`` (as OpenGVLab's did before 2025-08-26) loads, says so
in the logs, and the loader reports the path it took in the engine's model info.

The checkpoint is written here the way remote code ships: ``config.json`` with an ``auto_map``
naming a configuration and a modeling file next to it. Its model follows the contract of
``InternVLChatModel`` the engine relies on (``img_context_token_id``, ``num_image_token``,
``generate(pixel_values, input_ids, attention_mask, generation_config)`` from embeddings)."""

from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from inference_svc.engine import remote_code
from inference_svc.engine.config import EngineConfig
from inference_svc.engine.devices import select_runtime
from inference_svc.engine.loader import load_model
from inference_svc.engine.local import LocalEngine

from .conftest import Recorder, make_request

CPU = select_runtime("cpu", "auto", "auto", cuda_available=False, flash_available=False)

CONFIGURATION = """
from transformers import PretrainedConfig, Qwen2Config


class InternVLChatConfig(PretrainedConfig):
    model_type = "internvl_chat"

    def __init__(self, vision_config=None, llm_config=None, force_image_size=448,
                 downsample_ratio=0.5, template="internvl2_5", **kwargs):
        super().__init__(**kwargs)
        self.vision_config = dict(vision_config or {})
        self.llm_config = Qwen2Config(**(llm_config or {}))
        self.force_image_size = force_image_size
        self.downsample_ratio = downsample_ratio
        self.template = template

    def to_dict(self):
        out = super().to_dict()
        out["llm_config"] = self.llm_config.to_dict()
        return out
"""

MODELING = """
import torch
from torch import nn
from transformers import PreTrainedModel, Qwen2ForCausalLM

from .configuration_internvl_chat import InternVLChatConfig


class InternVLChatModel(PreTrainedModel):
    config_class = InternVLChatConfig
    main_input_name = "pixel_values"
    base_model_prefix = "language_model"
    _no_split_modules = ["Qwen2DecoderLayer"]

    def __init__(self, config, vision_model=None, language_model=None, use_flash_attn=True):
        super().__init__(config)
        width = config.vision_config["hidden_size"]
        patch = config.force_image_size // 8
        self.num_image_token = 64
        self.img_context_token_id = None
        self.vision_model = nn.Conv2d(3, width, kernel_size=patch, stride=patch)
        hidden = config.llm_config.hidden_size
        self.mlp1 = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden))
        self.language_model = Qwen2ForCausalLM(config.llm_config)
        POST_INIT

    def extract_feature(self, pixel_values):
        features = self.vision_model(pixel_values).flatten(2).transpose(1, 2)
        return self.mlp1(features)

    @torch.no_grad()
    def generate(self, pixel_values=None, input_ids=None, attention_mask=None,
                 generation_config=None, **generate_kwargs):
        embeds = self.language_model.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            features = self.extract_feature(pixel_values.to(embeds.dtype))
            selected = input_ids == self.img_context_token_id
            embeds = embeds.clone()
            embeds[selected] = features.reshape(-1, embeds.shape[-1]).to(embeds.dtype)
        return self.language_model.generate(
            inputs_embeds=embeds, attention_mask=attention_mask,
            generation_config=generation_config, use_cache=True, **generate_kwargs)
"""


def write_checkpoint(out: Path, tokenizer: Any, *, calls_post_init: bool) -> dict[str, Any]:
    """A tiny remote-code checkpoint in ``out``; returns its weights."""
    out.mkdir(parents=True, exist_ok=True)
    modeling = MODELING.replace("POST_INIT", "self.post_init()" if calls_post_init else "pass")
    (out / "configuration_internvl_chat.py").write_text(textwrap.dedent(CONFIGURATION))
    (out / "modeling_internvl_chat.py").write_text(textwrap.dedent(modeling))
    vocab = len(tokenizer)
    config = {
        "architectures": ["InternVLChatModel"],
        "auto_map": {
            "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
            "AutoModel": "modeling_internvl_chat.InternVLChatModel",
        },
        "model_type": "internvl_chat",
        "force_image_size": 448,
        "downsample_ratio": 0.5,
        "template": "internvl2_5",
        "torch_dtype": "float32",
        "vision_config": {"hidden_size": 16},
        "llm_config": {
            "architectures": ["Qwen2ForCausalLM"],
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": vocab,
            "max_position_embeddings": 4096,
            "tie_word_embeddings": False,
        },
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(out)
    generator = torch.Generator().manual_seed(7)
    shapes = {
        "vision_model.weight": (16, 3, 56, 56),
        "vision_model.bias": (16,),
        "mlp1.0.weight": (16,),
        "mlp1.0.bias": (16,),
        "mlp1.1.weight": (64, 16),
        "mlp1.1.bias": (64,),
        "language_model.model.embed_tokens.weight": (vocab, 64),
        "language_model.model.norm.weight": (64,),
        "language_model.lm_head.weight": (vocab, 64),
    }
    for layer in range(2):
        base = f"language_model.model.layers.{layer}."
        shapes |= {
            base + "self_attn.q_proj.weight": (64, 64),
            base + "self_attn.q_proj.bias": (64,),
            base + "self_attn.k_proj.weight": (32, 64),
            base + "self_attn.k_proj.bias": (32,),
            base + "self_attn.v_proj.weight": (32, 64),
            base + "self_attn.v_proj.bias": (32,),
            base + "self_attn.o_proj.weight": (64, 64),
            base + "mlp.gate_proj.weight": (128, 64),
            base + "mlp.up_proj.weight": (128, 64),
            base + "mlp.down_proj.weight": (64, 128),
            base + "input_layernorm.weight": (64,),
            base + "post_attention_layernorm.weight": (64,),
        }
    state = {k: torch.randn(s, generator=generator) * 0.05 for k, s in shapes.items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return state


@pytest.fixture(scope="module")
def demo_tokenizer(demo_model_dir: Path) -> Any:
    return load_model(demo_model_dir, runtime=CPU).tokenizer


@pytest.fixture(scope="module")
def old_code_dir(tmp_path_factory: pytest.TempPathFactory, demo_tokenizer: Any) -> Path:
    out = tmp_path_factory.mktemp("remote-old")
    write_checkpoint(out, demo_tokenizer, calls_post_init=False)
    return out


def test_old_remote_code_fails_as_reported_without_the_compatibility_step(
    old_code_dir: Path,
) -> None:
    config, cls = remote_code.model_class(old_code_dir)
    with pytest.raises(AttributeError, match="all_tied_weights_keys"):
        cls.from_pretrained(str(old_code_dir), config=config)


def test_old_remote_code_loads_with_its_weights_and_says_so(
    tmp_path: Path, demo_tokenizer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    state = write_checkpoint(tmp_path / "ckpt", demo_tokenizer, calls_post_init=False)
    with caplog.at_level(logging.INFO, logger="inference_svc.engine"):
        loaded = load_model(tmp_path / "ckpt", runtime=CPU, trust_remote_code=True)
    assert loaded.kind == "remote_code"
    assert loaded.load_path == "remote_code"
    assert remote_code.post_init_added(loaded.model)
    assert type(loaded.model).__name__ == "InternVLChatModel"
    compat = [r for r in caplog.records if getattr(r, "model_compat", None) == "post_init"]
    assert len(compat) == 1
    paths = [getattr(r, "model_load_path", None) for r in caplog.records]
    assert "remote_code" in paths
    weights = loaded.model.state_dict()
    for key, tensor in state.items():
        assert torch.equal(weights[key], tensor), key
    assert loaded.tokens_per_tile == 64
    assert loaded.stop_token_ids == (loaded.eos_token_id,)


def test_current_remote_code_runs_unchanged(
    tmp_path: Path, demo_tokenizer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    write_checkpoint(tmp_path / "ckpt", demo_tokenizer, calls_post_init=True)
    with caplog.at_level(logging.INFO, logger="inference_svc.engine"):
        loaded = load_model(tmp_path / "ckpt", runtime=CPU, trust_remote_code=True)
    assert loaded.load_path == "remote_code"
    assert not remote_code.post_init_added(loaded.model)
    assert not [r for r in caplog.records if getattr(r, "model_compat", None)]


async def test_the_engine_serves_old_remote_code_and_reports_the_path(old_code_dir: Path) -> None:
    config = EngineConfig(
        model_path=old_code_dir,
        model_trust_remote_code=True,
        device="cpu",
        engine_process=False,
        constrained_decoding=False,
    )
    engine = LocalEngine(config)
    await engine.start()
    try:
        assert engine.info.model_load_path == "remote_code"
        assert engine.info.runner == "generate"
        result = await engine.generate(
            make_request("r", tiles_per_image=(2,), max_new_tokens=6), Recorder()
        )
    finally:
        await engine.stop()
    assert 1 <= result.completion_tokens <= 6
