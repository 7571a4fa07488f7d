"""Replay of stored inspections (persistence ``InspectionRecord`` messages) under a policy:
an unchanged policy changes nothing, a changed one lists exactly the expected changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.protobuf import struct_pb2
from policy_support import QUESTIONS, SEAL, item, output
from rpi.inspection.v1 import inspection_pb2
from rpi.persistence.v1 import persistence_pb2

from inference_svc.domain.decision import decide
from inference_svc.domain.models import Decision, Question
from inference_svc.domain.outcome import Outcome, ReasonCode
from inference_svc.domain.policy import BUILTIN_POLICY, parse_policy
from tools.replay import (
    EXIT_CHANGED,
    EXIT_USAGE,
    StoredInspection,
    format_report,
    main,
    replay,
    report_and_exit,
    stored_inspection,
)

EXACT = [item(q.label, q.value_to_check) for q in QUESTIONS]
AMBIGUOUS = [item(QUESTIONS[0].label, "Yes, the logo is visible"), *EXACT[1:]]
SEAL_BROKEN = [EXACT[0], item(SEAL.label, "No"), *EXACT[2:]]
# (results, recommendation): the mix of the 200 stored inspections, in turn.
CASES: list[tuple[list[dict[str, object]], str]] = [
    (EXACT, "Accept"),
    (EXACT, "Reject"),  # forced Pick under either comparison
    (AMBIGUOUS, "Reject"),  # forced Pick only under semantic comparison
    (AMBIGUOUS, "Accept"),
    (SEAL_BROKEN, "Accept"),  # Pick unless the seal is mandatory
    (SEAL_BROKEN, "Partial"),
    (EXACT[:3], "Retry"),
    (AMBIGUOUS, "Partial"),
]
LITERAL = "version: lit-1\ndefault: {comparison: literal}\n"
SEAL_MANDATORY = "version: seal-1\ndefault: {mandatory: {categories: [seal_verification]}}\n"


def _question(q: Question) -> inspection_pb2.Question:
    return inspection_pb2.Question(
        type=q.type, label=q.label, value_to_check=q.value_to_check, mandatory=q.mandatory
    )


def record(
    index: int, results: list[Any], recommendation: str, questions: list[Question] = QUESTIONS
) -> persistence_pb2.InspectionRecord:
    model_output = output(results, recommendation)
    decision = decide(questions, model_output).decision
    parsed = struct_pb2.Struct()
    parsed.update(model_output)
    rec = persistence_pb2.InspectionRecord(
        inspection_id=f"00000000-0000-0000-0000-{index:012d}",
        shipping_id=f"S{index % 17}",
        status=persistence_pb2.INSPECTION_STATUS_COMPLETED,
        request=persistence_pb2.RequestReceived(
            shipping_id=f"S{index % 17}", questions=[_question(q) for q in questions]
        ),
        attempts=[
            persistence_pb2.AttemptRecorded(attempt_number=1, raw_output="{not json", valid=False),
            persistence_pb2.AttemptRecorded(attempt_number=2, parsed_output=parsed, valid=True),
        ],
    )
    rec.result.decision = (
        inspection_pb2.DECISION_PICK
        if decision is Decision.PICK
        else inspection_pb2.DECISION_NOT_PICK
    )
    return rec


def stored_200() -> list[persistence_pb2.InspectionRecord]:
    return [record(i, *CASES[i % len(CASES)]) for i in range(200)]


def test_an_unchanged_policy_changes_nothing() -> None:
    records = stored_200()
    report = replay(records, BUILTIN_POLICY)
    assert report.replayed == 200
    assert report.changes == []
    assert sum(report.transitions.values()) == 200
    assert all(old is new for old, new in report.transitions)
    assert report_and_exit(records, BUILTIN_POLICY, fail_on_change=True) == 0


def test_literal_comparison_unpicks_the_ambiguous_forced_picks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    records = stored_200()
    expected = [r.inspection_id for i, r in enumerate(records) if i % len(CASES) in (2, 7)]
    report = replay(records, parse_policy(LITERAL))
    assert [c.inspection_id for c in report.changes] == expected
    assert report.transitions[(Outcome.PICK, Outcome.NOT_PICK)] == len(expected) == 50
    assert {c.reasons[0].code for c in report.changes} == {ReasonCode.MODEL_RECOMMENDATION}
    assert report.policy_version == "lit-1"

    assert report_and_exit(records, parse_policy(LITERAL), fail_on_change=True) == EXIT_CHANGED
    printed = capsys.readouterr().out
    assert "200 replayed, 50 would change" in printed
    assert "PICK           NOT_PICK            50  *" in printed
    assert expected[0] in printed
    assert report_and_exit(records, parse_policy(LITERAL), fail_on_change=False) == 0


def test_a_mandatory_seal_names_the_failed_question() -> None:
    report = replay(stored_200(), parse_policy(SEAL_MANDATORY))
    assert report.changed == 25
    assert report.transitions[(Outcome.PICK, Outcome.NOT_PICK)] == 25
    for change in report.changes:
        (reason,) = change.reasons
        assert reason.code is ReasonCode.MANDATORY_QUESTION_FAILED
        assert (reason.question_label, reason.question_index) == (SEAL.label, 1)
    text = format_report(report)
    assert f"MANDATORY_QUESTION_FAILED (question[1] {SEAL.label!r})" in text


def test_records_that_cannot_be_replayed_are_counted_apart() -> None:
    failed = persistence_pb2.InspectionRecord(
        inspection_id="f", status=persistence_pb2.INSPECTION_STATUS_FAILED
    )
    pending = persistence_pb2.InspectionRecord(
        inspection_id="p", status=persistence_pb2.INSPECTION_STATUS_PENDING
    )
    no_output = record(1, EXACT, "Accept")
    del no_output.attempts[1]
    report = replay([failed, pending, no_output, record(2, EXACT, "Accept")], BUILTIN_POLICY)
    assert report.replayed == 1
    assert report.skipped == {"not completed": 2, "no valid model output": 1}
    assert "skipped:" in format_report(report)


def test_the_stored_record_is_read_as_the_pipeline_decided_it() -> None:
    stored = stored_inspection(record(7, AMBIGUOUS, "Reject"))
    assert isinstance(stored, StoredInspection)
    assert stored.old_outcome is Outcome.PICK
    assert stored.questions == tuple(QUESTIONS)
    assert stored.output is not None
    # Struct holds numbers as doubles; the rules read them the same.
    assert decide(QUESTIONS, stored.output).decision is Decision.PICK


def test_main_rejects_a_bad_policy_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text("version: v\ndefault: {comparison: nope}\n")
    assert main(["--policy", str(bad), "--shipping-id", "S1"]) == EXIT_USAGE
    assert "default.comparison" in capsys.readouterr().err
    good = tmp_path / "good.yaml"
    good.write_text(LITERAL)
    assert main(["--policy", str(good)]) == EXIT_USAGE


def _with_images(rec: persistence_pb2.InspectionRecord, sharpness: float, same_photo: bool) -> None:
    reference, pickup = 0x1234_5678_9ABC_DEF0, 0x1234_5678_9ABC_DEF0 if same_photo else 7
    rec.request.images.add(
        role=persistence_pb2.IMAGE_ROLE_REFERENCE, index=0
    ).perceptual_hash = reference
    rec.request.images.add(role=persistence_pb2.IMAGE_ROLE_PICKUP, index=0).perceptual_hash = pickup
    check = rec.result.image_checks.add(role=inspection_pb2.IMAGE_ROLE_PICKUP, index=0)
    check.quality.CopyFrom(
        inspection_pb2.ImageQuality(
            width=1200, height=900, sharpness=sharpness, mean_luma=120, dark_fraction=0.01
        )
    )


def test_stored_measures_and_hashes_are_judged_under_the_new_policy() -> None:
    blurry = record(1, EXACT, "Accept")
    _with_images(blurry, sharpness=9.0, same_photo=False)
    catalogue = record(2, EXACT, "Accept")
    _with_images(catalogue, sharpness=80.0, same_photo=True)
    sharp = record(3, EXACT, "Accept")
    _with_images(sharp, sharpness=80.0, same_photo=False)
    records = [blurry, catalogue, sharp]

    assert replay(records, BUILTIN_POLICY).changes == []
    enforce = parse_policy("version: e\ndefault: {quality: {mode: enforce}}\n")
    (change,) = replay(records, enforce).changes
    assert (change.inspection_id, change.new) == (blurry.inspection_id, Outcome.RETAKE_IMAGES)
    (reason,) = change.reasons
    assert reason.code is ReasonCode.IMAGE_BLURRY and reason.image is not None
    # A lower limit takes the same stored measure as sharp enough.
    lenient = parse_policy(
        "version: e2\ndefault: {quality: {mode: enforce, thresholds: {min_sharpness: 5}}}\n"
    )
    assert replay(records, lenient).changes == []

    fraud = parse_policy("version: f\ndefault: {fraud: {catalogue_photo: true}}\n")
    (change,) = replay(records, fraud).changes
    assert (change.inspection_id, change.new) == (catalogue.inspection_id, Outcome.NEEDS_REVIEW)
    assert change.reasons[0].code is ReasonCode.CATALOGUE_PHOTO


def test_the_stored_vendor_selects_its_policy() -> None:
    acme = record(1, SEAL_BROKEN, "Accept")
    acme.request.vendor_id = "acme"
    other = record(2, SEAL_BROKEN, "Accept")
    policy = parse_policy(
        "version: v\nvendors: {acme: {mandatory: {categories: [seal_verification]}}}\n"
    )
    (change,) = replay([acme, other], policy).changes
    assert (change.inspection_id, change.policy_name) == (acme.inspection_id, "acme")
