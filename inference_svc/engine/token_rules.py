"""The per-token rules every runner applies to each row: the one place that decides.

After each chosen token a row ends because it was abandoned (cancelled, or past its deadline),
chose a stop token, or reached its budget; progress is reported every
:data:`PROGRESS_EVERY_TOKENS` tokens. With a JSON schema, the row's grammar (llguidance, see
:mod:`.constrained`) masks what it may choose and ends it once complete. A forced-length row
(benchmarks) may not choose a stop token before its budget unless its grammar ends it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch

logger = logging.getLogger(__name__)

# Progress callbacks (and the text decode behind them) every this many tokens per row.
PROGRESS_EVERY_TOKENS = 8

CANCELLED = "cancelled"


def expired(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() > deadline


def gone(cancelled: bool, deadline: float | None) -> bool:
    """Whether nobody waits for the row any more (its caller left or its time ran out)."""
    return cancelled or expired(deadline)


def finish_reason(token: int, count: int, max_new_tokens: int, stop_ids: frozenset[int]) -> str:
    """Why a row ends after choosing ``token`` as its ``count``-th token ("" = it goes on)."""
    if token in stop_ids:
        return "stop"
    if count >= max_new_tokens:
        return "length"
    return ""


def progress_due(count: int, reported: int) -> bool:
    return count - reported >= PROGRESS_EVERY_TOKENS


def min_new_tokens(max_new_tokens: int, forced_length: bool) -> int:
    """The floor below which a row may not stop (only forced-length rows have one)."""
    return max_new_tokens if forced_length else 0


def ban_stops(scores: torch.Tensor, rows: Sequence[int], stop_list: torch.Tensor) -> None:
    """Rows below their floor cannot choose a stop token (one indexing operation)."""
    if rows:
        index = torch.tensor(list(rows), device=scores.device)
        scores[index[:, None], stop_list.to(scores.device)] = float("-inf")


def force_eos(scores: torch.Tensor, row: int, eos_token_id: int) -> None:
    scores[row].fill_(float("-inf"))
    scores[row, eos_token_id] = 0.0


# --- grammar -----------------------------------------------------------------------------------
def grammar_done(matcher: Any, error: str | None) -> bool:
    """Whether a row's grammar ends it now: complete, stopped or broken."""
    return bool(error) or bool(matcher.is_stopped() or matcher.is_accepting())


def grammar_complete(matcher: Any, error: str | None) -> bool:
    """Whether the output so far is a complete match of the grammar."""
    return not error and bool(matcher.is_accepting())


def advance_grammar(matcher: Any, token: int, row: object) -> str | None:
    """Feed the matcher a chosen token; the error when it rejects it."""
    if not matcher.consume_token(int(token)) or matcher.is_error():
        error = str(matcher.get_error() or f"token {token} rejected")
        logger.warning("constrained row %s: %s", row, error)
        return error
    return None
