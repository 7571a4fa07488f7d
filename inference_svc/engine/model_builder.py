"""Small randomly initialised InternVL models (and their tokenizer) built offline.

No weights can be downloaded, so tests and the local demo use a tiny transformers-native
InternVL built from ``model_configs/demo_internvl.json`` with a byte-level BPE tokenizer
trained on ``model_configs/tokenizer_corpus.txt`` (which includes the bundled prompt
template's wording, so prompts tokenise at about 3.8 characters per token like a real Qwen2.5
tokenizer). It keeps the product's 448 px tiles but uses 28 px patches: with pixel shuffle 0.5
that is 64 image tokens per tile, against the real model's 256 (a property of this tiny
demo model only, see BENCHMARKS.md); the full-size shapes keep 14 px patches and 256.
Benchmarks use :func:`build_full_size_model` (InternVL2.5-1B shapes, random weights).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLVisionConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

logger = logging.getLogger(__name__)

# Bump when the build procedure changes in a way that changes the saved model.
BUILDER_VERSION = "1"
MODEL_INFO_FILE = "rpi_model.json"

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"
IMG_START = "<img>"
IMG_END = "</img>"
IMG_CONTEXT = "<IMG_CONTEXT>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, IMG_START, IMG_END, IMG_CONTEXT)

# The chat template of the converted InternVL checkpoints (string content only).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\\n'}}{% endif %}"
)

DEFAULT_CONFIG_NAME = "demo_internvl.json"


@dataclass(frozen=True)
class DemoModelSpec:
    name: str
    seed: int
    tokenizer: dict[str, Any]
    vision: dict[str, Any]
    text: dict[str, Any]
    downsample_ratio: float
    corpus: str
    config_hash: str


def _config_dir() -> Path:
    return Path(str(resources.files("inference_svc") / "model_configs"))


def default_config_path() -> Path:
    return _config_dir() / DEFAULT_CONFIG_NAME


def load_spec(config_path: Path | None = None) -> DemoModelSpec:
    path = config_path or default_config_path()
    raw_config = path.read_bytes()
    data = json.loads(raw_config)
    corpus_path = path.parent / data["tokenizer"]["corpus"]
    corpus = corpus_path.read_text(encoding="utf-8")
    digest = hashlib.sha256()
    for part in (
        raw_config,
        corpus.encode(),
        BUILDER_VERSION.encode(),
        transformers.__version__.split(".")[0].encode(),
    ):
        digest.update(part)
        digest.update(b"\0")
    return DemoModelSpec(
        name=str(data["name"]),
        seed=int(data["seed"]),
        tokenizer=dict(data["tokenizer"]),
        vision=dict(data["vision"]),
        text=dict(data["text"]),
        downsample_ratio=float(data.get("downsample_ratio", 0.5)),
        corpus=corpus,
        config_hash=digest.hexdigest(),
    )


def build_tokenizer(
    corpus: str, vocab_size: int, min_frequency: int = 1, model_max_length: int = 16384
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``corpus`` (deterministic for a given corpus)."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for line in corpus.splitlines() if line.strip()]
    backend.train_from_iterator(lines, trainer)
    tokenizer_cls: Any = PreTrainedTokenizerFast
    tokenizer: PreTrainedTokenizerFast = tokenizer_cls(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        additional_special_tokens=[IM_START, IMG_START, IMG_END, IMG_CONTEXT],
        padding_side="left",
        model_max_length=model_max_length,
        chat_template=CHAT_TEMPLATE,
    )
    return tokenizer


def _token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(token_id, int) or token_id < 0:
        raise ValueError(f"tokenizer lacks {token}")
    return token_id


def internvl_config(
    vision: dict[str, Any],
    text: dict[str, Any],
    *,
    vocab_size: int,
    image_token_id: int,
    eos_token_id: int,
    pad_token_id: int,
    downsample_ratio: float = 0.5,
    tie_word_embeddings: bool = True,
) -> InternVLConfig:
    """An InternVL config whose image_seq_length matches the vision geometry."""
    text = dict(text)
    rope_theta = float(text.pop("rope_theta", 1_000_000.0))
    text_config = Qwen2Config(
        vocab_size=vocab_size,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        tie_word_embeddings=tie_word_embeddings,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=None,
        use_cache=True,
        **text,
    )
    vision_config = InternVLVisionConfig(use_absolute_position_embeddings=True, **vision)
    image_size = int(vision["image_size"])
    patch_size = int(vision["patch_size"])
    seq_len = int((image_size // patch_size) ** 2 * downsample_ratio**2)
    return InternVLConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=image_token_id,
        image_seq_length=seq_len,
        downsample_ratio=downsample_ratio,
        tie_word_embeddings=tie_word_embeddings,
    )


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    # Isolated RNG so building a model does not disturb callers' random streams.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _finish_generation_config(
    model: InternVLForConditionalGeneration, tokenizer: PreTrainedTokenizerFast
) -> None:
    gen = model.generation_config
    gen.eos_token_id = [_token_id(tokenizer, IM_END), _token_id(tokenizer, ENDOFTEXT)]
    gen.pad_token_id = _token_id(tokenizer, ENDOFTEXT)
    gen.bos_token_id = None
    gen.do_sample = False


def build_demo_model(
    config_path: Path | None = None,
) -> tuple[InternVLForConditionalGeneration, PreTrainedTokenizerFast, DemoModelSpec]:
    spec = load_spec(config_path)
    tok_cfg = spec.tokenizer
    tokenizer = build_tokenizer(
        spec.corpus,
        int(tok_cfg["vocab_size"]),
        int(tok_cfg.get("min_frequency", 1)),
        int(tok_cfg.get("model_max_length", 16384)),
    )
    config = internvl_config(
        spec.vision,
        spec.text,
        vocab_size=len(tokenizer),
        image_token_id=_token_id(tokenizer, IMG_CONTEXT),
        eos_token_id=_token_id(tokenizer, IM_END),
        pad_token_id=_token_id(tokenizer, ENDOFTEXT),
        downsample_ratio=spec.downsample_ratio,
    )
    with _seeded(spec.seed):
        model: Any = InternVLForConditionalGeneration(config)
    model.eval()
    _finish_generation_config(model, tokenizer)
    return model, tokenizer, spec


def ensure_demo_model(cache_dir: Path, config_path: Path | None = None) -> Path:
    """Return the directory of the demo model, building it once per config hash.

    The build goes to a temporary directory that is renamed into place, so a crash or a
    concurrent builder never leaves a half-written model where a later start would load it.
    """
    spec = load_spec(config_path)
    cache_dir = Path(cache_dir)
    target = cache_dir / f"{spec.name}-{spec.config_hash[:16]}"
    if (target / MODEL_INFO_FILE).is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    logger.info("building demo model %s in %s", spec.name, target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=cache_dir))
    try:
        model, tokenizer, _ = build_demo_model(config_path)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = {
            "name": spec.name,
            "untrained": True,
            "config_hash": spec.config_hash,
            "builder_version": BUILDER_VERSION,
        }
        (tmp / MODEL_INFO_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
        tmp.chmod(0o755)  # mkdtemp creates it private; the cache is shared with readers
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / MODEL_INFO_FILE).is_file():
                raise
            # Another process finished the same build first; its copy is identical.
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
