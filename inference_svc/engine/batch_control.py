"""Per-row control of one batched ``generate`` call.

Rows in a batch differ in budget (max/min new tokens), constraint and liveness (a caller may
cancel or run out of time). transformers' generate only knows batch-wide settings, so a
logits processor and a stopping criterion sharing this state enforce each row's own: the
stopping criterion (called after each new token) records tokens, ends rows and reports
progress; the logits processor (called before each token) applies grammars and floors.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import LogitsProcessor, StoppingCriteria

from . import token_rules
from .constrained import ConstrainedLogitsProcessor

# (row, tokens generated, decoded text so far)
ProgressSink = Callable[[int, int, str], None]


@dataclass
class RowSpec:
    max_new_tokens: int
    min_new_tokens: int
    matcher: Any | None
    # Read on every step from the model thread: True once the caller has gone away.
    is_cancelled: Callable[[], bool]
    deadline: float | None = None
    # Decoding the text so far costs the model thread time (and the GIL) on every report;
    # callers that only count tokens say so.
    wants_text: bool = True


class BatchController:
    def __init__(
        self,
        rows: Sequence[RowSpec],
        *,
        stop_token_ids: Sequence[int],
        eos_token_id: int,
        ll_vocab_size: int,
        prompt_offset: int,
        decode: Callable[[list[int]], str],
        progress: ProgressSink | None,
    ) -> None:
        self.rows = list(rows)
        n = len(self.rows)
        self.stop_token_ids = frozenset(stop_token_ids)
        self.eos_token_id = eos_token_id
        self.tokens: list[list[int]] = [[] for _ in range(n)]
        self.finished = [False] * n
        self.finish_reason = [""] * n
        self.finish_time = [0.0] * n
        self.first_token_time: float | None = None
        self._decode = decode
        self._progress = progress
        self._reported = [0] * n
        self.constraint: ConstrainedLogitsProcessor | None = None
        if any(r.matcher is not None for r in self.rows):
            self.constraint = ConstrainedLogitsProcessor(
                [r.matcher for r in self.rows],
                eos_token_id=eos_token_id,
                vocab_size=ll_vocab_size,
                prompt_len=prompt_offset,
                finished=self.finished,
            )
        self._stop_list = torch.tensor(sorted(self.stop_token_ids), dtype=torch.long)
        self.logits_processor = _Logits(self)
        self.stopping_criteria = _Stopping(self)

    def _gone(self, row: int) -> bool:
        spec = self.rows[row]
        return token_rules.gone(spec.is_cancelled(), spec.deadline)

    def process_logits(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.constraint is not None:
            scores = self.constraint(input_ids, scores)  # type: ignore[arg-type]
        below_floor: list[int] = []
        for row, spec in enumerate(self.rows):
            if self.finished[row]:
                continue
            if self._gone(row):
                token_rules.force_eos(scores, row, self.eos_token_id)
                continue
            forced = self.constraint is not None and self.constraint.must_stop(row)
            if not forced and len(self.tokens[row]) < spec.min_new_tokens:
                below_floor.append(row)
        token_rules.ban_stops(scores, below_floor, self._stop_list)
        return scores

    def step(self, input_ids: torch.Tensor) -> torch.Tensor:
        now = time.perf_counter()
        if self.first_token_time is None:
            self.first_token_time = now
        last = input_ids[:, -1].tolist()
        for row, spec in enumerate(self.rows):
            if self.finished[row]:
                continue
            token = int(last[row])
            self.tokens[row].append(token)
            count = len(self.tokens[row])
            if self._gone(row):
                reason = token_rules.CANCELLED
            else:
                reason = token_rules.finish_reason(
                    token, count, spec.max_new_tokens, self.stop_token_ids
                )
            if reason:
                self.finished[row] = True
                self.finish_reason[row] = reason
                self.finish_time[row] = now
            elif token_rules.progress_due(count, self._reported[row]):
                self._report(row)
        return torch.tensor(self.finished, dtype=torch.bool, device=input_ids.device)

    def text(self, row: int) -> str:
        ids = [t for t in self.tokens[row] if t not in self.stop_token_ids]
        return self._decode(ids)

    def _report(self, row: int) -> None:
        self._reported[row] = len(self.tokens[row])
        if self._progress is not None:
            text = self.text(row) if self.rows[row].wants_text else ""
            self._progress(row, len(self.tokens[row]), text)

    def finish(self) -> None:
        """After generate returned: close rows it ended by length, feed grammars their last
        tokens and send every row's final progress."""
        now = time.perf_counter()
        for row in range(len(self.rows)):
            if not self.finished[row]:
                self.finished[row] = True
                self.finish_reason[row] = "length"
                self.finish_time[row] = now
            if self.constraint is not None:
                self.constraint.catch_up(row, self.tokens[row])
            if self._reported[row] != len(self.tokens[row]) or not self.tokens[row]:
                self._report(row)


class _Logits(LogitsProcessor):
    def __init__(self, controller: BatchController) -> None:
        self._c = controller

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self._c.process_logits(input_ids, scores)  # type: ignore[return-value]


class _Stopping(StoppingCriteria):
    def __init__(self, controller: BatchController) -> None:
        self._c = controller

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        return self._c.step(input_ids)  # type: ignore[return-value]
