"""Load an InternVL checkpoint (native or original OpenGVLab layout) onto the chosen device."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    InternVLForConditionalGeneration,
    PreTrainedTokenizerBase,
)
from transformers.initialization import no_init_weights

from . import original_layout, remote_code
from .devices import Runtime
from .model_builder import MODEL_INFO_FILE
from .prompting import IM_END, IMG_CONTEXT, answer_text, tokens_per_tile

logger = logging.getLogger(__name__)

Layout = Literal["auto", "native", "original"]
# How a checkpoint was loaded: a native checkpoint (or the demo model), an original-layout one
# converted to the native model, or an original-layout one running its own remote code.
LoadPath = Literal["native", "converted", "remote_code"]


@dataclass
class LoadedModel:
    """A model with everything the engine needs to drive it, whatever its layout."""

    model: Any
    tokenizer: PreTrainedTokenizerBase
    # "native": InternVLForConditionalGeneration; "remote_code": OpenGVLab's InternVLChatModel.
    kind: Literal["native", "remote_code"]
    source_layout: Literal["native", "original"]
    name: str
    revision: str
    untrained: bool
    tokens_per_tile: int
    image_size: int
    image_token_id: int
    eos_token_id: int
    stop_token_ids: tuple[int, ...]
    pad_token_id: int
    vocab_size: int
    runtime: Runtime
    info: dict[str, Any] = field(default_factory=dict)
    # "dynamic" or "static" (see resolve_kv_cache); only the native model honours it.
    kv_cache: str = "dynamic"

    @property
    def load_path(self) -> LoadPath:
        if self.kind == "remote_code":
            return "remote_code"
        return "converted" if self.source_layout == "original" else "native"

    def generation_config(self, max_new_tokens: int) -> GenerationConfig:
        config_cls: Any = GenerationConfig
        extra: dict[str, Any] = {}
        if self.kind == "native" and self.kv_cache == "static":
            # Preallocated for prompt + max_new_tokens: a decode step writes one slot per row
            # instead of concatenating (copying) the whole cache, which on CPU cost more than
            # the attention itself for long image prompts.
            extra["cache_implementation"] = "static"
        return config_cls(  # type: ignore[no-any-return]
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=list(self.stop_token_ids),
            pad_token_id=self.pad_token_id,
            bos_token_id=None,
            use_cache=True,
            **extra,
        )

    def answer_text(self, token_ids: Sequence[int]) -> str:
        """The text of generated tokens up to the first stop token, post-processed as
        ``chat()`` does."""
        ids = list(token_ids)
        for i, token in enumerate(ids):
            if token in self.stop_token_ids:
                del ids[i:]
                break
        return answer_text(str(self.tokenizer.decode(ids, skip_special_tokens=True)))

    def prompt_offset(self, input_ids: torch.Tensor) -> int:
        """Where generated tokens start in the ids the generation hooks see: the remote-code
        model generates from embeddings, so its hooks see only new tokens."""
        return int(input_ids.shape[1]) if self.kind == "native" else 0

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None,
        max_new_tokens: int,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Greedy generation; returns only the new tokens (batch, new)."""
        gen_config = self.generation_config(max_new_tokens)
        with torch.inference_mode():
            if self.kind == "native":
                if pixel_values is not None:  # the native model rejects an explicit None
                    kwargs["pixel_values"] = pixel_values
                out = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    generation_config=gen_config,
                    **kwargs,
                )
                return torch.as_tensor(out[:, input_ids.shape[1] :])
            out = self.model.generate(
                pixel_values=pixel_values,
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=gen_config,
                **kwargs,
            )
            return torch.as_tensor(out)


def detect_layout(path: Path) -> Literal["native", "original"]:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no config.json in {path}")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if original_layout.is_original_config(config):
        return "original"
    if config.get("model_type") == "internvl":
        return "native"
    raise ValueError(
        f"{path}: not an InternVL checkpoint (model_type {config.get('model_type')!r})"
    )


def has_remote_code(path: Path) -> bool:
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    auto_map = config.get("auto_map") or {}
    target = auto_map.get("AutoModel")
    if not isinstance(target, str):
        return False
    module = target.rsplit(".", 1)[0]
    return (path / f"{module}.py").is_file()


def _read_info(path: Path) -> dict[str, Any]:
    info_file = path / MODEL_INFO_FILE
    if info_file.is_file():
        data = json.loads(info_file.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            return data
    return {}


def _default_revision(path: Path, info: dict[str, Any]) -> str:
    if info.get("config_hash"):
        return f"cfg-{str(info['config_hash'])[:12]}"
    digest = hashlib.sha256((path / "config.json").read_bytes())
    for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    return f"cfg-{digest.hexdigest()[:12]}"


def _token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(token_id, int) or token_id < 0 or token_id == tokenizer.unk_token_id:
        raise ValueError(f"tokenizer has no {token} token")
    return token_id


def _load_tokenizer(path: Path, trust_remote_code: bool) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(
        str(path), trust_remote_code=trust_remote_code, use_fast=True
    )
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _maybe_compile(model: Any, runtime: Runtime, torch_compile: bool) -> None:
    if not torch_compile:
        return
    if not runtime.device.startswith("cuda"):
        logger.info("torch_compile ignored on %s", runtime.device)
        return
    language_model = model.model.language_model
    language_model.forward = torch.compile(language_model.forward, dynamic=True)


def load_model(
    path: Path,
    *,
    layout: Layout = "auto",
    runtime: Runtime,
    trust_remote_code: bool = False,
    revision: str = "",
    name: str = "",
    torch_compile: bool = False,
) -> LoadedModel:
    """Load a checkpoint directory.

    Original layout: with its remote code present and ``trust_remote_code``, the original
    ``InternVLChatModel`` runs as shipped; otherwise the weights are converted to the native
    model at load time (no code from the checkpoint is executed).
    """
    path = Path(path)
    resolved = detect_layout(path) if layout == "auto" else layout
    for note in runtime.notes:
        logger.warning("runtime: %s", note)
    info = _read_info(path)
    tokenizer = _load_tokenizer(path, trust_remote_code and resolved == "original")
    image_token_id = _token_id(tokenizer, IMG_CONTEXT)

    kind: Literal["native", "remote_code"] = "native"
    model: Any
    config: Any
    if resolved == "native":
        native_cls: Any = InternVLForConditionalGeneration
        model = native_cls.from_pretrained(
            str(path), dtype=runtime.dtype, attn_implementation=runtime.attn_implementation
        )
        config = model.config
    elif trust_remote_code and has_remote_code(path):
        kind = "remote_code"
        model = remote_code.load_remote_code_model(path, runtime)
        # The documented contract of InternVLChatModel.generate().
        model.img_context_token_id = image_token_id
        config = model.config
    else:
        model, config = _load_converted(path, image_token_id, runtime)

    model = model.to(runtime.device).eval()
    name = name or str(info.get("name") or path.name)
    revision = revision or _default_revision(path, info)
    loaded = _wrap(model, config, tokenizer, kind, resolved, info, name, revision, runtime)
    if kind == "native":
        _maybe_compile(model, runtime, torch_compile)
    logger.info(
        "loaded %s (%s layout) on the %s path",
        path,
        resolved,
        loaded.load_path,
        extra={"model_load_path": loaded.load_path},
    )
    return loaded


def _wrap(
    model: Any,
    config: Any,
    tokenizer: PreTrainedTokenizerBase,
    kind: Literal["native", "remote_code"],
    resolved: Literal["native", "original"],
    info: dict[str, Any],
    name: str,
    revision: str,
    runtime: Runtime,
) -> LoadedModel:
    if kind == "native":
        return wrap_native_model(
            model,
            tokenizer,
            name=name,
            revision=revision,
            untrained=bool(info.get("untrained", False)),
            runtime=runtime,
            source_layout=resolved,
            info=info,
        )
    per_tile = int(getattr(model, "num_image_token", 0)) or tokens_per_tile(config.to_dict())
    image_size = getattr(config, "force_image_size", None) or config.vision_config.image_size
    return _describe(
        model,
        tokenizer,
        kind="remote_code",
        source_layout=resolved,
        name=name,
        revision=revision,
        untrained=bool(info.get("untrained", False)),
        per_tile=per_tile,
        image_size=image_size,
        vocab=int(config.llm_config.vocab_size),
        runtime=runtime,
        info=info,
    )


def wrap_native_model(
    model: InternVLForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    *,
    name: str,
    revision: str,
    untrained: bool,
    runtime: Runtime,
    source_layout: Literal["native", "original"] = "native",
    info: dict[str, Any] | None = None,
) -> LoadedModel:
    """Describe an in-memory native model (loaded, converted or freshly built)."""
    config: Any = model.config
    return _describe(
        model,
        tokenizer,
        kind="native",
        source_layout=source_layout,
        name=name,
        revision=revision,
        untrained=untrained,
        per_tile=tokens_per_tile(config),
        image_size=config.vision_config.image_size,
        vocab=int(config.text_config.vocab_size),
        runtime=runtime,
        info=info or {},
    )


def _describe(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    *,
    kind: Literal["native", "remote_code"],
    source_layout: Literal["native", "original"],
    name: str,
    revision: str,
    untrained: bool,
    per_tile: int,
    image_size: Any,
    vocab: int,
    runtime: Runtime,
    info: dict[str, Any],
) -> LoadedModel:
    # Serving never trains: with frozen parameters no forward pass records an autograd graph,
    # even one that runs outside an inference-mode block.
    model.requires_grad_(False)
    tokenizer.padding_side = "left"
    # chat() stops at the template separator only (its eos_token_id), whatever the
    # tokenizer's own eos token is: a model that emits <|endoftext|> mid-answer goes on.
    eos_id = _token_id(tokenizer, IM_END)
    stop_ids = [eos_id]
    pad_id = tokenizer.pad_token_id
    size = image_size[0] if isinstance(image_size, list | tuple) else image_size
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        kind=kind,
        source_layout=source_layout,
        name=name,
        revision=revision,
        untrained=untrained,
        tokens_per_tile=int(per_tile),
        image_size=int(size),
        image_token_id=_token_id(tokenizer, IMG_CONTEXT),
        eos_token_id=eos_id,
        stop_token_ids=tuple(stop_ids),
        pad_token_id=int(pad_id if pad_id is not None else eos_id),
        vocab_size=vocab,
        runtime=runtime,
        info=info,
    )


def _load_converted(
    path: Path, image_token_id: int, runtime: Runtime
) -> tuple[InternVLForConditionalGeneration, Any]:
    original_config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    config: Any = original_layout.native_config_from_original(original_config, image_token_id)
    state = original_layout.state_dict_to_native(
        original_layout.read_state_dict(path), int(config.vision_config.hidden_size)
    )
    if "lm_head.weight" not in state:
        if not config.tie_word_embeddings:
            raise original_layout.ConversionError("checkpoint has no lm_head and is not tied")
        state["lm_head.weight"] = state["model.language_model.embed_tokens.weight"]
    model_cls: Any = InternVLForConditionalGeneration
    with no_init_weights():
        model = model_cls._from_config(
            config, dtype=runtime.dtype, attn_implementation=runtime.attn_implementation
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise original_layout.ConversionError(
            f"converted checkpoint does not fit: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    if config.tie_word_embeddings:
        model.tie_weights()
    logger.info("converted original-layout checkpoint %s to the native model", path)
    return model, config
