"""The policy file: validation at load, and a reload that keeps the last good policy."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from inference_svc.domain.decision_rules import Comparison
from inference_svc.domain.policy import (
    BUILTIN_POLICY,
    PolicyError,
    PolicyHolder,
    load_policy,
    parse_policy,
)

GOOD = """
schema: 1
version: v1
default:
  comparison: literal
  confidence_floors: {overall: 60}
vendors:
  acme:
    forced_pick: false
"""


def test_a_good_file_loads() -> None:
    policy = parse_policy(GOOD)
    assert policy.version == "v1"
    assert policy.default.comparison is Comparison.LITERAL
    acme = policy.select("acme").policy
    assert acme.forced_pick is False
    assert acme.comparison is Comparison.LITERAL  # inherited from default
    assert acme.confidence_floors.overall == 60


def test_builtin_policy_is_todays_rules() -> None:
    policy = BUILTIN_POLICY.select("anyone").policy
    rules = policy.rules()
    assert (rules.comparison, rules.forced_pick, rules.fuzzy_counts_for_forced_pick) == (
        Comparison.SEMANTIC,
        True,
        True,
    )
    assert policy.quality.mode.value == "off"
    assert not policy.fraud.catalogue_photo and not policy.fraud.reused_photo
    assert policy.confidence_floors.overall is None and policy.confidence_floors.question is None


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("version: v\ndefault: {comparision: literal}\n", "default.comparision"),
        ("version: v\ndefault: {comparison: fuzzy}\n", "default.comparison"),
        ("version: v\ndefault: {confidence_floors: {overall: 101}}\n", "overall"),
        ("version: v\ndefault: {confidence_floors: {by_label: {a: 150}}}\n", "by_label"),
        ("version: v\ndefault: {quality: {mode: strict}}\n", "quality.mode"),
        (
            "version: v\ndefault: {quality: {thresholds: {min_mean_luma: 9, max_mean_luma: 9}}}",
            "min_mean_luma",
        ),
        ("version: v\ndefault: {fraud: {reused_max_distance: 20}}\n", "reused_max_distance"),
        ("version: v\ndefault: {mandatory: {categories: [sealz]}}\n", "categories"),
        ("version: v\nvendors: {acme: {forced_pick: maybe}}\n", "vendors.acme.forced_pick"),
        ("default: {}\n", "version"),
        ("schema: 2\nversion: v\n", "schema"),
        ("- a list\n", "expected a mapping"),
        ("version: [unclosed\n", "not valid YAML"),
    ],
)
def test_a_bad_file_is_rejected_naming_the_field(text: str, named: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "policy.yaml")
    assert named in str(info.value)
    assert str(info.value).startswith("policy.yaml: ")


def test_load_names_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.yaml")
    good = tmp_path / "policy.yaml"
    good.write_text(GOOD)
    assert load_policy(good).version == "v1"


def _write(path: Path, text: str, tick: int) -> None:
    path.write_text(text)
    # Filesystems with coarse timestamps: make each write visibly newer.
    stamp = 1_700_000_000 + tick
    os.utime(path, (stamp, stamp))


def test_holder_keeps_the_last_good_policy_and_raises_a_flag(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    _write(path, GOOD, 1)
    holder = PolicyHolder.open(path)
    assert holder.current.version == "v1"
    assert not holder.reload_if_changed()  # unchanged

    _write(path, "version: v2\ndefault: {comparison: nope}\n", 2)
    assert not holder.reload_if_changed()
    assert holder.current.version == "v1"
    assert holder.last_reload_failed
    assert holder.reload_failures == 1
    assert "default.comparison" in holder.last_error
    # The same bad file is reported once, not on every check.
    assert not holder.reload_if_changed()
    assert holder.reload_failures == 1

    path.unlink()
    assert not holder.reload_if_changed()
    assert holder.reload_failures == 2 and holder.current.version == "v1"

    _write(path, GOOD.replace("v1", "v3"), 3)
    assert holder.reload_if_changed()
    assert holder.current.version == "v3"
    assert not holder.last_reload_failed and holder.last_error == ""
    assert holder.select("acme").policy.forced_pick is False


def test_holder_refuses_a_bad_file_at_start(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: v\nvendors: [a]\n")
    with pytest.raises(PolicyError, match="vendors"):
        PolicyHolder.open(path)


def test_holder_without_a_file_uses_the_builtin_policy() -> None:
    holder = PolicyHolder.open(None)
    assert holder.current is BUILTIN_POLICY
    assert not holder.reload_if_changed() and not holder.reload()
    assert holder.select("x").name == "default"


async def test_watch_reloads_and_reports_failures(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    _write(path, GOOD, 1)
    holder = PolicyHolder.open(path)
    reported: list[int] = []
    task = asyncio.create_task(holder.watch(interval_s=0.01, on_failures=reported.append))
    try:
        _write(path, "version: v9\ndefault: {forced_pick: sometimes}\n", 2)
        for _ in range(500):
            if reported:
                break
            await asyncio.sleep(0.01)
        assert reported == [1] and holder.current.version == "v1"
        _write(path, GOOD.replace("v1", "v10"), 3)
        for _ in range(500):
            if holder.current.version == "v10":
                break
            await asyncio.sleep(0.01)
        assert holder.current.version == "v10" and not holder.last_reload_failed
        assert reported == [1]
    finally:
        task.cancel()
