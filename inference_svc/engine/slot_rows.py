"""Token choice for the slot runner's rows: each row's next token under its own rules.

A step's logits come back for every live row; each row's grammar (masks, computed beside the
step when :class:`GrammarPlan` says so), floor (forced-length rows), budget, stop tokens,
cancellation and deadline decide its token (:mod:`.token_rules` holds the rules), and a
finished row is answered at once.

With constrained decoding, a step's token masks depend only on the tokens chosen before the
step, so (``GRAMMAR_OVERLAP``, on by default) they are computed on a helper thread while the
step runs: llguidance releases the interpreter lock, the masks take the other core, and the
step thread finds them ready when the logits are.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from . import constrained, token_rules
from .api import FinishReason, GenerationResult, GenerationTimings
from .runner import Host, expired, set_outcome
from .scheduler import Job

logger = logging.getLogger(__name__)

# Masks of fewer rows are computed on the step thread (see SlotRules.plan_grammar).
_OVERLAP_MIN_ROWS = 2


@dataclass(eq=False)
class GrammarPlan:
    """One step's token rules, decided from the rows' grammar states before the step:
    rows whose grammar is done (``forced`` to end), rows that need a mask (``masked``), and
    the masks, computed (a tensor) or being computed beside the step (a future)."""

    forced: dict[int, int]
    masked: list[int]
    allowed: Future[torch.Tensor] | torch.Tensor | None = None


@dataclass(eq=False)
class Row:
    job: Job
    prompt_tokens: int
    admitted_at: float
    prefill_seconds: float = 0.0
    # Next cache position to write (the prompt length after prefill, +1 per step).
    position: int = 0
    tokens: list[int] = field(default_factory=list)
    reported: int = 0
    finish_reason: str = ""
    first_token_at: float = 0.0
    finished_at: float = 0.0
    # Sum of live rows over the steps this row took part in (mean batch size it saw).
    batch_rows: int = 0
    steps: int = 0
    grammar_error: str = ""

    @property
    def matcher(self) -> Any | None:
        return self.job.prepared.matcher

    @property
    def last_token(self) -> int:
        return self.tokens[-1]


class SlotRules:
    """Chooses the rows' tokens after each step and answers the rows that finish."""

    def __init__(self, host: Host, grammar_pool: ThreadPoolExecutor | None) -> None:
        loaded = host.model
        self._host = host
        self.grammar_pool = grammar_pool
        self._logits_width = int(loaded.model.lm_head.weight.shape[0])
        self._stop_ids = frozenset(loaded.stop_token_ids)
        self._stop_list = torch.tensor(sorted(self._stop_ids), dtype=torch.long)

    def gone(self, row: Row) -> bool:
        return token_rules.gone(row.job.cancelled, row.job.request.deadline)

    def plan_grammar(self, rows: list[Row], pool: ThreadPoolExecutor | None) -> GrammarPlan:
        """Which rows the grammar ends and which it masks. With ``pool`` the masks of two
        rows or more are computed there while the caller runs the step: llguidance's
        executor releases the interpreter lock, so they take the other core instead of
        adding to the step's time. One row's mask is computed after the step, on the step
        thread: llguidance computes a lone mask holding the lock, so beside the step it would
        only contend with the step for the lock (``bench.engine_loop --concurrency 1``)."""
        eos = self._host.model.eos_token_id
        plan = GrammarPlan({}, [])
        for i, row in enumerate(rows):
            matcher = row.matcher
            if matcher is None or self.gone(row):
                continue
            if token_rules.grammar_done(matcher, row.grammar_error):
                plan.forced[i] = eos
            else:
                plan.masked.append(i)
        if len(plan.masked) >= _OVERLAP_MIN_ROWS and pool is not None:
            plan.allowed = pool.submit(self._allowed, [rows[i].matcher for i in plan.masked])
            self._host.counters["overlapped_masks"] += 1
        return plan

    def _allowed(self, matchers: list[Any]) -> torch.Tensor:
        return constrained.allowed_tokens(matchers, self._host.model.vocab_size, self._logits_width)

    def choose(
        self, rows: list[Row], logits: torch.Tensor, plan: GrammarPlan | None = None
    ) -> None:
        """Pick each row's next token under its own grammar, floor and budget (``plan``:
        the grammar's part, decided before the step; decided here when not given)."""
        if plan is None:
            plan = self.plan_grammar(rows, None)
        scores = logits.float()
        forced = plan.forced
        for row in rows:
            if self.gone(row):
                row.finish_reason = "cancelled"
        if plan.masked:
            self._apply_grammars(rows, plan, scores)
        assert self._stop_list is not None
        below_floor = [
            i
            for i, row in enumerate(rows)
            if len(row.tokens) < row.job.prepared.min_new_tokens
            and not row.finish_reason
            and i not in forced
        ]
        token_rules.ban_stops(scores, below_floor, self._stop_list)
        choices = scores.argmax(dim=-1).tolist()
        now = time.perf_counter()
        for i, row in enumerate(rows):
            if row.finish_reason:
                continue
            token = forced.get(i, int(choices[i]))
            if not row.tokens:
                row.first_token_at = now
            row.tokens.append(token)
            if token not in self._stop_ids:
                self._advance_grammar(row, token)
            count = len(row.tokens)
            max_new = row.job.prepared.max_new_tokens
            row.finish_reason = token_rules.finish_reason(token, count, max_new, self._stop_ids)
            if not row.finish_reason and token_rules.progress_due(count, row.reported):
                self._report(row)

    def _advance_grammar(self, row: Row, token: int) -> None:
        matcher = row.matcher
        if matcher is None or row.grammar_error:
            return
        error = token_rules.advance_grammar(matcher, token, row.job.request.request_id)
        if error is not None:
            row.grammar_error = error

    def _apply_grammars(self, rows: list[Row], plan: GrammarPlan, scores: torch.Tensor) -> None:
        masked = plan.masked
        matchers: list[Any] = [rows[i].matcher for i in masked]
        allowed = plan.allowed
        if allowed is None:
            allowed = self._allowed(matchers)
        elif isinstance(allowed, Future):
            allowed = allowed.result()
        for i, matcher in zip(masked, matchers, strict=True):
            if matcher.is_error():
                rows[i].grammar_error = matcher.get_error()
                plan.forced[i] = self._host.model.eos_token_id
        index = torch.tensor(masked, device=scores.device)
        scores[index] = scores[index].masked_fill(~allowed.to(scores.device), float("-inf"))

    def finish(self, row: Row, reason: str) -> None:
        row.finish_reason = reason
        row.finished_at = time.perf_counter()
        if reason == "cancelled":
            self._host.counters["cancelled_rows"] += 1
        self._host.counters["rows"] += 1
        self._host.counters["tokens_generated"] += len(row.tokens)
        if row.reported != len(row.tokens) or not row.tokens:
            self._report(row)
        self._host.post(set_outcome, row.job, self._result(row))

    def _report(self, row: Row) -> None:
        row.reported = len(row.tokens)
        wants_text = bool(getattr(row.job.listener, "wants_text", True))
        text = self._text(row) if wants_text else ""
        self._host.post_progress(row.job, len(row.tokens), text)

    def _text(self, row: Row) -> str:
        return self._host.model.answer_text(row.tokens)

    def _result(self, row: Row) -> GenerationResult | BaseException:
        if row.finish_reason == "cancelled":
            return expired()
        job = row.job
        queue_seconds = max(row.admitted_at - job.enqueued_at, 0.0)
        first = row.first_token_at or row.finished_at
        decode = max(row.finished_at - first, 0.0)
        batch = round(row.batch_rows / row.steps) if row.steps else 1
        matcher = row.matcher
        return GenerationResult(
            text=self._text(row),
            prompt_tokens=row.prompt_tokens,
            completion_tokens=len(row.tokens),
            timings=GenerationTimings(queue_seconds, row.prefill_seconds, decode),
            constrained=matcher is not None,
            batch_size=max(batch, 1),
            finish_reason=FinishReason(row.finish_reason),
            schema_complete=None
            if matcher is None
            else not row.grammar_error and bool(matcher.is_accepting()),
            constraint_error=row.grammar_error or None if matcher is not None else None,
        )
