"""The open choices of the decision rules (``inference_svc.domain.decision``), which a decision
policy sets per vendor; the defaults are the rules as documented there."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Comparison(enum.Enum):
    """How an answer is compared with its value to check for the forced-Pick rule."""

    # Booleans by truth value ("Yes, the logo is visible" equals "Y"), numbers by value ("2.0"
    # equals "2"), text ignoring case and repeated whitespace: this service's rule since it
    # replaced the old one, hence the default.
    SEMANTIC = "semantic"
    # The model's Result text, surrounding whitespace aside, equals the value to check exactly,
    # as the replaced service compared strings.
    LITERAL = "literal"


class MatchKind(enum.Enum):
    EXACT = "exact"
    FUZZY = "fuzzy"
    MISSED = "missed"


@dataclass(frozen=True)
class DecisionRules:
    """The open choices of the rules above; the defaults are the rules as documented."""

    comparison: Comparison = Comparison.SEMANTIC
    forced_pick: bool = True
    # Whether an answer whose label matched only fuzzily counts toward the forced Pick.
    fuzzy_counts_for_forced_pick: bool = True


DEFAULT_RULES = DecisionRules()


@dataclass(frozen=True)
class QuestionCheck:
    """How one question fared: how its answer was found and whether the model answered it with
    its value to check (under the rules' comparison)."""

    match: MatchKind
    passed: bool
