"""Stopping and answer text as ``InternVLChatModel.chat()`` does them: generation ends at the
template separator ``<|im_end|>`` only, and the answer is the decoded text, stripped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from inference_svc.engine.api import FinishReason
from inference_svc.engine.config import EngineConfig
from inference_svc.engine.devices import Runtime, select_runtime
from inference_svc.engine.loader import LoadedModel, load_model
from inference_svc.engine.local import LocalEngine, load_configured_model
from inference_svc.engine.prompting import IM_END, answer_text

from .conftest import Recorder, make_request

CPU = select_runtime("cpu", "auto", "auto", cuda_available=False, flash_available=False)


def test_only_the_template_separator_stops(demo_model_dir: Path) -> None:
    loaded = load_model(demo_model_dir, runtime=CPU)
    im_end = loaded.tokenizer.convert_tokens_to_ids(IM_END)
    assert loaded.stop_token_ids == (im_end,)
    assert loaded.eos_token_id == im_end
    assert loaded.generation_config(8).eos_token_id == [im_end]


def test_answer_text_is_stripped_and_ends_at_the_separator(demo_model_dir: Path) -> None:
    loaded = load_model(demo_model_dir, runtime=CPU)
    ids = loaded.tokenizer(' \n{"ok": true}\n ' + IM_END + "tail")["input_ids"]
    assert loaded.answer_text(ids) == '{"ok": true}'
    assert answer_text("\n yes \n<|im_end|>\nmore") == "yes"
    assert answer_text("  ") == ""


def _favouring(token: str) -> Any:
    """A model loader whose model always prefers ``token`` (a bias on its lm_head's output),
    so what the engine does with that token is deterministic."""

    def load(cfg: EngineConfig, runtime: Runtime) -> LoadedModel:
        loaded = load_configured_model(cfg, runtime)
        token_id = loaded.tokenizer.convert_tokens_to_ids(token)
        assert isinstance(token_id, int) and token_id != loaded.tokenizer.unk_token_id

        def bias(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
            output = output.clone()
            output[..., token_id] += 1e4
            return output

        loaded.model.lm_head.register_forward_hook(bias)
        return loaded

    return load


@pytest.mark.parametrize("runner", ["auto", "generate"])
@pytest.mark.parametrize(
    ("token", "reason", "tokens"),
    [
        ("<|endoftext|>", FinishReason.LENGTH, 12),  # not a stop token: the row goes on
        ("<|im_end|>", FinishReason.STOP, 1),
        ("Ġ", FinishReason.LENGTH, 12),  # spaces only: the stripped answer is empty
    ],
)
async def test_the_engine_stops_and_strips_like_chat(
    model_cache: Path, runner: str, token: str, reason: FinishReason, tokens: int
) -> None:
    config = EngineConfig(
        model_cache_dir=model_cache, device="cpu", engine_process=False, constrained_decoding=False
    )
    engine = LocalEngine(config, model_loader=_favouring(token), runner=runner)  # type: ignore[arg-type]
    await engine.start()
    try:
        result = await engine.generate(make_request("r", max_new_tokens=12), Recorder())
    finally:
        await engine.stop()
    assert result.finish_reason is reason
    assert result.completion_tokens == tokens
    assert result.text == ""
