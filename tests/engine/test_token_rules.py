"""The per-token rules (token_rules.py), once for every runner."""

from __future__ import annotations

import time

import torch

from inference_svc.engine import token_rules as rules

STOPS = frozenset({2, 7})


def test_a_row_ends_on_a_stop_token_before_its_budget_and_at_its_budget_otherwise() -> None:
    assert rules.finish_reason(7, 3, 10, STOPS) == "stop"
    assert rules.finish_reason(7, 10, 10, STOPS) == "stop"
    assert rules.finish_reason(5, 10, 10, STOPS) == "length"
    assert rules.finish_reason(5, 9, 10, STOPS) == ""


def test_a_row_is_gone_when_cancelled_or_past_its_deadline() -> None:
    now = time.monotonic()
    assert rules.gone(True, None)
    assert rules.gone(False, now - 1)
    assert not rules.gone(False, now + 60)
    assert not rules.gone(False, None)


def test_progress_every_few_tokens() -> None:
    every = rules.PROGRESS_EVERY_TOKENS
    assert not rules.progress_due(every - 1, 0)
    assert rules.progress_due(every, 0)
    assert not rules.progress_due(every + 3, 4)


def test_only_forced_length_rows_have_a_floor_and_it_bans_stop_tokens() -> None:
    assert rules.min_new_tokens(40, forced_length=False) == 0
    assert rules.min_new_tokens(40, forced_length=True) == 40
    scores = torch.zeros((3, 10))
    rules.ban_stops(scores, [0, 2], torch.tensor(sorted(STOPS)))
    assert torch.isinf(scores[0, [2, 7]]).all() and torch.isinf(scores[2, [2, 7]]).all()
    assert not torch.isinf(scores[1]).any()
    assert int(torch.isinf(scores).sum()) == 4
    rules.ban_stops(scores, [], torch.tensor(sorted(STOPS)))  # no rows: nothing changes
    assert int(torch.isinf(scores).sum()) == 4


def test_force_eos_leaves_only_eos() -> None:
    scores = torch.randn((2, 6))
    rules.force_eos(scores, 1, 4)
    assert int(scores[1].argmax()) == 4 and torch.isinf(scores[1]).sum() == 5
    assert not torch.isinf(scores[0]).any()


class _Matcher:
    """llguidance's matcher surface the rules read (a scripted grammar state)."""

    def __init__(self, accepting: bool = False, stopped: bool = False, rejects: int = -1) -> None:
        self.accepting, self.stopped, self.rejects = accepting, stopped, rejects
        self.consumed: list[int] = []

    def is_accepting(self) -> bool:
        return self.accepting

    def is_stopped(self) -> bool:
        return self.stopped

    def is_error(self) -> bool:
        return False

    def get_error(self) -> str:
        return ""

    def consume_token(self, token: int) -> bool:
        self.consumed.append(token)
        return token != self.rejects


def test_grammar_rules() -> None:
    open_grammar = _Matcher()
    assert not rules.grammar_done(open_grammar, None)
    assert rules.grammar_done(open_grammar, "broken")
    assert rules.grammar_done(_Matcher(stopped=True), None)
    assert rules.grammar_done(_Matcher(accepting=True), None)
    assert rules.grammar_complete(_Matcher(accepting=True), None)
    assert not rules.grammar_complete(_Matcher(accepting=True), "broken")
    matcher = _Matcher(rejects=9)
    assert rules.advance_grammar(matcher, 3, "r") is None
    assert rules.advance_grammar(matcher, 9, "r") == "token 9 rejected"
    assert matcher.consumed == [3, 9]
