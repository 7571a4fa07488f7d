"""JSON-schema constrained decoding with llguidance, as a batched transformers LogitsProcessor.

Each row of a batch has its own matcher (or none). Whitespace is not flexible by default: with
flexible whitespace an untrained (or a confused) model can emit blanks until its token budget
runs out, and compact JSON is also fewer tokens. A schema may override this with its own
``"x-guidance"`` options.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import llguidance
import llguidance.hf
import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase

from . import token_rules

logger = logging.getLogger(__name__)

_TOKENIZERS: weakref.WeakKeyDictionary[PreTrainedTokenizerBase, dict[int, Any]] = (
    weakref.WeakKeyDictionary()
)
_TOKENIZERS_LOCK = threading.Lock()
_BIT_SHIFTS = torch.arange(32, dtype=torch.int32)


class SchemaError(ValueError):
    """The JSON schema cannot be compiled into a grammar."""


def ll_tokenizer(tokenizer: PreTrainedTokenizerBase, n_vocab: int, eos_token_id: int) -> Any:
    """The llguidance view of a tokenizer; built once per (tokenizer, vocabulary size) because
    it takes about a second for a real vocabulary."""
    with _TOKENIZERS_LOCK:
        per_tok = _TOKENIZERS.setdefault(tokenizer, {})
        cached = per_tok.get(n_vocab)
        if cached is None:
            cached = llguidance.hf.from_tokenizer(
                tokenizer,  # type: ignore[arg-type]
                n_vocab=n_vocab,
                eos_token=eos_token_id,
            )
            per_tok[n_vocab] = cached
        return cached


def compile_json_schema(schema: dict[str, Any] | str) -> str:
    """An llguidance grammar for ``schema``; raises SchemaError when it is unusable."""
    try:
        grammar: str = llguidance.LLMatcher.grammar_from_json_schema(
            schema if isinstance(schema, str) else json.dumps(schema),
            defaults={"whitespace_flexible": False},
        )
    except ValueError as exc:
        raise SchemaError(str(exc)) from exc
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error:
        raise SchemaError(error)
    return grammar


def new_matcher(ll_tok: Any, grammar: str) -> Any:
    matcher = llguidance.LLMatcher(ll_tok, grammar, log_level=0)
    if matcher.is_error():
        raise SchemaError(matcher.get_error())
    return matcher


def unpack_bitmask(mask: torch.Tensor, vocab: int) -> torch.Tensor:
    """(rows, words) int32 bitmask -> (rows, vocab) bool of allowed tokens."""
    bits = (mask.unsqueeze(-1) >> _BIT_SHIFTS) & 1
    allowed = bits.reshape(mask.shape[0], -1).bool()
    if allowed.shape[1] >= vocab:
        return allowed[:, :vocab]
    pad = torch.zeros((mask.shape[0], vocab - allowed.shape[1]), dtype=torch.bool)
    return torch.cat([allowed, pad], dim=1)


class ConstrainedLogitsProcessor(LogitsProcessor):
    """Masks each constrained row's logits to what its grammar allows next.

    Tokens are fed to a row's matcher lazily (the tokens after ``prompt_len`` that it has not
    seen yet), so it works as a plain HF logits processor. A row stops being constrained when
    it is finished (``finished[i]``, kept by the caller), after it emitted EOS, or when its
    matcher errs; a row whose grammar is complete (or broken) is forced to EOS.
    """

    def __init__(
        self,
        matchers: Sequence[Any | None],
        *,
        eos_token_id: int,
        vocab_size: int,
        prompt_len: int,
        finished: Sequence[bool] | None = None,
    ) -> None:
        self.matchers = list(matchers)
        self.eos_token_id = eos_token_id
        self.prompt_len = prompt_len
        self._finished = finished
        self.consumed = [0] * len(self.matchers)
        self.saw_eos = [False] * len(self.matchers)
        self.errors: dict[int, str] = {}
        # Width of the llguidance tokenizer's vocabulary (the bitmask covers exactly this).
        self.vocab_size = vocab_size

    def _active(self, row: int) -> bool:
        if self.matchers[row] is None or self.saw_eos[row] or row in self.errors:
            return False
        return not (self._finished is not None and self._finished[row])

    def catch_up(self, row: int, generated: Sequence[int]) -> None:
        """Feed the row's matcher the generated tokens it has not consumed yet."""
        self._consume(row, generated[self.consumed[row] :])

    def _consume(self, row: int, fresh: Sequence[int]) -> None:
        matcher = self.matchers[row]
        if matcher is None:
            return
        for token in fresh:
            self.consumed[row] += 1
            if self.saw_eos[row] or row in self.errors:
                continue
            if token == self.eos_token_id:
                self.saw_eos[row] = True
            elif (error := token_rules.advance_grammar(matcher, token, row)) is not None:
                self.errors[row] = error

    def must_stop(self, row: int) -> bool:
        matcher = self.matchers[row]
        if matcher is None:
            return False
        return token_rules.grammar_done(matcher, self.errors.get(row))

    def is_complete(self, row: int) -> bool:
        """Whether the row's output so far is a complete match of its grammar."""
        matcher = self.matchers[row]
        return matcher is not None and token_rules.grammar_complete(matcher, self.errors.get(row))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows = [i for i in range(len(self.matchers)) if self._active(i)]
        if not rows:
            return scores
        masked: list[int] = []
        forced: list[int] = []
        vocab = scores.shape[1]
        for row in rows:
            start = self.prompt_len + self.consumed[row]
            if start < input_ids.shape[1]:
                self._consume(row, input_ids[row, start:].tolist())
            if self.saw_eos[row]:
                continue
            if self.must_stop(row):
                forced.append(row)
            else:
                masked.append(row)
        if masked:
            matchers = [self.matchers[row] for row in masked]
            allowed = allowed_tokens(matchers, self.vocab_size, vocab)
            for row, matcher in zip(masked, matchers, strict=True):
                assert matcher is not None
                if matcher.is_error():
                    self.errors[row] = matcher.get_error()
                    forced.append(row)
            index = torch.tensor(masked, device=scores.device)
            scores[index] = scores[index].masked_fill(~allowed.to(scores.device), float("-inf"))
        for row in forced:
            token_rules.force_eos(scores, row, self.eos_token_id)
        return scores


def allowed_tokens(matchers: Sequence[Any], ll_vocab_size: int, width: int) -> torch.Tensor:
    """(len(matchers), width) bool: the tokens each matcher allows next. Several rows' masks
    are computed on llguidance's own threads without the interpreter lock."""
    words = (ll_vocab_size + 31) // 32
    bitmask = torch.full((len(matchers), words), -1, dtype=torch.int32)
    if len(matchers) > 1:
        _executor().unsafe_compute_mask_ptr(
            [(m, k) for k, m in enumerate(matchers)],
            bitmask.data_ptr(),
            words * bitmask.element_size(),
            len(matchers),
        )
    else:
        view = bitmask[0]
        matchers[0].unsafe_compute_mask_ptr(view.data_ptr(), view.numel() * view.element_size())
    return unpack_bitmask(bitmask, width)


@functools.cache
def _executor() -> Any:
    """One llguidance thread pool per process (a few threads; masks are small)."""
    return llguidance.LLExecutor(num_threads=min(8, os.cpu_count() or 1))
