from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from inference_svc.engine import original_layout
from inference_svc.engine.devices import select_runtime
from inference_svc.engine.loader import detect_layout, load_model

CPU = select_runtime("cpu", "auto", "auto", cuda_available=False, flash_available=False)


@pytest.fixture(scope="module")
def original_dir(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    native = load_model(demo_model_dir, runtime=CPU)
    out = tmp_path_factory.mktemp("original")
    original_layout.write_original_layout(
        native.model, native.model.config, out, native.tokenizer.save_pretrained
    )
    return out


def test_original_layout_looks_like_opengvlab(original_dir: Path) -> None:
    config = json.loads((original_dir / "config.json").read_text())
    assert config["architectures"] == ["InternVLChatModel"]
    keys = set(load_file(str(original_dir / "model.safetensors")))
    assert "vision_model.embeddings.class_embedding" in keys
    assert "vision_model.encoder.layers.0.attn.qkv.weight" in keys
    assert "mlp1.1.weight" in keys
    assert any(k.startswith("language_model.model.layers.0.") for k in keys)
    assert not any(k.startswith("model.") for k in keys)
    assert detect_layout(original_dir) == "original"


def test_converted_original_matches_native(demo_model_dir: Path, original_dir: Path) -> None:
    native = load_model(demo_model_dir, runtime=CPU)
    converted = load_model(original_dir, layout="auto", runtime=CPU)
    assert converted.kind == "native"
    assert converted.source_layout == "original"
    assert (native.load_path, converted.load_path) == ("native", "converted")
    assert converted.tokens_per_tile == native.tokens_per_tile == 64

    prompt = "<|im_start|>user\n<img>" + "<IMG_CONTEXT>" * 64 + "</img>\nSeal?<|im_end|>\n"
    prompt += "<|im_start|>assistant\n"
    enc = native.tokenizer([prompt], return_tensors="pt")
    pixels = torch.randn(1, 3, 448, 448, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        a = native.model(**enc, pixel_values=pixels).logits
        b = converted.model(**enc, pixel_values=pixels).logits
    assert torch.equal(a, b)
    out_a = native.generate(enc["input_ids"], enc["attention_mask"], pixels, 24)
    out_b = converted.generate(enc["input_ids"], enc["attention_mask"], pixels, 24)
    assert torch.equal(out_a, out_b)


def test_unknown_original_keys_are_refused(original_dir: Path, tmp_path: Path) -> None:
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((original_dir / name).read_bytes())
    state = load_file(str(original_dir / "model.safetensors"))
    state["vision_model.mystery.weight"] = torch.zeros(2)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(original_layout.ConversionError):
        load_model(tmp_path, runtime=CPU)


def test_key_mapping_is_invertible() -> None:
    original = {
        "vision_model.embeddings.patch_embedding.weight": torch.zeros(1),
        "vision_model.encoder.layers.3.ls1": torch.zeros(1),
        "vision_model.encoder.layers.3.attn.proj.bias": torch.zeros(1),
        "vision_model.encoder.layers.3.norm2.weight": torch.zeros(1),
        "vision_model.encoder.layers.3.mlp.fc2.weight": torch.zeros(1),
        "vision_model.encoder.layers.3.attn.qkv.weight": torch.arange(6.0).reshape(6, 1),
        "mlp1.0.bias": torch.zeros(1),
        "mlp1.3.weight": torch.zeros(1),
        "language_model.model.norm.weight": torch.zeros(1),
        "language_model.lm_head.weight": torch.zeros(1),
    }
    native = original_layout.state_dict_to_native(original, vision_hidden=2)
    k_proj = native["model.vision_tower.encoder.layer.3.attention.k_proj.weight"]
    assert k_proj.flatten().tolist() == [2.0, 3.0]
    assert "model.vision_tower.encoder.layer.3.lambda_1" in native
    assert "model.multi_modal_projector.linear_2.weight" in native
    back = original_layout.state_dict_to_original(native)
    assert set(back) == set(original)
    assert torch.equal(
        back["vision_model.encoder.layers.3.attn.qkv.weight"],
        original["vision_model.encoder.layers.3.attn.qkv.weight"],
    )
