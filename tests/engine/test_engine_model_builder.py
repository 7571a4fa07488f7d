from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, InternVLForConditionalGeneration

from inference_svc.engine import model_builder as mb
from inference_svc.engine.prompting import tokens_per_tile


def test_demo_model_builds_offline_and_round_trips(tmp_path: Path) -> None:
    model, tokenizer, spec = mb.build_demo_model()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded: Any = InternVLForConditionalGeneration.from_pretrained(tmp_path)
    loaded.eval()
    loaded_tok = AutoTokenizer.from_pretrained(tmp_path)

    text = "<|im_start|>user\n<img><IMG_CONTEXT></img>\nIs the seal intact?<|im_end|>\n"
    assert loaded_tok(text)["input_ids"] == tokenizer(text)["input_ids"]
    ids = tokenizer(text)["input_ids"]
    for token in mb.SPECIAL_TOKENS:  # each special token is one id, never split
        assert ids.count(tokenizer.convert_tokens_to_ids(token)) == text.count(token)
    assert loaded_tok.pad_token == mb.ENDOFTEXT
    assert loaded_tok.eos_token == mb.IM_END
    assert "<|im_start|>assistant" in loaded_tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )

    # The demo model keeps the product's 448 px tiles but uses 28 px patches (pixel shuffle
    # 0.5 -> 64 tokens); the full-size shapes keep 14 px patches and 256 (tested below).
    assert tokens_per_tile(loaded.config) == 64
    assert tuple(loaded.config.vision_config.image_size) == (448, 448)
    per_tile = 64
    prompt = "<img>" + "<IMG_CONTEXT>" * per_tile + "</img>hello"
    enc = tokenizer([prompt], return_tensors="pt")
    pixels = torch.randn(1, 3, 448, 448, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        a = model(**enc, pixel_values=pixels).logits
        b = loaded(**enc, pixel_values=pixels).logits
    assert torch.equal(a, b)
    assert spec.seed == json.loads(mb.default_config_path().read_text())["seed"]


def test_build_is_reproducible() -> None:
    first, tok1, _ = mb.build_demo_model()
    second, tok2, _ = mb.build_demo_model()
    assert tok1.get_vocab() == tok2.get_vocab()
    for (name, p1), (_, p2) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        assert torch.equal(p1, p2), name


def test_cache_is_reused_and_keyed_by_config(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = mb.ensure_demo_model(cache)
    marker = first / mb.MODEL_INFO_FILE
    stamp = marker.stat().st_mtime_ns
    weights_stamp = (first / "model.safetensors").stat().st_mtime_ns

    again = mb.ensure_demo_model(cache)
    assert again == first
    assert marker.stat().st_mtime_ns == stamp
    assert (first / "model.safetensors").stat().st_mtime_ns == weights_stamp
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []  # no temp left

    # A changed config builds a new model next to the old one.
    config_dir = tmp_path / "configs"
    shutil.copytree(mb.default_config_path().parent, config_dir)
    config_file = config_dir / mb.DEFAULT_CONFIG_NAME
    data = json.loads(config_file.read_text())
    data["seed"] += 1
    config_file.write_text(json.dumps(data))
    changed = mb.ensure_demo_model(cache, config_file)
    assert changed != first
    assert json.loads((changed / mb.MODEL_INFO_FILE).read_text())["untrained"] is True
    assert marker.stat().st_mtime_ns == stamp
