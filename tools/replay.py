"""``rpi-replay``: what a decision policy would have decided on stored inspections.

Stored inspections (the persistence service's ``InspectionRecord``: the request's questions, the
raw model output of each attempt, the result) are decided again with the current rules and a
chosen policy file, with no model run, and the decisions that would change are listed: counts
by old -> new outcome, then each changed inspection with the reasons of its new outcome.

    rpi-replay --policy policy.yaml --persistence-target localhost:50052 --shipping-id S1
    rpi-replay --policy policy.yaml --persistence-target localhost:50052 \\
        --since 2026-11-01T00:00:00Z --until 2026-12-01T00:00:00Z --fail-on-change

With ``--rerun-model --inference-target HOST:PORT`` the model itself runs again on each
inspection's archived images (tools/replay_rerun.py; docs/policy.md, "Re-running the model").

Exit status: 0 (1 with ``--fail-on-change`` when a decision changes), 2 for a bad policy file or
arguments, 3 when the persistence service cannot be read, 4 when a re-run call failed.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from rpi.inspection.v1 import inspection_pb2
from rpi.persistence.v1 import persistence_pb2

from inference_svc.domain.errors import InspectionError
from inference_svc.domain.models import (
    ImageRef,
    ImageRole,
    QualityMeasures,
    QualityReport,
    Question,
    ReasonCode,
)
from inference_svc.domain.outcome import (
    Outcome,
    OutcomeReason,
    PolicyOutcome,
    ReuseLookup,
    ReuseMatch,
    Signals,
    decide_with_policy,
    quality_gate,
)
from inference_svc.domain.policy import PolicyError, PolicyFile, QualityMode, load_policy
from inference_svc.imaging.quality import problems as quality_problems
from tools.replay_parser import EXIT_CHANGED, EXIT_UNAVAILABLE, EXIT_USAGE, build_parser

DECISION_OUTCOMES: dict[int, Outcome] = {
    inspection_pb2.DECISION_PICK: Outcome.PICK,
    inspection_pb2.DECISION_NOT_PICK: Outcome.NOT_PICK,
    inspection_pb2.DECISION_RETAKE_IMAGES: Outcome.RETAKE_IMAGES,
    inspection_pb2.DECISION_NEEDS_REVIEW: Outcome.NEEDS_REVIEW,
}
IMAGE_ROLES = {
    inspection_pb2.IMAGE_ROLE_REFERENCE: ImageRole.REFERENCE,
    inspection_pb2.IMAGE_ROLE_PICKUP: ImageRole.PICKUP,
    persistence_pb2.IMAGE_ROLE_REFERENCE: ImageRole.REFERENCE,
    persistence_pb2.IMAGE_ROLE_PICKUP: ImageRole.PICKUP,
}


@dataclass(frozen=True)
class StoredInspection:
    """What replay needs of a stored inspection."""

    inspection_id: str
    shipping_id: str
    vendor_id: str
    questions: tuple[Question, ...]
    output: dict[str, Any] | None  # the last valid attempt's parsed output
    old_outcome: Outcome
    # Hashes, and the reused-photo hits of the original decision (the lookup is not run again).
    signals: Signals = field(default_factory=Signals)
    # The quality measures recorded with the result, judged again under the replayed policy.
    measures: tuple[tuple[ImageRef, QualityMeasures], ...] = ()


class NotReplayableError(ValueError):
    """A stored inspection that cannot be decided again (its reason is the message)."""


def stored_inspection(record: persistence_pb2.InspectionRecord) -> StoredInspection:
    """The replayable part of a record; NotReplayableError for one without a result, or with
    neither a valid model output nor image measures to decide on."""
    if record.status != persistence_pb2.INSPECTION_STATUS_COMPLETED or not record.HasField(
        "result"
    ):
        raise NotReplayableError("not completed")
    old = DECISION_OUTCOMES.get(record.result.decision)
    if old is None:
        raise NotReplayableError("unknown stored decision")
    output: dict[str, Any] | None = None
    for attempt in reversed(record.attempts):
        if attempt.valid and attempt.HasField("parsed_output"):
            output = json_format.MessageToDict(attempt.parsed_output)
            break
    questions = tuple(
        Question(type=q.type, label=q.label, value_to_check=q.value_to_check, mandatory=q.mandatory)
        for q in record.request.questions
    )
    return StoredInspection(
        inspection_id=record.inspection_id,
        shipping_id=record.shipping_id,
        vendor_id=record.request.vendor_id,
        questions=questions,
        output=output,
        old_outcome=old,
        signals=_stored_signals(record),
        measures=_stored_measures(record.result),
    )


def _stored_signals(record: persistence_pb2.InspectionRecord) -> Signals:
    def hashes(role: ImageRole) -> tuple[int | None, ...]:
        images = sorted(
            (i for i in record.request.images if IMAGE_ROLES.get(i.role) is role),
            key=lambda i: i.index,
        )
        return tuple(i.perceptual_hash if i.HasField("perceptual_hash") else None for i in images)

    reused = tuple(
        ReuseMatch(
            pickup_index=r.image_index,
            inspection_id=r.related_inspection_id,
            shipping_id="",
            distance=0,
        )
        for r in record.result.reasons
        if r.code == ReasonCode.REUSED_PHOTO.value
    )
    return Signals(
        reference_hashes=hashes(ImageRole.REFERENCE),
        pickup_hashes=hashes(ImageRole.PICKUP),
        reuse=ReuseLookup(reused) if reused else None,
    )


def _stored_measures(
    result: inspection_pb2.Inspection,
) -> tuple[tuple[ImageRef, QualityMeasures], ...]:
    return tuple(
        (
            ImageRef(IMAGE_ROLES[c.role], c.index),
            QualityMeasures(
                width=c.quality.width,
                height=c.quality.height,
                sharpness=c.quality.sharpness,
                mean_luma=c.quality.mean_luma,
                dark_fraction=c.quality.dark_fraction,
                bright_fraction=c.quality.bright_fraction,
            ),
        )
        for c in result.image_checks
        if c.HasField("quality") and c.role in IMAGE_ROLES
    )


@dataclass(frozen=True)
class Change:
    inspection_id: str
    shipping_id: str
    old: Outcome
    new: Outcome
    policy_name: str
    reasons: tuple[OutcomeReason, ...]


@dataclass
class ReplayReport:
    policy_version: str
    replayed: int = 0
    changes: list[Change] = field(default_factory=list)
    transitions: Counter[tuple[Outcome, Outcome]] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def changed(self) -> int:
        return len(self.changes)


def decide_again(stored: StoredInspection, policy: PolicyFile) -> PolicyOutcome:
    """The outcome ``policy`` gives a stored inspection; NotReplayableError when it needs a model
    output the record does not have."""
    selected = policy.select(stored.vendor_id)
    gate = selected.policy.quality
    reports = (
        ()
        if gate.mode is QualityMode.OFF
        else tuple(
            QualityReport(ref, m, quality_problems(m, gate.thresholds))
            for ref, m in stored.measures
        )
    )
    signals = replace(stored.signals, quality=reports)
    gated = quality_gate(selected, reports)
    if gated is not None:
        return gated
    if stored.output is None:
        raise NotReplayableError("no valid model output")
    try:
        return decide_with_policy(selected, stored.questions, stored.output, signals)
    except InspectionError as exc:
        raise NotReplayableError(f"model output cannot be decided: {exc.reason.value}") from None


def replay(
    records: Iterable[persistence_pb2.InspectionRecord | StoredInspection], policy: PolicyFile
) -> ReplayReport:
    """Decide every record again under ``policy`` and report what changes."""
    report = ReplayReport(policy_version=policy.version)
    for record in records:
        try:
            stored = record if isinstance(record, StoredInspection) else stored_inspection(record)
            decided = decide_again(stored, policy)
        except NotReplayableError as exc:
            report.skipped[str(exc)] += 1
            continue
        report.replayed += 1
        report.transitions[(stored.old_outcome, decided.outcome)] += 1
        if decided.outcome is not stored.old_outcome:
            report.changes.append(
                Change(
                    inspection_id=stored.inspection_id,
                    shipping_id=stored.shipping_id,
                    old=stored.old_outcome,
                    new=decided.outcome,
                    policy_name=decided.policy_name,
                    reasons=tuple(decided.decisive),
                )
            )
    return report


def _reason_text(reason: OutcomeReason) -> str:
    where = []
    if reason.question_label:
        where.append(f"question[{reason.question_index}] {reason.question_label!r}")
    if reason.image is not None:
        where.append(f"{reason.image.role.value}_images[{reason.image.index}]")
    place = f" ({', '.join(where)})" if where else ""
    return f"{reason.code.value}{place}: {reason.detail}" if reason.detail else reason.code.value


def format_report(report: ReplayReport, headline: str | None = None) -> str:
    """The counts (``headline``, or the policy replay's), the old -> new table, each change
    with its decisive reasons, and the skipped inspections by reason."""
    lines = [
        headline
        or f"policy {report.policy_version}: {report.replayed} replayed, {report.changed} would "
        f"change, {sum(report.skipped.values())} skipped",
    ]
    if report.transitions:
        lines.append("")
        lines.append(f"{'old':<14} {'new':<14} {'count':>7}")
        for (old, new), count in sorted(
            report.transitions.items(), key=lambda t: (t[0][0].value, t[0][1].value)
        ):
            marker = "" if old is new else "  *"
            lines.append(f"{old.value:<14} {new.value:<14} {count:>7}{marker}")
    if report.changes:
        lines.append("")
        lines.append("changed:")
        for change in report.changes:
            lines.append(
                f"  {change.inspection_id} shipment {change.shipping_id} "
                f"[{change.policy_name}]: {change.old.value} -> {change.new.value}"
            )
            lines.extend(f"      {_reason_text(r)}" for r in change.reasons)
    if report.skipped:
        lines.append("")
        lines.append("skipped:")
        lines.extend(f"  {count:>7}  {why}" for why, count in sorted(report.skipped.items()))
    return "\n".join(lines)


# --------------------------------------------------------------------------- reading records


@dataclass(frozen=True)
class Window:
    """A period of inspections, [start, end)."""

    start: datetime
    end: datetime


async def read_records(
    target: str,
    shipping_ids: Sequence[str] = (),
    window: Window | None = None,
    page_size: int = 100,
) -> AsyncIterator[persistence_pb2.InspectionRecord]:
    """Every inspection of the given shipments and of the period, each once, with its attempts
    (a list page carries none, so each is read whole)."""
    import grpc  # noqa: PLC0415 - only the reading part needs it
    from rpi.persistence.v1 import persistence_pb2_grpc  # noqa: PLC0415

    seen: set[str] = set()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = persistence_pb2_grpc.PersistenceServiceStub(channel)

        async def whole(inspection_id: str) -> persistence_pb2.InspectionRecord | None:
            if inspection_id in seen:
                return None
            seen.add(inspection_id)
            reply = await stub.GetInspection(
                persistence_pb2.GetInspectionRequest(inspection_id=inspection_id), timeout=30
            )
            return reply.inspection

        for shipping_id in shipping_ids:
            token = ""
            while True:
                page = await stub.ListInspections(
                    persistence_pb2.ListInspectionsRequest(
                        shipping_id=shipping_id, page_size=page_size, page_token=token
                    ),
                    timeout=30,
                )
                for listed in page.inspections:
                    if (found := await whole(listed.inspection_id)) is not None:
                        yield found
                token = page.next_page_token
                if not token:
                    break
        if window is not None:
            request = persistence_pb2.ListInspectionsByTimeRequest(page_size=page_size)
            request.start_time.FromDatetime(window.start)
            request.end_time.FromDatetime(window.end)
            while True:
                by_time = await stub.ListInspectionsByTime(request, timeout=30)
                for listed in by_time.inspections:
                    if (found := await whole(listed.inspection_id)) is not None:
                        yield found
                if not by_time.next_page_token:
                    break
                request.page_token = by_time.next_page_token


async def _collect(
    target: str, shipping_ids: Sequence[str], window: Window | None
) -> list[persistence_pb2.InspectionRecord]:
    return [record async for record in read_records(target, shipping_ids, window)]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(__doc__).parse_args(argv)
    if not args.shipping_ids and args.since is None:
        print("rpi-replay: give --shipping-id (one or more) or --since", file=sys.stderr)
        return EXIT_USAGE
    window = None
    if args.since is not None:
        window = Window(args.since, args.until or datetime.now(UTC))
        if window.end <= window.start:
            print("rpi-replay: --until must be after --since", file=sys.stderr)
            return EXIT_USAGE
    if args.rerun_model:
        from tools.replay_rerun import rerun_main  # noqa: PLC0415 - it imports this module

        return rerun_main(args, window)
    if args.policy is None:
        print("rpi-replay: give --policy (or --rerun-model)", file=sys.stderr)
        return EXIT_USAGE
    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        print(f"rpi-replay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        records = asyncio.run(_collect(args.persistence_target, args.shipping_ids, window))
    except Exception as exc:
        print(f"rpi-replay: cannot read inspections: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return report_and_exit(records, policy, fail_on_change=args.fail_on_change)


def report_and_exit(
    records: Iterable[persistence_pb2.InspectionRecord | StoredInspection],
    policy: PolicyFile,
    *,
    fail_on_change: bool,
) -> int:
    """Replay, print the report, and the exit status ``main`` returns."""
    report = replay(records, policy)
    print(format_report(report))
    return EXIT_CHANGED if fail_on_change and report.changes else 0


if __name__ == "__main__":
    sys.exit(main())
