"""Conversion between the original OpenGVLab InternVL layout and the transformers-native one.

Fine-tuning scripts write the original layout (``InternVLChatModel``: ``vision_model.*``,
``mlp1.*``, ``language_model.model.*``) whose code is only available as remote code. The key
mapping follows transformers' ``convert_internvl_weights_to_hf.py`` (Qwen2 language models),
targeting the module names of the installed native ``InternVLForConditionalGeneration``. The
inverse direction exists so the conversion can be tested without an original checkpoint.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import InternVLConfig, InternVLVisionConfig, Qwen2Config

from .prompting import tokens_per_tile

logger = logging.getLogger(__name__)

_V = r"^vision_model\.encoder\.layers\.(\d+)\."
_N = "model.vision_tower.encoder.layer.\\1."

# (original pattern, native replacement); qkv is split separately.
ORIGINAL_TO_NATIVE: tuple[tuple[str, str], ...] = (
    (r"^vision_model\.embeddings\.class_embedding$", "model.vision_tower.embeddings.cls_token"),
    (
        r"^vision_model\.embeddings\.position_embedding$",
        "model.vision_tower.embeddings.position_embeddings",
    ),
    (
        r"^vision_model\.embeddings\.patch_embedding\.(weight|bias)$",
        "model.vision_tower.embeddings.patch_embeddings.projection.\\1",
    ),
    (_V + r"ls([12])$", _N + "lambda_\\2"),
    (_V + r"attn\.proj\.(weight|bias)$", _N + "attention.projection_layer.\\2"),
    (_V + r"attn\.(q_norm|k_norm)\.weight$", _N + "attention.\\2.weight"),
    (_V + r"norm1\.(weight|bias)$", _N + "layernorm_before.\\2"),
    (_V + r"norm2\.(weight|bias)$", _N + "layernorm_after.\\2"),
    (_V + r"mlp\.(fc[12])\.(weight|bias)$", _N + "mlp.\\2.\\3"),
    (r"^mlp1\.0\.(weight|bias)$", "model.multi_modal_projector.layer_norm.\\1"),
    (r"^mlp1\.1\.(weight|bias)$", "model.multi_modal_projector.linear_1.\\1"),
    (r"^mlp1\.3\.(weight|bias)$", "model.multi_modal_projector.linear_2.\\1"),
    (r"^language_model\.model\.(.+)$", "model.language_model.\\1"),
    (r"^language_model\.lm_head\.(.+)$", "lm_head.\\1"),
)
_QKV = re.compile(_V + r"attn\.qkv\.(weight|bias)$")

_NV = r"^model\.vision_tower\.encoder\.layer\.(\d+)\."
_O = "vision_model.encoder.layers.\\1."
NATIVE_TO_ORIGINAL: tuple[tuple[str, str], ...] = (
    (r"^model\.vision_tower\.embeddings\.cls_token$", "vision_model.embeddings.class_embedding"),
    (
        r"^model\.vision_tower\.embeddings\.position_embeddings$",
        "vision_model.embeddings.position_embedding",
    ),
    (
        r"^model\.vision_tower\.embeddings\.patch_embeddings\.projection\.(weight|bias)$",
        "vision_model.embeddings.patch_embedding.\\1",
    ),
    (_NV + r"lambda_([12])$", _O + "ls\\2"),
    (_NV + r"attention\.projection_layer\.(weight|bias)$", _O + "attn.proj.\\2"),
    (_NV + r"attention\.(q_norm|k_norm)\.weight$", _O + "attn.\\2.weight"),
    (_NV + r"layernorm_before\.(weight|bias)$", _O + "norm1.\\2"),
    (_NV + r"layernorm_after\.(weight|bias)$", _O + "norm2.\\2"),
    (_NV + r"mlp\.(fc[12])\.(weight|bias)$", _O + "mlp.\\2.\\3"),
    (r"^model\.multi_modal_projector\.layer_norm\.(weight|bias)$", "mlp1.0.\\1"),
    (r"^model\.multi_modal_projector\.linear_1\.(weight|bias)$", "mlp1.1.\\1"),
    (r"^model\.multi_modal_projector\.linear_2\.(weight|bias)$", "mlp1.3.\\1"),
    (r"^model\.language_model\.(.+)$", "language_model.model.\\1"),
    (r"^lm_head\.(.+)$", "language_model.lm_head.\\1"),
)
_NATIVE_QKV = re.compile(_NV + r"attention\.(q_proj|k_proj|v_proj)\.(weight|bias)$")

_COMPILED_O2N = tuple((re.compile(p), r) for p, r in ORIGINAL_TO_NATIVE)
_COMPILED_N2O = tuple((re.compile(p), r) for p, r in NATIVE_TO_ORIGINAL)

_LLM_DROP = {
    "_name_or_path",
    "_attn_implementation_autoset",
    "auto_map",
    "use_bfloat16",
    "use_flash_attn",
    "attn_implementation",
    "architectures",
    "transformers_version",
    "model_type",
    "torch_dtype",
    "dtype",
    "bias",
    "laux_allreduce",
    "moe_coeff_ratio",
    "moe_intermediate_size",
    "moe_output_scale",
    "noisy_gate_policy",
    "shared_expert_intermediate_size",
    "use_residual",
    "use_moe",
    "use_rts",
    "use_weighted_residual",
    "moe_config",
    "num_experts",
    "num_routed_experts",
    "num_shared_experts",
    "capacity_factor",
    "eval_capacity_factor",
}
_VISION_FIELDS = {
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "initializer_range",
    "norm_type",
    "layer_norm_eps",
    "image_size",
    "patch_size",
    "num_channels",
}


class ConversionError(ValueError):
    """The original-layout checkpoint cannot be mapped onto the native model."""


def is_original_config(config: Mapping[str, Any]) -> bool:
    archs = config.get("architectures") or []
    return "InternVLChatModel" in archs or config.get("model_type") == "internvl_chat"


def native_config_from_original(original: Mapping[str, Any], image_token_id: int) -> InternVLConfig:
    if str(original.get("ps_version", "v2")) != "v2":
        # v1 pixel shuffle transposes differently; the native model implements v2 only.
        raise ConversionError(f"unsupported ps_version {original.get('ps_version')!r}")
    llm = dict(original.get("llm_config") or {})
    llm_type = llm.get("model_type", "qwen2")
    if llm_type != "qwen2":
        raise ConversionError(f"only Qwen2 language models are supported, got {llm_type!r}")
    llm = {k: v for k, v in llm.items() if k not in _LLM_DROP}
    llm["use_cache"] = True
    tie = bool(llm.get("tie_word_embeddings", False))
    vision_raw = dict(original.get("vision_config") or {})
    vision = {k: v for k, v in vision_raw.items() if k in _VISION_FIELDS}
    if "qkv_bias" in vision_raw:
        vision["attention_bias"] = bool(vision_raw["qkv_bias"])
    if "qk_normalization" in vision_raw:
        vision["use_qk_norm"] = bool(vision_raw["qk_normalization"])
    if "attention_dropout" in vision_raw:
        vision["attention_dropout"] = vision_raw["attention_dropout"]
        vision["projection_dropout"] = vision_raw["attention_dropout"]
    if original.get("force_image_size"):
        vision["image_size"] = int(original["force_image_size"])
    vision_config = InternVLVisionConfig(use_absolute_position_embeddings=True, **vision)
    config = InternVLConfig(
        vision_config=vision_config,
        text_config=Qwen2Config(**llm),
        image_token_id=image_token_id,
        downsample_ratio=float(original.get("downsample_ratio", 0.5)),
        vision_feature_layer=int(original.get("select_layer", -1)),
        tie_word_embeddings=tie,
    )
    config.image_seq_length = tokens_per_tile(config.to_dict() | {"image_seq_length": None})
    return config


def _rename(key: str, table: tuple[tuple[re.Pattern[str], str], ...]) -> str | None:
    for pattern, repl in table:
        if pattern.match(key):
            return pattern.sub(repl, key)
    return None


def state_dict_to_native(
    original: Mapping[str, torch.Tensor], vision_hidden: int
) -> dict[str, torch.Tensor]:
    native: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, tensor in original.items():
        qkv = _QKV.match(key)
        if qkv:
            layer, kind = qkv.group(1), qkv.group(2)
            base = f"model.vision_tower.encoder.layer.{layer}.attention."
            for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
                native[f"{base}{name}.{kind}"] = tensor[i * vision_hidden : (i + 1) * vision_hidden]
            continue
        new_key = _rename(key, _COMPILED_O2N)
        if new_key is None:
            unknown.append(key)
        else:
            native[new_key] = tensor
    if unknown:
        raise ConversionError(f"unmapped original keys: {sorted(unknown)[:10]}")
    return native


def state_dict_to_original(native: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    original: dict[str, torch.Tensor] = {}
    qkv_parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in native.items():
        match = _NATIVE_QKV.match(key)
        if match:
            qkv_parts.setdefault((match.group(1), match.group(3)), {})[match.group(2)] = tensor
            continue
        new_key = _rename(key, _COMPILED_N2O)
        if new_key is None:
            raise ConversionError(f"unmapped native key {key}")
        original[new_key] = tensor
    for (layer, kind), parts in qkv_parts.items():
        original[f"vision_model.encoder.layers.{layer}.attn.qkv.{kind}"] = torch.cat(
            [parts["q_proj"], parts["k_proj"], parts["v_proj"]], dim=0
        )
    return original


def original_config_from_native(config: InternVLConfig) -> dict[str, Any]:
    """An original-style config.json (as OpenGVLab's fine-tuning scripts write it)."""
    vision: Any = config.vision_config
    text_config: Any = config.text_config
    text = text_config.to_dict()
    for key in ("dtype", "transformers_version", "_name_or_path"):
        text.pop(key, None)
    text["architectures"] = ["Qwen2ForCausalLM"]
    image_size = vision.image_size
    patch_size = vision.patch_size
    return {
        "architectures": ["InternVLChatModel"],
        "auto_map": {
            "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
            "AutoModel": "modeling_internvl_chat.InternVLChatModel",
            "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
        },
        "model_type": "internvl_chat",
        "downsample_ratio": config.downsample_ratio,
        "dynamic_image_size": True,
        "force_image_size": image_size[0] if isinstance(image_size, list | tuple) else image_size,
        "max_dynamic_patch": 12,
        "min_dynamic_patch": 1,
        "ps_version": "v2",
        "select_layer": config.vision_feature_layer,
        "template": "internvl2_5",
        "torch_dtype": "float32",
        "use_thumbnail": True,
        "llm_config": text,
        "vision_config": {
            "architectures": ["InternVisionModel"],
            "model_type": "intern_vit_6b",
            "hidden_size": vision.hidden_size,
            "num_hidden_layers": vision.num_hidden_layers,
            "num_attention_heads": vision.num_attention_heads,
            "intermediate_size": vision.intermediate_size,
            "image_size": image_size[0] if isinstance(image_size, list | tuple) else image_size,
            "patch_size": patch_size[0] if isinstance(patch_size, list | tuple) else patch_size,
            "qkv_bias": vision.attention_bias,
            "qk_normalization": vision.use_qk_norm,
            "norm_type": vision.norm_type,
            "layer_norm_eps": vision.layer_norm_eps,
            "hidden_act": vision.hidden_act,
            "attention_dropout": vision.attention_dropout,
            "dropout": 0.0,
            "drop_path_rate": 0.0,
            "initializer_factor": 1.0,
            "num_channels": vision.num_channels,
            "use_flash_attn": False,
        },
    }


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory (single or sharded safetensors, or .bin)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for name in files:
            state.update(load_file(str(path / name)))
        return state
    single = path / "model.safetensors"
    if single.is_file():
        return dict(load_file(str(single)))
    binary = path / "pytorch_model.bin"
    if binary.is_file():
        loaded = torch.load(binary, map_location="cpu", weights_only=True)
        return dict(loaded)
    raise ConversionError(f"no weights (model.safetensors / pytorch_model.bin) in {path}")


def write_original_layout(
    model: torch.nn.Module,
    config: InternVLConfig,
    out_dir: Path,
    save_tokenizer: Callable[[Path], Any] | None = None,
) -> None:
    """Write a native model in the original layout (config.json + model.safetensors)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    if bool(config.tie_word_embeddings):
        state.pop("lm_head.weight", None)
    original = state_dict_to_original(state)
    save_file(original, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(
        json.dumps(original_config_from_native(config), indent=2), encoding="utf-8"
    )
    if save_tokenizer is not None:
        save_tokenizer(out_dir)
