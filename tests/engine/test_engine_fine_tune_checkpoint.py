"""A checkpoint shipped the way an InternVL2.5 fine-tune ships it, served on the converted path,
is the native transformers InternVL model built from the same weights.

The checkpoint is written here, in the original OpenGVLab layout, with the test's own key
mapping (not the service's): a transformers-4.x style ``config.json`` with ``llm_config`` and
``vision_config``, bf16 safetensors, and the Qwen2Tokenizer files a fine-tune carries
(``vocab.json`` + ``merges.txt`` + ``tokenizer_config.json``, no ``tokenizer.json``). The weights
are the demo model's, rounded to bf16; the reference is ``InternVLForConditionalGeneration``
holding the same bf16 values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import InternVLForConditionalGeneration

from bench.photos import photo_jpeg
from inference_svc.domain.models import FetchedImage, ImageRole, ImageSource
from inference_svc.engine.api import GenerationRequest
from inference_svc.engine.config import EngineConfig
from inference_svc.engine.devices import select_runtime
from inference_svc.engine.loader import LoadedModel, load_model
from inference_svc.engine.local import LocalEngine
from inference_svc.engine.pixels import normalise_array
from inference_svc.engine.prompting import IM_END, answer_text, build_prompt
from inference_svc.imaging.tiling import prepare_image

from .conftest import Recorder

CPU = select_runtime("cpu", "auto", "auto", cuda_available=False, flash_available=False)
SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>")

# Native name -> OpenGVLab name (InternVLChatModel: vision_model, mlp1, language_model).
_RENAMES = (
    ("model.vision_tower.embeddings.cls_token", "vision_model.embeddings.class_embedding"),
    (
        "model.vision_tower.embeddings.position_embeddings",
        "vision_model.embeddings.position_embedding",
    ),
    (
        "model.vision_tower.embeddings.patch_embeddings.projection.",
        "vision_model.embeddings.patch_embedding.",
    ),
    ("model.vision_tower.encoder.layer.", "vision_model.encoder.layers."),
    (".lambda_1", ".ls1"),
    (".lambda_2", ".ls2"),
    (".attention.projection_layer.", ".attn.proj."),
    (".layernorm_before.", ".norm1."),
    (".layernorm_after.", ".norm2."),
    ("model.multi_modal_projector.layer_norm.", "mlp1.0."),
    ("model.multi_modal_projector.linear_1.", "mlp1.1."),
    ("model.multi_modal_projector.linear_2.", "mlp1.3."),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
)


def opengvlab_state(native: dict[str, torch.Tensor], tied: bool) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in native.items():
        if tied and key == "lm_head.weight":
            continue  # a tied head is not saved, as save_pretrained leaves it out
        if (
            ".attention.q_proj." in key
            or ".attention.k_proj." in key
            or ".attention.v_proj." in key
        ):
            head, part, kind = key.rsplit(".", 2)  # ...attention, q_proj, weight
            qkv.setdefault(f"{head}.qkv.{kind}", {})[part] = tensor
            continue
        name = key
        for old, new in _RENAMES:
            name = name.replace(old, new)
        out[name] = tensor
    for key, parts in qkv.items():
        name = key.replace("model.vision_tower.encoder.layer.", "vision_model.encoder.layers.")
        name = name.replace(".attention.qkv.", ".attn.qkv.")
        out[name] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]], dim=0)
    return out


def fine_tune_config(native: Any) -> dict[str, Any]:
    text, vision = native.text_config, native.vision_config
    return {
        "architectures": ["InternVLChatModel"],
        "auto_map": {
            "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
            "AutoModel": "modeling_internvl_chat.InternVLChatModel",
            "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
        },
        "model_type": "internvl_chat",
        "torch_dtype": "bfloat16",
        "transformers_version": "4.37.2",
        "downsample_ratio": native.downsample_ratio,
        "dynamic_image_size": True,
        "force_image_size": vision.image_size[0],
        "max_dynamic_patch": 12,
        "min_dynamic_patch": 1,
        "ps_version": "v2",
        "select_layer": -1,
        "template": "internvl2_5",
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "use_thumbnail": True,
        "llm_config": {
            "_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct",
            "architectures": ["Qwen2ForCausalLM"],
            "attn_implementation": "flash_attention_2",
            "model_type": "qwen2",
            "torch_dtype": "bfloat16",
            "bos_token_id": 0,  # <|endoftext|>, as in Qwen2.5 (whose ids are 151643/151645)
            "eos_token_id": 2,  # <|im_end|>
            "hidden_act": text.hidden_act,
            "hidden_size": text.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": text.intermediate_size,
            "max_position_embeddings": text.max_position_embeddings,
            "max_window_layers": 21,
            "num_attention_heads": text.num_attention_heads,
            "num_hidden_layers": text.num_hidden_layers,
            "num_key_value_heads": text.num_key_value_heads,
            "rms_norm_eps": text.rms_norm_eps,
            "rope_scaling": None,
            "rope_theta": text.rope_parameters["rope_theta"],
            "sliding_window": 32768,
            "tie_word_embeddings": text.tie_word_embeddings,
            "use_bfloat16": True,
            "use_cache": False,
            "use_sliding_window": False,
            "vocab_size": text.vocab_size,
        },
        "vision_config": {
            "architectures": ["InternVisionModel"],
            "model_type": "intern_vit_6b",
            "torch_dtype": "bfloat16",
            "attention_dropout": 0.0,
            "drop_path_rate": 0.0,
            "dropout": 0.0,
            "hidden_act": vision.hidden_act,
            "hidden_size": vision.hidden_size,
            "image_size": vision.image_size[0],
            "initializer_factor": 1.0,
            "initializer_range": 0.02,
            "intermediate_size": vision.intermediate_size,
            "layer_norm_eps": vision.layer_norm_eps,
            "norm_type": vision.norm_type,
            "num_attention_heads": vision.num_attention_heads,
            "num_channels": 3,
            "num_hidden_layers": vision.num_hidden_layers,
            "patch_size": vision.patch_size[0],
            "qk_normalization": vision.use_qk_norm,
            "qkv_bias": vision.attention_bias,
            "use_bfloat16": True,
            "use_flash_attn": True,
        },
    }


def write_slow_tokenizer(tokenizer: Any, out: Path) -> None:
    """vocab.json + merges.txt (the BPE itself) and a tokenizer_config.json naming
    Qwen2Tokenizer with its special tokens, as Qwen2.5-based fine-tunes ship them."""
    tokenizer.backend_tokenizer.model.save(str(out))
    added = {
        str(tokenizer.convert_tokens_to_ids(t)): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t in SPECIAL
    }
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added,
        "additional_special_tokens": list(SPECIAL[1:]),
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": 16384,
        "split_special_tokens": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


@pytest.fixture(scope="module")
def shipped(
    demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, InternVLForConditionalGeneration]:
    """(the fine-tune's directory, the native reference model with the same weights)."""
    demo = load_model(demo_model_dir, runtime=CPU)
    config: Any = demo.model.config
    bf16 = {
        k: v.detach().to(torch.bfloat16).contiguous() for k, v in demo.model.state_dict().items()
    }
    out = tmp_path_factory.mktemp("fine-tune")
    tied = bool(config.tie_word_embeddings)
    save_file(
        opengvlab_state(bf16, tied), str(out / "model.safetensors"), metadata={"format": "pt"}
    )
    (out / "config.json").write_text(json.dumps(fine_tune_config(config), indent=2))
    write_slow_tokenizer(demo.tokenizer, out)
    reference_cls: Any = InternVLForConditionalGeneration
    reference = reference_cls(config).eval()
    reference.load_state_dict({k: v.float() for k, v in bf16.items()})
    return out, reference


def test_the_checkpoint_is_shipped_as_a_fine_tune(shipped: tuple[Path, Any]) -> None:
    path, _ = shipped
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt"} <= names
    assert "tokenizer.json" not in names
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}  # noqa: SIM118
        assert "vision_model.encoder.layers.0.attn.qkv.weight" in set(f.keys())


def _photo_tiles(max_tiles: int) -> np.ndarray:
    data = photo_jpeg((900, 1600), seed=11)
    fetched = FetchedImage(ImageSource(ImageRole.PICKUP, 0, uri="x"), data, "x")
    return np.asarray(prepare_image(fetched, max_tiles).tiles)


CASES = {
    "one tile": ("<image>\nIs the seal intact?", [1]),
    "multi-tile": ("Image-1: <image>\nImage-2: <image>\nSame product?", [1, 2]),
}


def _inputs(loaded: LoadedModel, case: str) -> tuple[str, np.ndarray, tuple[int, ...], Any]:
    user, max_tiles = CASES[case]
    tiles = [_photo_tiles(m) for m in max_tiles]
    per_image = tuple(int(t.shape[0]) for t in tiles)
    prompt = build_prompt(user, per_image, loaded.tokens_per_tile)
    enc = loaded.tokenizer([prompt], return_tensors="pt")
    return user, np.concatenate(tiles), per_image, enc


@pytest.mark.parametrize("case", list(CASES))
def test_converted_logits_equal_the_native_model(shipped: tuple[Path, Any], case: str) -> None:
    path, reference = shipped
    loaded = load_model(path, runtime=CPU)
    assert loaded.load_path == "converted"
    assert type(loaded.tokenizer).__name__ == "Qwen2Tokenizer"
    _, tiles, per_image, enc = _inputs(loaded, case)
    assert sum(per_image) == (1 if case == "one tile" else 4)  # 1 + (1, 2) grid and thumbnail
    ids = enc["input_ids"]
    assert int((ids == loaded.image_token_id).sum()) == loaded.tokens_per_tile * sum(per_image)
    pixels = torch.from_numpy(normalise_array(tiles))
    with torch.inference_mode():
        want = reference(**enc, pixel_values=pixels).logits
        got = loaded.model(**enc, pixel_values=pixels).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", list(CASES))
async def test_served_greedy_tokens_equal_the_native_model(
    shipped: tuple[Path, Any], case: str
) -> None:
    path, reference = shipped
    engine = LocalEngine(
        EngineConfig(
            model_path=path, device="cpu", engine_process=False, constrained_decoding=False
        )
    )
    await engine.start()
    try:
        loaded = engine.loaded
        user, tiles, per_image, enc = _inputs(loaded, case)
        request = GenerationRequest(
            request_id=case,
            prompt=user,
            pixel_values=tiles,
            tiles_per_image=per_image,
            max_new_tokens=24,
        )
        result = await engine.generate(request, Recorder())
        assert engine.info.model_load_path == "converted"
        assert engine.info.runner == "slot"
    finally:
        await engine.stop()
    with torch.inference_mode():
        out = reference.generate(
            **enc,
            pixel_values=torch.from_numpy(normalise_array(tiles)),
            max_new_tokens=24,
            do_sample=False,
            eos_token_id=loaded.eos_token_id,
            pad_token_id=loaded.pad_token_id,
        )
    new = out[0, enc["input_ids"].shape[1] :].tolist()
    assert result.completion_tokens == len(new)
    stop = new.index(loaded.eos_token_id) if loaded.eos_token_id in new else len(new)
    assert result.text == answer_text(
        str(loaded.tokenizer.decode(new[:stop], skip_special_tokens=True))
    )
